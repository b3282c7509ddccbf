"""The contact sheet shows the query and one tile per hit, unreadable hits as placeholders."""

from PIL import Image

from revsearch.contact_sheet import PAD, TILE, render
from tests.helpers import encode, synthetic_image


def test_the_sheet_has_a_tile_per_hit_and_marks_missing_images(tmp_path):
    hit_path = tmp_path / "hit.png"
    synthetic_image(5).save(hit_path)
    hits = [(1, 0.99, str(hit_path))] + [(r, 0.5, f"/nonexistent/{r}.jpg") for r in range(2, 8)]
    sheet = render(encode(synthetic_image(4), "JPEG"), hits, "test", columns=5)
    assert isinstance(sheet, Image.Image)
    assert sheet.width > 6 * TILE and sheet.height > 2 * TILE  # query + 5 columns, 2 rows
    # The placeholder tile of rank 2 is flat grey; the rank-1 tile is textured.
    px = sheet.load()

    def colours(column):  # distinct colours along a row in the upper part of a grid tile
        x0 = PAD + (TILE + PAD) * (1 + column) + PAD
        return {px[x, 60] for x in range(x0 + 5, x0 + TILE - 5)}

    assert len(colours(1)) == 1 and len(colours(0)) > 20


def test_a_verified_copy_is_framed_in_green_and_an_unverified_hit_is_not(tmp_path):
    from revsearch.contact_sheet import VERIFIED_COPY_KEYPOINTS

    path = tmp_path / "hit.png"
    synthetic_image(6).save(path)
    hits = [(1, 0.91, str(path), VERIFIED_COPY_KEYPOINTS + 30), (2, 0.90, str(path), VERIFIED_COPY_KEYPOINTS - 1)]
    px = render(encode(synthetic_image(4), "JPEG"), hits, "copies", columns=5).load()
    y = 40 + TILE // 2

    def left_edge(column):  # the pixel just left of a grid tile, where a frame is drawn
        return px[PAD + (TILE + PAD) * (1 + column) + PAD - 2, y]

    assert left_edge(0) == (0, 150, 60) and left_edge(1) == (255, 255, 255)
