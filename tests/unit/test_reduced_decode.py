"""Large JPEGs in face collections are decoded at a reduced size by the JPEG decoder
(imaging.decode_reduced) and their face boxes come back in the pixels of the image that was sent:
for a plain photo, a photo turned by EXIF, and through the face cropper with the real detector."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from revsearch_server.domain import FaceOptions
from revsearch_server.faces.cropper import FaceCropper
from revsearch_server.imaging import ImageLimits, decode_reduced
from revsearch_server.models import load_models
from tests.helpers import ROOT, lfw_images

LIMITS = ImageLimits(max_bytes=200 << 20, max_pixels=100_000_000)


def _jpeg(img: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = None
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=92, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def test_a_jpeg_four_times_the_side_is_decoded_at_a_quarter_keeping_the_side_asked_for():
    got = decode_reduced(_jpeg(_noise(6400, 4800)), LIMITS, 1600)
    assert got.image.size == (1600, 1200) and (got.scale_x, got.scale_y) == (4.0, 4.0) and got.reduced


def test_a_jpeg_just_under_twice_the_side_and_any_png_are_decoded_at_full_size():
    assert decode_reduced(_jpeg(_noise(3199, 2000)), LIMITS, 1600).image.size == (3199, 2000)
    buf = io.BytesIO()
    _noise(4000, 3000).save(buf, "PNG")
    png = decode_reduced(buf.getvalue(), LIMITS, 1600)
    assert png.image.size == (4000, 3000) and not png.reduced
    assert decode_reduced(_jpeg(_noise(4000, 3000)), LIMITS, 0).image.size == (4000, 3000)


def test_odd_sizes_give_the_exact_scale_of_each_axis():
    got = decode_reduced(_jpeg(_noise(4031, 3021)), LIMITS, 1600)
    width, height = got.image.size
    assert (width, height) == (2016, 1511)  # libjpeg rounds up
    assert got.scale_x == pytest.approx(4031 / 2016) and got.scale_y == pytest.approx(3021 / 1511)


def test_an_exif_turned_photo_gets_the_scales_of_its_turned_axes():
    got = decode_reduced(_jpeg(_noise(4001, 2003), orientation=6), LIMITS, 1000)  # shown 2003 wide, 4001 high
    assert got.image.size == (501, 1001)  # a quarter, rounded up, then turned
    assert got.scale_x == pytest.approx(2003 / 501) and got.scale_y == pytest.approx(4001 / 1001)


def test_faces_of_a_large_jpeg_are_found_at_reduced_size_and_reported_in_the_sent_images_pixels():
    """An LFW photo blown up to 3000x3000: the box found on the 1500 px decode, scaled back, is the
    box found at full size (the whole decode at full size as the reference)."""
    face = Image.open(lfw_images(1)[0]).convert("RGB").resize((3000, 3000), Image.Resampling.BICUBIC)
    data = _jpeg(face)
    from revsearch_server.faces.detector import DetectorSettings
    from revsearch_server.faces.net_runners import LocalNets
    from revsearch_server.faces.onnx_mtcnn import OnnxMtcnnDetector
    from revsearch_server.models import detector_nets

    nets = detector_nets(ROOT / "model_repository")
    model = load_models(ROOT / "model_repository", allow_untrained=True)["face_dlib"]
    options = FaceOptions(min_face_size=80)
    pool = ThreadPoolExecutor(1)
    boxes = {}
    for max_side in (0, 1500):
        detector = lambda size: OnnxMtcnnDetector(LocalNets(nets), DetectorSettings(size, min_confidence=0.0))  # noqa: E731
        cropper = FaceCropper(pool, pool, detector, LIMITS, max_side=max_side)
        crops = asyncio.run(cropper.crops([data], model, options))[0]
        assert isinstance(crops, list) and len(crops) == 1 and crops[0].pixels.shape == (150, 150, 3)
        boxes[max_side] = crops[0].box
    pool.shutdown()
    full, reduced = boxes[0], boxes[1500]
    assert full.x_max - full.x_min > 600  # the face fills the middle of the 3000 px photo
    for a, b in zip(full.to_list()[:4], reduced.to_list()[:4]):
        assert abs(a - b) < 0.03 * (full.x_max - full.x_min)
