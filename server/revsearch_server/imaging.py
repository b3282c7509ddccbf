"""Image decoding and ResNet-style preprocessing (pure functions, run in the decode pool).

The model graph itself converts uint8 RGB to normalised float (see model_repository), so
preprocessing here ends at a 224x224x3 uint8 array: a quarter of the bytes of float input on
the way to Triton, and one definition of the normalisation for every backend.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidArgument, ResourceExhausted

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}  # MPO: multi-picture JPEG from cameras


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Reduced:
    """An image decoded at a reduced size, and how to map its pixels back to the original's."""
    image: Image.Image  # RGB, EXIF orientation applied
    scale_x: float  # original pixels per decoded pixel, along the (oriented) image's x
    scale_y: float

    @property
    def reduced(self) -> bool:
        return self.scale_x != 1.0 or self.scale_y != 1.0


# EXIF orientations that turn the image a quarter (its width and height swap).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def decode_reduced(data: bytes, limits: ImageLimits, max_side: int) -> Reduced:
    """decode_image, for a JPEG at least twice max_side on its long side at 1/2, 1/4 or 1/8 of its
    size by libjpeg's DCT scaling (the smallest of them whose long side stays >= max_side); other
    images at full size. The scales map decoded pixels back to the original's: boxes found on the
    decoded image are reported in the pixels of the image the user sent. 0 decodes at full size.

    Decoding a 4032x3024 JPEG at 1/2 takes 0.3 of the full decode's time (benchmarks/results/
    face_decode.md), and the face detector then works on a quarter of the pixels."""
    probe = _open(data, limits)
    width, height = probe.size
    long_side = max(width, height)
    if max_side <= 0 or probe.format not in ("JPEG", "MPO") or long_side < 2 * max_side:
        return Reduced(_finish(probe), 1.0, 1.0)
    # draft() keeps both sides >= the size asked for: ask for the image's own shape at max_side.
    probe.draft("RGB", (max(1, width * max_side // long_side), max(1, height * max_side // long_side)))
    try:
        orientation = probe.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: exif_transpose leaves such an image as it is
        orientation = 1
    img = _finish(probe)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return Reduced(img, width / img.size[0], height / img.size[1])


def decode_image(data: bytes, limits: ImageLimits, draft_size: int | None = None) -> Image.Image:
    """Decodes bytes into an RGB image with EXIF orientation applied, enforcing the limits.

    draft_size lets the JPEG decoder downscale by DCT while decoding, which is much cheaper than
    decoding full size and resizing; the result is still at least draft_size on its short side.
    """
    img = _open(data, limits)
    if draft_size and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size))
    return _finish(img)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image's header, read and checked against the limits (nothing decoded yet)."""
    if not data:
        raise InvalidArgument("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ResourceExhausted(
            f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes (--max-image-bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidArgument("not an image: the bytes are not JPEG, PNG, WebP or BMP") from None
    except Image.DecompressionBombError:
        raise ResourceExhausted(
            f"image is over the pixel limit of {limits.max_pixels} pixels (--max-image-pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a recognised header that breaks off
        raise InvalidArgument(f"image data is truncated or corrupt: {exc}") from None
    if img.format not in SUPPORTED_FORMATS:
        raise InvalidArgument(f"unsupported image format {img.format}; send JPEG, PNG, WebP or BMP")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ResourceExhausted(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels} pixels (--max-image-pixels)")
    if width < 1 or height < 1:
        raise InvalidArgument(f"image has no pixels ({width}x{height})")
    return img


def _finish(img: Image.Image) -> Image.Image:
    """Decodes an opened image: RGB, EXIF orientation applied."""
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(f"image data is truncated or corrupt ({img.format}): {exc}") from None
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    # Transparent pixels become white, as they show in a viewer, instead of their hidden colour.
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int, resize_to: int) -> np.ndarray:
    """ImageNet evaluation transform: short side to resize_to, centre crop size x size."""
    width, height = img.size
    scale = resize_to / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def resize_whole(img: Image.Image, size: int) -> np.ndarray:
    """The whole image resized to size x size (models whose preprocess is "whole_image")."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def model_input(img: Image.Image, model) -> np.ndarray:
    """A decoded RGB image as the model's uint8 input (a models.ModelSpec's preprocessing)."""
    if model.whole_image:
        return resize_whole(img, model.input_size)
    return resize_center_crop(img, model.input_size, model.resize_to)


def preprocess(data: bytes, limits: ImageLimits, size: int = 224, resize_to: int = 256, whole: bool = False
               ) -> np.ndarray:
    """Encoded bytes to the model's uint8 HxWx3 input (whole: the whole image, no centre crop)."""
    img = decode_image(data, limits, draft_size=resize_to)
    return resize_whole(img, size) if whole else resize_center_crop(img, size, resize_to)
