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
def _stored(img: Image.Image) -> copies.LocalFeatures:
    """An item's features as they come back from the store (format 3)."""
    return copies.LocalFeatures.decode(copies.extract_stored(copies.feature_image(img)).encode())


def test_stored_features_encode_in_seven_bits_a_character_and_round_trip():
    f = copies.extract_stored(copies.feature_image(_texture(3)))
    assert 100 < len(f) <= copies.STORED_FEATURES
    text = f.encode()
    width = copies.STORED_DESCRIPTOR_BYTES
    # "3:", then 8 characters per 7 bytes of a 4-byte header and 2 + width bytes per keypoint, each 0-127
    assert text.startswith("3:") and len(text) == 2 + -(-(4 + len(f) * (2 + width)) * 8 // 7)
    assert max(map(ord, text)) < 128 and len(text.encode("utf-8")) == len(text)
    back = copies.LocalFeatures.decode(text)
    assert np.array_equal(back.descriptors, f.descriptors[:, :width])
    assert np.abs(back.points - f.points).max() <= 0.5 * copies.FEATURE_SIDE / 256 + 1e-6
    assert len(copies.LocalFeatures.decode("")) == 0 and len(copies.LocalFeatures.decode(None)) == 0


def test_format_2_rows_of_collections_created_before_still_decode_and_are_longer():
    f = copies.extract_stored(copies.feature_image(_texture(3)))
    old = f.encode(2)
    width = copies.STORED_DESCRIPTOR_BYTES
    # "2:", then base85 (5 characters per 4 bytes)
    assert old.startswith("2:") and len(old) <= 2 + -(-(4 + len(f) * (2 + width)) // 4) * 5
    assert len(old) > len(f.encode()) * 1.08
    back = copies.LocalFeatures.decode(old)
    assert np.array_equal(back.descriptors, f.descriptors[:, :width])
    assert np.array_equal(back.points, copies.LocalFeatures.decode(f.encode()).points)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff" * 7, bytes(range(256)), b"\x03\x0a\x01\x00" + bytes(12)])
def test_seven_bit_text_round_trips_any_bytes(raw):
    text = copies.seven_bit_encode(raw)
    assert len(text) == -(-len(raw) * 8 // 7) and copies.seven_bit_decode(text) == raw


def test_format_1_rows_of_older_collections_still_decode():
    f = _features(_texture(3), 300)
    back = copies.LocalFeatures.decode(f.encode_v1())
    assert np.array_equal(back.descriptors, f.descriptors) and np.abs(back.points - f.points).max() <= 1 / 32


@pytest.mark.parametrize("text", ["2:", "2:!!!!!", "2:" + "0" * 40, "not base64 at all ###", "AAAA",
                                  "AgAKAA==", "2:" + __import__("base64").b85encode(b"\x02\x10\x05\x00abc").decode(),
                                  "3:", "3:\x00", "3:é" + "A" * 40, "3:" + copies.seven_bit_encode(b"\x03\x0a\x05\x00abc"),
                                  "3:" + copies.seven_bit_encode(b"\x02\x0a\x00\x00")])
def test_a_corrupt_feature_blob_decodes_to_no_features(text):
    assert len(copies.LocalFeatures.decode(text)) == 0


def test_stored_keypoints_cover_every_part_of_the_image():
    grey = copies.feature_image(_texture(10))
    f = copies.extract_stored(grey)
    h, w = grey.shape
    cells = {(int(y * copies.GRID / h), int(x * copies.GRID / w)) for x, y in f.points}
    assert len(cells) == copies.GRID * copies.GRID


def test_a_tiny_image_has_no_local_features():
    assert len(_features(Image.new("RGB", (16, 16), (10, 20, 30)), 300)) == 0
    assert len(copies.extract_stored(copies.feature_image(Image.new("RGB", (16, 16))))) == 0


@pytest.mark.parametrize("edit", ["crop50", "rotate", "caption", "scale25", "border"])
def test_an_edited_copy_matches_its_original_and_not_another_image(edit):
    original, other = _texture(11), _texture(5)
    copy = copy_edits.apply(original, edit, "cd" * 32)
    query = copies.extract_query(copies.feature_image(copy))
    assert copies.inliers(query, _stored(original)) >= copies.MIN_INLIERS
    assert copies.inliers(query, _stored(other)) < copies.MIN_INLIERS


def _hit(i: str, score: float) -> Hit:
    return Hit(id=i, uri=i, score=score, sha256="", metadata={}, face_box=None)


def _query(img: Image.Image) -> copies.QueryFeatures:
    grey = copies.feature_image(img)
    return copies.QueryFeatures(grey, copies.extract_query(grey))


@pytest.mark.parametrize("width", [10, 32])
def test_the_two_nearest_descriptors_are_opencvs_with_their_hamming_distances(width):
    import cv2

    rng = np.random.default_rng(width)
    query = rng.integers(0, 256, (450, 32), dtype=np.uint8)
    stored = rng.integers(0, 256, (280, width), dtype=np.uint8)
    stored[7] = query[3, :width]  # an exact match: distance 0
    q, s = copies._same_width(query, stored)
    dist, nearest = copies.two_nearest(q, s)
    expected, opencv = cv2.batchDistance(q, s, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
    assert (dist == expected).all()
    untied = dist[:, 0] < dist[:, 1]  # where two stored ones are as near, either may come first
    assert untied.mean() > 0.5 and (nearest[untied, 0] == opencv[untied, 0]).all()
    assert dist[3, 0] == 0 and nearest[3, 0] == 7


def test_rerank_puts_the_verified_original_first_and_keeps_the_rest_in_order():
    original, others = _texture(6), [_texture(7), _texture(8)]
    stored = {"orig": _stored(original), "a": _stored(others[0]), "b": _stored(others[1])}
    hits = [_hit("a", 0.9), _hit("b", 0.8), _hit("orig", 0.7), _hit("none", 0.6)]
    ranked = copies.rerank(_query(copy_edits.apply(original, "rotate", "ef" * 32)), hits, stored)
    assert [h.id for h in ranked] == ["orig", "a", "b", "none"]
    assert ranked[0].matched_keypoints >= copies.MIN_INLIERS and ranked[1].matched_keypoints < copies.MIN_INLIERS


def test_verification_stops_patience_unverified_candidates_after_the_last_copy():
    original = _texture(11)
    others = {f"o{n}": _stored(_texture(20 + n)) for n in range(12)}
    hits = [_hit("orig", 0.9)] + [_hit(i, 0.89 - n / 1000) for n, i in enumerate(others)]
    verifier = copies.Verifier(_query(copy_edits.apply(original, "crop70", "ab" * 32)), hits)
    verifier.feed({"orig": _stored(original), **others})
    assert verifier.settled and len(verifier.counts) == 1 + copies.PATIENCE  # not all 13
    assert verifier.ranked()[0].id == "orig"


def test_every_copy_found_gives_the_candidates_after_it_more_patience():
    original = _texture(11)
    stored = {"orig": _stored(original), "copy": _stored(copy_edits.apply(original, "border", "12" * 32))}
    stored.update({f"o{n}": _stored(_texture(40 + n)) for n in range(10)})
    order = ["orig", "o0", "o1", "copy", "o2", "o3", "o4", "o5", "o6"]
    hits = [_hit(i, 0.9 - n / 100) for n, i in enumerate(order)]
    verifier = copies.Verifier(_query(copy_edits.apply(original, "crop70", "ab" * 32)), hits)
    verifier.feed(stored)
    assert len(verifier.counts) == 4 + copies.PATIENCE  # orig, 2 misses, copy, then PATIENCE misses
    assert {h.id for h in verifier.ranked()[:2]} == {"orig", "copy"}


def test_a_sure_first_candidate_that_does_not_verify_keeps_the_vector_answer_at_once():
    hits = [_hit("first", 0.9), _hit("other", 0.5)]
    verifier = copies.Verifier(_query(_texture(31)), hits, sure=True)
    verifier.feed({"first": _stored(_texture(32))})
    assert verifier.settled and len(verifier.counts) == 1 and verifier.ranked()[0].id == "first"


def test_a_sure_query_fetches_its_first_and_the_patience_after_it_in_one_read():
    from revsearch_server.usecases.images import _chunk

    original = _texture(11)
    hits = [_hit("orig", 0.95)] + [_hit(f"o{n}", 0.5 - n / 100) for n in range(12)]
    sure = copies.Verifier(_query(copy_edits.apply(original, "crop70", "ab" * 32)), hits, sure=True)
    first = sure.wanted[:_chunk(sure)]
    assert first == ["orig", "o0", "o1", "o2"] and len(first) == 1 + copies.PATIENCE
    sure.feed({"orig": _stored(original), **{i: _stored(_texture(60 + n)) for n, i in enumerate(first[1:])}})
    assert sure.settled and sure.ranked()[0].id == "orig"  # nothing more to read
    unsure = copies.Verifier(_query(original), hits)
    assert _chunk(unsure) == copies.FIRST_FETCH


def test_candidates_added_later_are_verified_in_vector_order():
    original = _texture(15)
    verifier = copies.Verifier(_query(copy_edits.apply(original, "crop50", "ab" * 32)), [_hit("a", 0.5)])
    verifier.feed({"a": _stored(_texture(16))})
    assert verifier.settled  # every candidate seen, none verified
    verifier.add([_hit("a", 0.6), _hit("orig", 0.55), _hit("b", 0.4)])
    assert not verifier.settled and verifier.wanted == ["orig", "b"]
    verifier.feed({"orig": _stored(original), "b": _stored(_texture(17))})
    assert verifier.ranked()[0].id == "orig"


def test_base85_matches_the_standard_library():
    import base64
    import os

    for n in range(0, 41):
        raw = os.urandom(n)
        assert copies.b85encode(raw) == base64.b85encode(raw).decode()
        assert copies.b85decode(copies.b85encode(raw)) == raw
    with pytest.raises(ValueError):
        copies.b85decode("a\"b")


def test_verification_waits_for_features_it_has_not_been_given():
    original = _texture(12)
    hits = [_hit("a", 0.9), _hit("orig", 0.8)]
    verifier = copies.Verifier(_query(copy_edits.apply(original, "rotate", "cd" * 32)), hits)
    verifier.feed({"a": _stored(_texture(13))})
    assert not verifier.settled and verifier.wanted == ["orig"]
    verifier.feed({"orig": _stored(original)})
    assert verifier.settled and [h.id for h in verifier.ranked()] == ["orig", "a"]


def test_a_corrupt_stored_blob_leaves_that_candidate_unverified():
    original = _texture(14)
    hits = [_hit("broken", 0.9), _hit("orig", 0.8)]
    stored = {"broken": copies.LocalFeatures.decode("2:####"), "orig": _stored(original)}
    ranked = copies.rerank(_query(copy_edits.apply(original, "crop70", "12" * 32)), hits, stored)
    assert [h.id for h in ranked] == ["orig", "broken"] and ranked[1].matched_keypoints == 0


def test_rerank_tries_the_mirror_image_when_nothing_matches():
    original = _texture(9)
    ranked = copies.rerank(_query(copy_edits.apply(original, "mirror", "01" * 32)),
                           [_hit("x", 0.9), _hit("orig", 0.5)], {"orig": _stored(original)})
    assert ranked[0].id == "orig"


@pytest.mark.skipif(not PHOTO.is_file(), reason="../shared/data is missing")
def test_a_real_photo_rotated_matches():
    img = Image.open(PHOTO).convert("RGB")
    query = copies.extract_query(copies.feature_image(copy_edits.apply(img, "rotate", "23" * 32)))
    assert copies.inliers(query, _stored(img)) >= copies.MIN_INLIERS


def test_the_zoomed_out_query_is_the_model_input_box_reduced_and_close_to_resizing_the_image():
    from dataclasses import replace

    from revsearch_server.imaging import model_input

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (30, 48, 3), dtype=np.uint8)).resize((960, 600))
    spec = replace(_spec("efficientnet_lite0", True, "whole_image"), copy_query_side=112)
    pixels = model_input(img, spec)
    small = copies._zoomed_out(img, pixels, spec)
    assert small.shape == (112, 112, 3) and small.dtype == np.uint8
    assert np.array_equal(small, np.asarray(Image.fromarray(pixels).reduce(2)))
    resized = np.asarray(img.resize((112, 112), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(small.astype(np.float32) - resized).mean() < 2  # the same picture
    assert copies._zoomed_out(img, pixels, replace(spec, copy_query_side=0)) is None
    odd = copies._zoomed_out(img, pixels, replace(spec, copy_query_side=100))  # not a divisor: resized
    assert odd.shape == (100, 100, 3)


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


def test_the_longest_stored_feature_blob_fits_the_column_of_new_collections():
    """index/milvus.py sizes new collections' local_features column for format 2 (the longest blob it writes)."""
    from revsearch_server.index.milvus import _FEATURES_MAX

    widest = copies.LocalFeatures(np.full((copies.STORED_FEATURES, 2), 319, np.float32),
                                  np.full((copies.STORED_FEATURES, 32), 255, np.uint8))
    assert len(widest.encode()) <= _FEATURES_MAX


def test_a_copy_of_the_verified_copy_is_verified_through_it_and_ranks_after_the_direct_ones():
    """Query expansion: the query (the top-left corner) and a crop of the bottom-right corner share
    nothing, but the crop matches the verified original; unrelated images match neither."""
    original = _texture(6)
    w, h = original.size
    corner = original.crop((w // 2, h // 2, w, h))
    stored = {"orig": _stored(original), "corner": _stored(corner)}
    stored.update({f"o{n}": _stored(_texture(40 + n)) for n in range(4)})
    order = ["o0", "orig", "o1", "corner", "o2", "o3"]
    verifier = copies.Verifier(_query(original.crop((0, 0, int(0.55 * w), int(0.55 * h)))),
                               [_hit(i, 0.9 - n / 100) for n, i in enumerate(order)])
    verifier.feed(stored)
    assert verifier.counts[order.index("corner")] < copies.MIN_INLIERS  # not by the query itself
    ranked = verifier.ranked()
    assert [h.id for h in ranked[:2]] == ["orig", "corner"]
    assert ranked[1].matched_keypoints >= copies.MIN_INLIERS  # its inliers against the original
    assert [h.id for h in ranked[2:]] == ["o0", "o1", "o2", "o3"] and not any(h.matched_keypoints for h in ranked[2:])
    assert len(verifier.counts) == len(order)  # the corner, a copy, gave the candidates after it patience


def test_nothing_is_verified_through_a_copy_before_one_is_found():
    original = _texture(6)
    w, h = original.size
    stored = {"corner": _stored(original.crop((w // 2, h // 2, w, h))), "o0": _stored(_texture(40))}
    verifier = copies.Verifier(_query(original.crop((0, 0, int(0.55 * w), int(0.55 * h)))),
                               [_hit("corner", 0.9), _hit("o0", 0.8)])
    verifier.feed(stored)
    assert not verifier.found and not verifier.through_copy and [h.id for h in verifier.ranked()] == ["corner", "o0"]
