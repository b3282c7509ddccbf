"""Copy detection's compact vectors: the whitening learned at build time (scripts/copy_whitening.py)
and its use by the server (copy_vectors.py), the settings a compact collection records, and the
distractors of `eval --copies` (made by content, never copies of a gallery original)."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from revsearch import copy_distractors
from revsearch_server.catalog import COPY_VECTORS_REGIONS, CollectionSpec
from revsearch_server.copy_vectors import VIEW_DIMENSION, CopyProjections, leading
from revsearch_server.domain import CropMode, IndexKind
from revsearch_server.errors import Unavailable
from revsearch_server.models import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import copy_whitening  # noqa: E402


def _vectors(n: int = 600, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(3.0, 0.1, d)  # directions of very different spread
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_whitening_is_deterministic_and_evens_out_the_kept_directions():
    x = _vectors()
    mean, projection = copy_whitening.fit(x, dimension=8, shrink=0.0)
    again = copy_whitening.fit(x.copy(), dimension=8, shrink=0.0)
    assert np.array_equal(mean, again[0]) and np.array_equal(projection, again[1])
    assert projection.shape == (32, 8)
    y = (x - mean) @ projection
    assert np.allclose(np.var(y, axis=0, ddof=1), 1.0, atol=1e-3)  # full whitening: unit variance each


def _spec(tmp_path: Path, whitening: Path | None) -> ModelSpec:
    return ModelSpec(name="m", version="1", dimension=32, input_size=224, resize_to=224, input_name="images",
                     output_name="embeddings", onnx_path=tmp_path / "x.onnx", trained=True, weights_source="",
                     weights_sha256="", preprocess="whole_image", copy_output="regions", copy_regions=5,
                     copy_dimension=8, copy_whitening=whitening)


def test_projected_regions_are_unit_vectors_of_the_whitened_dimension(tmp_path):
    mean, projection = copy_whitening.fit(_vectors(), dimension=8)
    np.savez(tmp_path / "w.npz", mean=mean, projection=projection)
    spec = _spec(tmp_path, tmp_path / "w.npz")
    assert spec.has_copy_descriptor
    regions = np.random.default_rng(1).random((3, 5, 32)).astype(np.float32) * 10  # raw, unnormalised
    out = CopyProjections().project(spec, regions)
    assert out.shape == (3, 5, 8) and np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    x = regions[1, 2] / np.linalg.norm(regions[1, 2])
    expected = (x - mean) @ projection
    assert np.allclose(out[1, 2], expected / np.linalg.norm(expected), atol=1e-5)


def test_a_missing_or_mismatched_whitening_file_is_unavailable_with_a_fix(tmp_path):
    with pytest.raises(Unavailable, match="make models"):
        CopyProjections().project(_spec(tmp_path, tmp_path / "missing.npz"), np.zeros((1, 5, 32), np.float32))
    np.savez(tmp_path / "w.npz", mean=np.zeros(32, np.float32), projection=np.zeros((32, 4), np.float32))
    with pytest.raises(Unavailable, match="shape"):
        CopyProjections().project(_spec(tmp_path, tmp_path / "w.npz"), np.zeros((1, 5, 32), np.float32))


def test_a_compact_collection_records_how_its_vectors_are_made_and_says_so():
    spec = CollectionSpec(name="c", model="efficientnet_lite0", model_version="1", dimension=128,
                          crop_mode=CropMode.NONE, index_kind=IndexKind.MILVUS, created_at_ms=1, description="",
                          model_trained=True, layout=3, copy_detection=True, copy_views=4,
                          copy_vectors=COPY_VECTORS_REGIONS, float16_vectors=True, lean_views=True)
    back = CollectionSpec.from_json(spec.to_json())
    assert back == spec and back.compact_copies and back.lean_views
    # Settings written before vectors-only views keep their views' full rows.
    assert not CollectionSpec.from_json(spec.to_json().replace(', "lean_views": true', "")).lean_views
    assert "one forward pass" in back.copy_detection_detail and "float16" in back.copy_detection_detail
    first = CollectionSpec.from_json(spec.to_json().replace(', "copy_vectors": "regions", "float16_vectors": true', ""))
    assert first is not None and first.copy_detection and not first.compact_copies and not first.float16_vectors
    assert "first layout" in first.copy_detection_detail


def test_a_compact_collection_of_this_release_keeps_80_dimensions_of_its_crop_views_and_writes_format_3():
    spec = CollectionSpec(name="c", model="efficientnet_lite0", model_version="1", dimension=128,
                          crop_mode=CropMode.NONE, index_kind=IndexKind.MILVUS, created_at_ms=1, description="",
                          model_trained=True, layout=3, copy_detection=True, copy_views=4,
                          copy_vectors=COPY_VECTORS_REGIONS, lean_views=True, view_dimension=VIEW_DIMENSION,
                          feature_format=3)
    back = CollectionSpec.from_json(spec.to_json())
    assert back == spec and back.views_dimension == VIEW_DIMENSION == 80
    assert "crop vectors (80-d)" in back.copy_detection_detail and "format 3" in back.copy_detection_detail
    assert "earlier compact layout" not in back.copy_detection_detail
    # Settings written before: crop views of the collection's dimension, base85 features, and it says so.
    earlier = CollectionSpec.from_json(spec.to_json().replace(', "view_dimension": 80, "feature_format": 3', ""))
    assert earlier.views_dimension == 128 and earlier.feature_format == 2
    assert "earlier compact layout" in earlier.copy_detection_detail and "format 2" in earlier.copy_detection_detail


def test_leading_dimensions_are_cut_and_normalised_again():
    v = np.random.default_rng(1).standard_normal((3, 5, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    cut = leading(v, 80)
    assert cut.shape == (3, 5, 80) and np.allclose(np.linalg.norm(cut, axis=-1), 1, atol=1e-5)
    assert np.allclose(cut, v[..., :80] / np.linalg.norm(v[..., :80], axis=-1, keepdims=True), atol=1e-6)
    assert leading(v, 128) is v


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_distractors_are_made_by_content_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REVSEARCH_CACHE", str(tmp_path))
    sources = [_jpeg(n) for n in range(3)]
    paths = copy_distractors.make(sources, 7, log=lambda *_: None)
    assert len(paths) == 7 and all(p.is_file() for p in paths)
    first = [p.read_bytes() for p in paths]
    # The same sources in another order give the same distractors (by content, not by position).
    again = copy_distractors.make(list(reversed(sources)), 7, log=lambda *_: None)
    assert [p.read_bytes() for p in again] == first
    assert len({hashlib.sha256(b).hexdigest() for b in first}) == 7  # none repeats
    assert copy_distractors.distractor(sources[0], 4) == copy_distractors.distractor(sources[0], 4)


def test_the_distractor_half_is_disjoint_from_the_gallery_half_by_content():
    digests = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(400)]
    half = sum(copy_distractors.in_distractor_half(d) for d in digests)
    assert 0.4 < half / len(digests) < 0.6


@pytest.mark.parametrize("flags", [["--copy-distractors", "-3"], ["--copy-sizes", "three"]])
def test_eval_copies_refuses_bad_distractor_settings_before_calling_the_server(flags, capsys):
    from revsearch import cli

    assert cli.main(["--server", "127.0.0.1:9", "eval", "--copies", "photos", *flags]) == 2
    assert "--copy-" in capsys.readouterr().err
