"""Decoding and preprocessing: formats, EXIF orientation, limits and corrupt input."""

import numpy as np
import pytest
from PIL import Image

from revsearch_server.errors import InvalidArgument, ResourceExhausted
from revsearch_server.imaging import ImageLimits, decode_image, preprocess, resize_center_crop
from tests.helpers import encode, synthetic_image

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_every_supported_format_becomes_a_224_rgb_uint8_array(fmt):
    out = preprocess(encode(synthetic_image(1), fmt), LIMITS)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.std() > 10  # real content, not a blank image


def test_exif_orientation_is_applied_before_cropping():
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert decoded.size == (200, 400)
    top, bottom = np.asarray(decoded)[10, 100], np.asarray(decoded)[390, 100]
    assert top[2] > 200 and bottom[0] > 200  # blue went to the top, red to the bottom


def test_grey_and_transparent_images_become_rgb_with_white_background():
    rgba = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    out = preprocess(encode(rgba, "PNG"), LIMITS)
    assert out.shape == (224, 224, 3) and out.min() == 255
    grey = preprocess(encode(Image.new("L", (300, 300), 77), "PNG"), LIMITS)
    assert grey.shape == (224, 224, 3) and abs(int(grey.mean()) - 77) <= 1


def test_resize_keeps_the_centre_of_a_wide_image():
    img = Image.new("RGB", (1000, 250), (0, 0, 0))
    img.paste((255, 255, 255), (375, 0, 625, 250))  # white centre band
    out = resize_center_crop(img, 224, 256)
    assert out[:, 112].mean() > 250  # the centre column is white
    assert out.shape == (224, 224, 3)


def test_zero_bytes_is_an_invalid_argument_that_says_empty():
    with pytest.raises(InvalidArgument, match="empty"):
        preprocess(b"", LIMITS)


def test_bytes_that_are_not_an_image_are_rejected():
    with pytest.raises(InvalidArgument, match="not an image"):
        preprocess(b"%PDF-1.4 hello" * 20, LIMITS)


def test_a_truncated_jpeg_is_rejected_as_corrupt():
    data = encode(synthetic_image(2), "JPEG")
    with pytest.raises(InvalidArgument, match="truncated or corrupt"):
        preprocess(data[: len(data) // 2], LIMITS)


def test_a_jpeg_whose_header_breaks_off_is_rejected_as_corrupt():
    with pytest.raises(InvalidArgument, match="truncated or corrupt"):
        preprocess(b"\xff\xd8\xff\xe0 this is not really a jpeg", LIMITS)


def test_an_image_over_the_pixel_limit_is_resource_exhausted_naming_the_limit():
    big = encode(Image.new("RGB", (2500, 2000)), "PNG")  # 5 Mpx, compresses to a few KB
    with pytest.raises(ResourceExhausted, match="4000000 pixels"):
        preprocess(big, LIMITS)


def test_an_image_over_the_byte_limit_is_resource_exhausted():
    with pytest.raises(ResourceExhausted, match="bytes"):
        preprocess(b"\xff" * 6_000_000, LIMITS)


def test_preprocessing_is_deterministic():
    data = encode(synthetic_image(3), "JPEG")
    assert np.array_equal(preprocess(data, LIMITS), preprocess(data, LIMITS))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_corrupted_bytes_only_ever_raise_the_two_client_errors(fmt):
    """Flipped, cut and spliced bytes of real images: every outcome is a clean image or a client error."""
    rng = np.random.default_rng(7)
    data = bytearray(encode(synthetic_image(9, size=(96, 80)), fmt))
    for trial in range(150):
        mutated = bytearray(data)
        for _ in range(rng.integers(1, 8)):
            mutated[rng.integers(0, len(mutated))] = rng.integers(0, 256)
        if trial % 3 == 0:
            mutated = mutated[: rng.integers(1, len(mutated))]
        try:
            out = preprocess(bytes(mutated), LIMITS)
            assert out.shape == (224, 224, 3)
        except (InvalidArgument, ResourceExhausted):
            pass
