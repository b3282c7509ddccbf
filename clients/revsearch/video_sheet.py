"""A PNG contact sheet for video search results: the query, then one row per hit with its matching frames.

The query row shows the query image, or the query clip's sampled frames (at the server's
query_frames timestamps), with the face the server used drawn in. Each hit row names the hit
(rank, score, file name, id) and shows its best-matching frames, read with OpenCV from the hit's
uri (seeking to each match's timestamp) when that is a readable local file, with the matched face
drawn and a "t=12.3s  0.912" caption. A frame that cannot be had gets a grey tile that says why,
so the rows keep their shape.

Hits and query frames are plain dicts, as the CLI prints them with --json:
hits [{rank, id, uri, score, matches [{timestamp_s, score, face_box}]}], query_frames
[{timestamp_s, face_boxes}], each face box {x_min, y_min, x_max, y_max, ...} or None, in pixels of
the original frame or image.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .contact_sheet import LABEL, PAD, TILE

COLUMNS = 6  # query clip frames per row
HEADER = 40
NAME_W = 180  # the left column with the row's name
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (90, 90, 90)
QUERY_BOX = (255, 150, 0)
MATCH_BOX = (0, 220, 60)
FALLBACK_FPS = 25.0  # what the server assumes when a file's frame rate is missing


def local_path(uri: str) -> Path | None:
    """The uri as a readable local file, or None (URLs, missing files)."""
    if not uri:
        return None
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(uri.removeprefix("file://"))
    try:
        return path if path.is_file() else None
    except OSError:
        return None


class FrameReader:
    """Reads frames of local video files by timestamp (frame index = round(t * fps), as the server
    samples them), keeping each file open while the sheet is drawn."""

    def __init__(self):
        self._caps: dict[Path, object] = {}

    def read(self, path: Path, timestamp_s: float) -> Image.Image | None:
        import cv2

        cap = self._caps.get(path)
        if cap is None:
            cap = self._caps[path] = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            return None
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            fps = FALLBACK_FPS
        cap.set(cv2.CAP_PROP_POS_FRAMES, max(0, round(timestamp_s * fps)))
        ok, frame = cap.read()
        if not ok or frame is None:
            return None
        return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        for cap in self._caps.values():
            cap.release()
        self._caps.clear()


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)


def _with_box(img: Image.Image, box: dict | None, colour: tuple[int, int, int]) -> Image.Image:
    """The image with the face box drawn, its line about 2 px wide once scaled to a tile."""
    if box:
        img = img.copy()
        width = max(2, round(max(img.size) / TILE * 2))
        ImageDraw.Draw(img).rectangle((box["x_min"], box["y_min"], box["x_max"], box["y_max"]),
                                      outline=colour, width=width)
    return img


def _fit(img: Image.Image) -> Image.Image:
    return ImageOps.pad(img.convert("RGB"), (TILE, TILE), color=(30, 30, 30))


def _clip_text(text: str, font, max_width: int) -> str:
    """The text, shortened with an ellipsis to fit max_width pixels."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def placeholder(reason: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), PLACEHOLDER)
    text = "\n".join(textwrap.wrap(reason, 20))
    ImageDraw.Draw(tile).multiline_text((8, TILE // 2 - 30), text, fill=(230, 230, 230), font=_font(13), spacing=3)
    return tile


def _image_tile(data: bytes, box: dict | None) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    except Exception:
        return placeholder("query image not readable")
    return _fit(_with_box(img, box, QUERY_BOX))


def _rows_of(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


def render(hits: list[dict], title: str, query_image: bytes | None = None, query_clip: str | Path | None = None,
           query_frames: list[dict] | None = None, query_name: str = "") -> Image.Image:
    """The sheet: a header, the query row(s), then one row per hit with its matching frames."""
    reader = FrameReader()
    try:
        # Each row: (name lines, [(tile, caption)]).
        rows: list[tuple[list[str], list[tuple[Image.Image, str]]]] = []
        if query_image is not None:
            box = (query_frames[0]["face_boxes"] or [None])[0] if query_frames else None
            rows.append((["query", query_name], [(_image_tile(query_image, box), "query image")]))
        else:
            clip = local_path(str(query_clip)) if query_clip is not None else None
            tiles = []
            for f in query_frames or []:
                box = (f.get("face_boxes") or [None])[0]
                frame = reader.read(clip, f["timestamp_s"]) if clip else None
                tile = (_fit(_with_box(frame, box, QUERY_BOX)) if frame is not None
                        else placeholder("query frame not available"))
                tiles.append((tile, f"t={f['timestamp_s']:.1f}s" + ("" if box else "  no face")))
            for n, chunk in enumerate(_rows_of(tiles, COLUMNS)):
                rows.append((["query clip", query_name, f"{len(tiles)} frames"] if n == 0 else [], chunk))
        n_query_rows = len(rows)
        for h in hits:
            path = local_path(h.get("uri", ""))
            tiles = []
            for m in h.get("matches") or []:
                if path is None:
                    tile = placeholder("frame not available (uri not a local file)")
                else:
                    frame = reader.read(path, m["timestamp_s"])
                    tile = (_fit(_with_box(frame, m.get("face_box"), MATCH_BOX)) if frame is not None
                            else placeholder("frame not available (could not read it)"))
                tiles.append((tile, f"t={m['timestamp_s']:.1f}s  {m['score']:.3f}"))
            if not tiles:
                tiles.append((placeholder("no matching frames reported"), ""))
            name = Path(h.get("uri", "")).name or h.get("id", "")
            rows.append(([f"#{h['rank']}  {h['score']:.4f}", name, f"id {h.get('id', '')}"], tiles))
    finally:
        reader.close()

    cell_w, cell_h = TILE + PAD, TILE + LABEL + PAD
    columns = max(3, max(len(t) for _, t in rows))
    width = PAD + NAME_W + columns * cell_w + PAD
    height = HEADER + len(rows) * cell_h + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(16), _font(13)
    draw.text((PAD, 10), _clip_text(title, font, width - 2 * PAD), fill=(0, 0, 0), font=font)
    for r, (names, tiles) in enumerate(rows):
        y = HEADER + r * cell_h
        if r == n_query_rows:  # a rule between the query and the hits
            draw.line((PAD, y - PAD // 2, width - PAD, y - PAD // 2), fill=(200, 200, 200), width=1)
        for k, line in enumerate(names):
            f = font if k == 0 else small
            colour = (0, 0, 160) if r < n_query_rows else ((0, 0, 0) if k == 0 else (90, 90, 90))
            draw.text((PAD, y + 4 + 18 * k), _clip_text(line, f, NAME_W - 2 * PAD), fill=colour, font=f)
        for c, (tile, caption) in enumerate(tiles):
            x = PAD + NAME_W + c * cell_w
            sheet.paste(tile, (x, y))
            draw.text((x, y + TILE + 3), caption, fill=(0, 0, 0), font=small)
    return sheet


def write(path: str | Path, hits: list[dict], title: str, **query) -> Path:
    """Renders the sheet (see render for the query keywords) and saves it as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(hits, title, **query).save(path, format="PNG")
    return path

