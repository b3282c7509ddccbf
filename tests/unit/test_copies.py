"""Copy detection's pieces: the edits generator (deterministic, by content), local features (their
compact encoding, matching under rotation and crop, nothing for a tiny image), the re-ranking and
the default model's resolution."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from revsearch import copy_edits
from revsearch_server import copies
from revsearch_server.index.base import Hit
from revsearch_server.models import ModelSpec, ModelsUnavailable, ServedModels, resolve_default

PHOTO = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos" / "100075.jpg"


def _texture(seed: int = 0, size=(480, 320)) -> Image.Image:
    """A deterministic image with plenty of corners: random rectangles and circles."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for _ in range(160):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        w, h = rng.integers(6, 40, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x, y, x + w, y + h), fill=colour)
    return img


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _features(img: Image.Image, n: int) -> copies.LocalFeatures:
    return copies.extract(copies.feature_image(img), n)


# -- the edits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit", copy_edits.ALL_EDITS)
def test_every_edit_is_deterministic_by_content(edit):
    data = _png(_texture(1))
    assert copy_edits.edited_bytes(data, edit) == copy_edits.edited_bytes(data, edit)


def test_edits_change_what_they_say():
    img = _texture(2)
    digest = "ab" * 32
    assert copy_edits.apply(img, "crop50", digest).size == (240, 160)
    assert copy_edits.apply(img, "crop70", digest).size == (336, 224)
    assert copy_edits.apply(img, "scale25", digest).size == (120, 80)
    assert copy_edits.apply(img, "border", digest).size[0] > 480
    grey = np.asarray(copy_edits.apply(img, "grey", digest))
    assert (grey[..., 0] == grey[..., 1]).all()
    assert np.array_equal(np.asarray(copy_edits.apply(img, "mirror", digest)), np.asarray(img)[:, ::-1])
    # The random position depends on the content, not on a name: two images, two crops.
    a = copy_edits.apply(img, "crop50", "00" * 32)
    b = copy_edits.apply(img, "crop50", "ff" * 32)
    assert a.tobytes() != b.tobytes()
    with pytest.raises(ValueError, match="unknown edit"):
        copy_edits.apply(img, "sepia", digest)


def test_the_split_is_by_content_and_about_half():
    import hashlib

    digests = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(400)]
    dev = sum(copy_edits.dev_split(d) for d in digests)
    assert 0.4 < dev / len(digests) < 0.6


# -- local features -------------------------------------------------------------------------------
def test_features_encode_compactly_and_round_trip():
    f = _features(_texture(3), copies.STORED_FEATURES)
    assert 100 < len(f) <= copies.STORED_FEATURES
    text = f.encode()
    assert len(text) <= 4 * (4 + 36 * len(f)) // 3 + 4  # base64 of 36 bytes per keypoint and a header
    back = copies.LocalFeatures.decode(text)
    assert np.array_equal(back.descriptors, f.descriptors)
    assert np.abs(back.points - f.points).max() <= 1 / 32
    assert len(copies.LocalFeatures.decode("")) == 0 and len(copies.LocalFeatures.decode(None)) == 0


def test_a_tiny_image_has_no_local_features():
    assert len(_features(Image.new("RGB", (16, 16), (10, 20, 30)), 300)) == 0


@pytest.mark.parametrize("edit", ["crop50", "rotate", "caption", "scale25", "border"])
def test_an_edited_copy_matches_its_original_and_not_another_image(edit):
    original, other = _texture(4), _texture(5)
    stored = copies.LocalFeatures.decode(_features(original, copies.STORED_FEATURES).encode())
    unrelated = copies.LocalFeatures.decode(_features(other, copies.STORED_FEATURES).encode())
    copy = copy_edits.apply(original, edit, "cd" * 32)
    query = _features(copy, copies.QUERY_FEATURES)
    assert copies.inliers(query, stored) >= copies.MIN_INLIERS
    assert copies.inliers(query, unrelated) < copies.MIN_INLIERS


def _hit(i: str, score: float) -> Hit:
    return Hit(id=i, uri=i, score=score, sha256="", metadata={}, face_box=None)


def test_rerank_puts_the_verified_original_first_and_keeps_the_rest_in_order():
    original, others = _texture(6), [_texture(7), _texture(8)]
    stored = {"orig": _features(original, 300), "a": _features(others[0], 300), "b": _features(others[1], 300)}
    grey = copies.feature_image(copy_edits.apply(original, "rotate", "ef" * 32))
    query = copies.QueryFeatures(grey, copies.extract(grey, copies.QUERY_FEATURES))
    hits = [_hit("a", 0.9), _hit("b", 0.8), _hit("orig", 0.7), _hit("none", 0.6)]
    ranked = copies.rerank(query, hits, stored)
    assert [h.id for h in ranked] == ["orig", "a", "b", "none"]
    assert ranked[0].matched_keypoints >= copies.MIN_INLIERS and ranked[1].matched_keypoints < copies.MIN_INLIERS


def test_rerank_tries_the_mirror_image_when_nothing_matches():
    original = _texture(9)
    grey = copies.feature_image(copy_edits.apply(original, "mirror", "01" * 32))
    query = copies.QueryFeatures(grey, copies.extract(grey, copies.QUERY_FEATURES))
    ranked = copies.rerank(query, [_hit("x", 0.9), _hit("orig", 0.5)], {"orig": _features(original, 300)})
    assert ranked[0].id == "orig"


@pytest.mark.skipif(not PHOTO.is_file(), reason="../shared/data is missing")
def test_a_real_photo_rotated_matches():
    img = Image.open(PHOTO).convert("RGB")
    query = _features(copy_edits.apply(img, "rotate", "23" * 32), copies.QUERY_FEATURES)
    assert copies.inliers(query, _features(img, copies.STORED_FEATURES)) >= copies.MIN_INLIERS


# -- the default model ----------------------------------------------------------------------------
def _spec(name: str, trained: bool, preprocess: str = "imagenet") -> ModelSpec:
    return ModelSpec(name=name, version="1", dimension=8, input_size=224, resize_to=256, input_name="images",
                     output_name="embeddings", onnx_path=Path("x"), trained=trained, weights_source="",
                     weights_sha256="", preprocess=preprocess)


def test_auto_prefers_a_trained_resnet50_then_efficientnet():
    eff = _spec("efficientnet_lite0", True, "whole_image")
    face = _spec("face_dlib", True, "face_chip")
    assert resolve_default({"resnet50": _spec("resnet50", True), "efficientnet_lite0": eff}, "auto")[0] == "resnet50"
    name, why = resolve_default({"resnet50": _spec("resnet50", False), "efficientnet_lite0": eff}, "auto")
    assert name == "efficientnet_lite0" and "resnet50 is untrained" in why
    name, why = resolve_default({"efficientnet_lite0": eff, "face_dlib": face}, "auto")
    assert name == "efficientnet_lite0" and "not served (no weights)" in why
    name, why = resolve_default({"resnet50": _spec("resnet50", False), "face_dlib": face}, "auto")
    assert name == "resnet50" and "UNTRAINED" in why
    served = ServedModels.resolve({"efficientnet_lite0": eff}, "efficientnet_lite0")
    assert served.default_reason == "--default-model efficientnet_lite0"
    with pytest.raises(ModelsUnavailable, match="not servable"):
        resolve_default({"efficientnet_lite0": eff}, "resnet50")
