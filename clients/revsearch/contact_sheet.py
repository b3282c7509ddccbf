"""A PNG contact sheet: the query beside its top-k hits, each labelled with rank and score; hits that
copy detection verified (SearchHit.matched_keypoints >= VERIFIED_COPY_KEYPOINTS) framed in green and
labelled "copy" with their matched points.

Like the original project's result plot. Hits whose uri is not a readable local file get a grey
tile that says so, rather than being dropped, so ranks stay in place.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 160
LABEL = 34
PAD = 8
# SearchHit.matched_keypoints from which a hit is a verified copy (the proto's threshold, copies.MIN_INLIERS).
VERIFIED_COPY_KEYPOINTS = 10
_COPY_GREEN = (0, 150, 60)


def _tile(data: bytes | None, size: int = TILE) -> Image.Image:
    if data:
        try:
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            return ImageOps.pad(img, (size, size), color=(30, 30, 30))
        except Exception:
            pass
    tile = Image.new("RGB", (size, size), (90, 90, 90))
    ImageDraw.Draw(tile).text((10, size // 2 - 8), "image not\navailable", fill=(230, 230, 230),
                              font=ImageFont.load_default(14))
    return tile


def _read(uri: str) -> bytes | None:
    path = Path(uri.removeprefix("file://"))
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


def is_verified_copy(matched_keypoints: int) -> bool:
    return matched_keypoints >= VERIFIED_COPY_KEYPOINTS


def render(query: bytes, hits: list[tuple], title: str, columns: int = 5) -> Image.Image:
    """hits: (rank, score, uri) or (rank, score, uri, matched_keypoints). Returns the sheet; the query
    tile sits left of the grid."""
    rows = max(1, -(-len(hits) // columns))
    cell_w, cell_h = TILE + PAD, TILE + LABEL + PAD
    width = PAD + cell_w * (columns + 1) + PAD
    height = 40 + rows * cell_h + PAD
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(16), ImageFont.load_default(13)
    draw.text((PAD, 10), title, fill=(0, 0, 0), font=font)
    sheet.paste(_tile(query), (PAD, 40))
    draw.text((PAD, 40 + TILE + 4), "query", fill=(0, 0, 160), font=font)
    for n, (rank, score, uri, *more) in enumerate(hits):
        x = PAD + cell_w * (1 + n % columns) + PAD
        y = 40 + cell_h * (n // columns)
        sheet.paste(_tile(_read(uri)), (x, y))
        matched = int(more[0]) if more else 0
        if is_verified_copy(matched):
            draw.rectangle((x - 3, y - 3, x + TILE + 2, y + TILE + 2), outline=_COPY_GREEN, width=3)
            draw.text((x, y + TILE + 2), f"#{rank}  {score:.3f}  copy {matched}", fill=_COPY_GREEN, font=small)
        else:
            draw.text((x, y + TILE + 2), f"#{rank}  {score:.4f}", fill=(0, 0, 0), font=small)
        draw.text((x, y + TILE + 17), Path(uri).name[:24], fill=(90, 90, 90), font=small)
    return sheet


def write(path: str | Path, query: bytes, hits: list[tuple], title: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(query, hits, title).save(path, format="PNG")
    return path
