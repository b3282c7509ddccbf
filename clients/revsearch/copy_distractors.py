"""Distractors for `revsearch eval --copies --copy-distractors N`: hard on purpose, never copies.

The gallery's photos and LFW portraits are split in two by content hash (in_distractor_half, a
different bit of the hash than copy_edits.dev_split): one half stays in the gallery as originals,
the other half is only ever the source of distractors, so no distractor is a copy of any query's
original. Each distractor is a crop (35-90% of each side at a random place), a rescale (0.3-0.9),
a recolouring (brightness, contrast, saturation, greyscale) or a combination, of a source image,
saved as JPEG: near-duplicates of each other and of nothing in the gallery, the kind of image that
crowds a copy's original out of the candidates in a large archive.

Deterministic: distractor n is variant n // len(sources) of source n % len(sources) (sources sorted by
content hash), its edits drawn from a generator seeded by the source's content and the variant, never
by file names or order on disk. Made once and cached outside git (cache_dir(): ~/.cache/revsearch,
or $REVSEARCH_CACHE), one JPEG per distractor.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

VERSION = 1


def in_distractor_half(digest: str) -> bool:
    """Whether an image is a distractor source rather than a gallery original (by content hash)."""
    return int(digest[2:4], 16) % 2 == 1


def cache_dir() -> Path:
    return Path(os.environ.get("REVSEARCH_CACHE", Path.home() / ".cache" / "revsearch"))


def _recolour(img: Image.Image, rng: random.Random) -> Image.Image:
    if rng.random() < 0.2:
        return ImageOps.grayscale(img).convert("RGB")
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.3, 1.7))


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    sw, sh = rng.uniform(0.35, 0.9), rng.uniform(0.35, 0.9)
    cw, ch = max(16, round(w * sw)), max(16, round(h * sh))
    x, y = rng.randint(0, max(0, w - cw)), rng.randint(0, max(0, h - ch))
    return img.crop((x, y, x + cw, y + ch))


def _rescale(img: Image.Image, rng: random.Random) -> Image.Image:
    f = rng.uniform(0.3, 0.9)
    w, h = img.size
    return img.resize((max(16, round(w * f)), max(16, round(h * f))), Image.Resampling.BILINEAR)


RECIPES = (("crop",), ("rescale",), ("recolour",), ("crop", "recolour"), ("crop", "rescale"),
           ("rescale", "recolour"), ("crop", "rescale", "recolour"))
_STEPS = {"crop": _crop, "rescale": _rescale, "recolour": _recolour}


def distractor(data: bytes, variant: int) -> bytes:
    """Variant `variant` of a source image, as JPEG bytes."""
    digest = hashlib.sha256(data).hexdigest()
    rng = random.Random(int.from_bytes(hashlib.sha256(f"distractor:{VERSION}:{variant}:{digest}".encode()).digest()[:8],
                                       "big"))
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    for step in RECIPES[rng.randrange(len(RECIPES))]:
        img = _STEPS[step](img, rng)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=rng.randint(80, 95))
    return buffer.getvalue()


def make(sources: list[bytes], count: int, log=print) -> list[Path]:
    """The `count` distractors of these sources, made once into the cache; their paths in order."""
    ordered = sorted(sources, key=lambda d: hashlib.sha256(d).hexdigest())
    key = hashlib.sha1(("\n".join(hashlib.sha256(d).hexdigest() for d in ordered) + f"\n{VERSION}").encode())
    folder = cache_dir() / "copy_distractors" / key.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{n:06d}.jpg" for n in range(count)]
    missing = [n for n, p in enumerate(paths) if not p.is_file()]
    if missing:
        log(f"making {len(missing)} distractors of {len(ordered)} source images into {folder}")
    for done, n in enumerate(missing, start=1):
        tmp = paths[n].with_suffix(".tmp")
        tmp.write_bytes(distractor(ordered[n % len(ordered)], n // len(ordered)))
        tmp.replace(paths[n])
        if done % 2000 == 0:
            log(f"  {done}/{len(missing)} distractors made")
    return paths
