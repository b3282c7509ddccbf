"""Deterministic edited copies of an image, the queries of `revsearch eval --copies`.

Each edit is a pure function of the image and a random generator seeded from the image's CONTENT
(sha256 of its bytes) and the edit's name, never from its file name or its position in a folder:
the same image always gets the same copy, whatever else is evaluated with it.

Edits (the names are the keys of EDITS; COMBOS chain two of them):
  original      the untouched image (re-encoded as PNG: other bytes, same pixels)
  jpeg15        JPEG quality 15
  crop70        70% of the width and 70% of the height (half the area) at a random position
  crop50        50% of each side (a quarter of the area) at a random position
  rotate        rotated 10-15 degrees either way, the image size kept, corners black
  mirror        flipped left-right
  scale25       scaled to 1/4 of each side
  grey          greyscale
  bright        brightness x1.3-1.5 or x0.55-0.7 and contrast x0.6-0.8 or x1.3-1.5
  caption       a band of 22-30% of the height, solid colour with text, over the top or bottom
  border        a 6-12% border of one solid colour on every side
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

SEED = 13


def _rng(image_digest: str, edit: str, seed: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{edit}:{image_digest}".encode()).digest()[:8], "big"))


def _crop(img: Image.Image, rng: random.Random, side: float) -> Image.Image:
    w, h = img.size
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.uniform(10.0, 15.0) * rng.choice((-1, 1))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))


def _scale(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.LANCZOS)


def _bright(img: Image.Image, rng: random.Random) -> Image.Image:
    b = rng.uniform(1.3, 1.5) if rng.random() < 0.5 else rng.uniform(0.55, 0.7)
    c = rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.3, 1.5)
    return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c)


WORDS = ("breaking", "news", "look", "at", "this", "amazing", "view", "shared", "from", "my", "trip", "wow",
         "photo", "of", "the", "day", "credit", "unknown", "when", "you", "see", "it")


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    img = img.copy()
    w, h = img.size
    band = max(1, round(h * rng.uniform(0.22, 0.30)))
    top = 0 if rng.random() < 0.5 else h - band
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, top, w, top + band), fill=colour)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))).upper()
    font = ImageFont.load_default(max(8, band // 3))
    draw.text((max(2, w // 20), top + band // 4), text, fill=ink, font=font)
    return img


def _border(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    width = max(1, round(max(w, h) * rng.uniform(0.06, 0.12)))
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    return ImageOps.expand(img, border=width, fill=colour)


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=15)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


EDITS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "original": lambda img, rng: img,
    "jpeg15": _jpeg,
    "crop70": lambda img, rng: _crop(img, rng, 0.7),
    "crop50": lambda img, rng: _crop(img, rng, 0.5),
    "rotate": _rotate,
    "mirror": lambda img, rng: ImageOps.mirror(img),
    "scale25": _scale,
    "grey": lambda img, rng: ImageOps.grayscale(img).convert("RGB"),
    "bright": _bright,
    "caption": _caption,
    "border": _border,
}
# Combinations of two edits, applied left to right.
COMBOS = ("crop70+jpeg15", "rotate+caption", "mirror+crop70", "grey+border", "scale25+caption", "bright+rotate")
ALL_EDITS = (*EDITS, *COMBOS)


def apply(img: Image.Image, edit: str, image_digest: str, seed: int = SEED, _encode_last_jpeg: bool = False
          ) -> Image.Image:
    """The edited copy; `edit` is a name of EDITS or a COMBOS entry ("a+b")."""
    out = img.convert("RGB")
    parts = edit.split("+")
    for n, part in enumerate(parts):
        if part not in EDITS:
            raise ValueError(f"unknown edit {part!r}; known: {', '.join(EDITS)}")
        if _encode_last_jpeg and part == "jpeg15" and n == len(parts) - 1:
            break  # edited_bytes encodes it once, as the file
        out = EDITS[part](out, _rng(image_digest, f"{edit}/{part}", seed))
    return out


def edited_bytes(data: bytes, edit: str, seed: int = SEED) -> bytes:
    """The edited copy of an encoded image, encoded: JPEG for the JPEG edits (the artefacts are the
    edit), PNG otherwise (lossless: the edit is exactly what the query differs by)."""
    digest = hashlib.sha256(data).hexdigest()
    jpeg_last = edit.split("+")[-1] == "jpeg15"
    img = apply(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), edit, digest, seed, _encode_last_jpeg=jpeg_last)
    buffer = io.BytesIO()
    if jpeg_last:
        img.save(buffer, format="JPEG", quality=15)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


def dev_split(digest: str) -> bool:
    """Whether an image belongs to the development half (by content hash, not by name or order)."""
    return int(digest[:2], 16) % 2 == 0
