"""A copy-detection collection of the first kind (before one forward pass) keeps working.

The collection is written here with pymilvus as that release wrote it: settings without
`copy_vectors`, 1280-d float32 vectors of efficientnet_lite0 for the whole image (the collection's
rows, with format-1 local features: base64 of 300 ORB keypoints) and one model run per quadrant (the
views index, full rows), into a real Milvus Lite file; then the current server (in-process ONNX
Runtime, the real model) describes it, finds an edited copy's original, indexes into it the old way
and deletes from it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pymilvus import MilvusClient

from revsearch.client import ImageInput
from revsearch.copy_edits import edited_bytes
from revsearch.v1 import search_service_pb2 as pb
from revsearch_server import copies
from revsearch_server.models import BUILD_INFO, ModelSpec
from tests.helpers import write_old_collection

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model_repository" / "efficientnet_lite0"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
DIM = 1280

pytestmark = pytest.mark.skipif(not (MODEL_DIR / BUILD_INFO).is_file() or not PHOTOS.is_dir(),
                                reason="efficientnet_lite0 is not built (make models) or ../shared/data is missing")


def _spec() -> str:
    return json.dumps({"revsearch_collection": 1, "name": "firstcopies", "model": "efficientnet_lite0",
                       "model_version": "1", "dimension": DIM, "crop_mode": "none", "index_kind": "milvus",
                       "created_at_ms": 1, "description": "written by the first copy-detection release",
                       "model_trained": True,
                       "face_options": {"margin": 0.2, "min_face_size": 20, "min_confidence": 0.9,
                                        "whole_image_if_no_face": False, "max_faces": 16},
                       "media_type": "image", "video_sampling": {"frames": 5, "mode": "uniform", "seed": 0},
                       "layout": 3, "copy_detection": True, "copy_views": 4})


def _first_kind_rows(photos: list[Path]) -> tuple[list[dict], list[dict], dict[Path, str]]:
    """The rows and views rows as the first release wrote them: one model run per view."""
    import onnxruntime as ort

    spec = ModelSpec.from_build_info(MODEL_DIR)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])

    def embed(img: Image.Image) -> list[float]:
        pixels = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), np.uint8)[None]
        v = session.run(["embeddings"], {"images": pixels})[0][0]
        return (v / np.linalg.norm(v)).tolist()

    rows, views, ids = [], [], {}
    for p in photos:
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        item = digest[:32]
        ids[p] = item
        img = Image.open(io.BytesIO(data)).convert("RGB")
        fields = {"uri": str(p), "sha256": digest, "model": "efficientnet_lite0", "model_version": "1",
                  "created_at_ms": 1, "metadata": {"from": "first release"}, "face_box": {}, "face_count": 0,
                  "timestamp_s": -1.0}
        features = copies.extract(copies.feature_image(img), 300).encode_v1()
        rows.append({"id": item, "vector": embed(img), **fields, "local_features": features})
        w, h = img.size
        for k, (x0, y0, x1, y1) in enumerate(copies.VIEWS, start=1):
            crop = img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
            views.append({"id": f"{item}~{k}", "vector": embed(crop), **fields, "local_features": ""})
    return rows, views, ids


@pytest.fixture(scope="module")
def first(start_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("first_copy_layout")
    photos = sorted(PHOTOS.glob("*.jpg"))[::10][:16]
    rows, views, ids = _first_kind_rows(photos)
    client = MilvusClient(str(data / "milvus.db"))
    write_old_collection(client, "firstcopies__views", "crop vectors of images in firstcopies", DIM, 3, views)
    write_old_collection(client, "firstcopies", _spec(), DIM, 3, rows)
    client.close()
    server = start_server(triton_url="off", default_model="auto", data_dir=data)
    from revsearch import SearchClient

    with SearchClient(server.address, timeout=120) as c:
        yield c, photos, ids


def test_it_says_it_is_of_the_first_layout(first):
    client, photos, _ = first
    described = client.describe_collection("firstcopies")
    assert described.item_count == len(photos) and described.dimension == DIM
    assert described.copy_detection and "first layout" in described.copy_detection_detail


@pytest.mark.parametrize("edit", ["crop50", "rotate"])
def test_it_finds_the_original_of_an_edited_copy_with_its_format_1_features(first, edit):
    client, photos, ids = first
    found = verified = 0
    for p in photos[:6]:
        hit = client.search("firstcopies", image=edited_bytes(p.read_bytes(), edit), top_k=3).hits[0]
        found += hit.id == ids[p]
        verified += hit.id == ids[p] and hit.matched_keypoints >= copies.MIN_INLIERS
    assert found >= 5 and verified >= 4, (edit, found, verified)


def test_new_images_are_indexed_the_first_way_and_deleted_with_their_views(first):
    client, photos, _ = first
    extra = sorted(PHOTOS.glob("*.jpg"))[5]
    [result] = list(client.index_images("firstcopies", [ImageInput.from_path(extra, id="added")]))
    assert result.status == pb.ITEM_STATUS_INDEXED
    # Its vectors are 1280-d model runs like the others': a crop of it finds it.
    hits = client.search("firstcopies", image=edited_bytes(extra.read_bytes(), "crop50"), top_k=3).hits
    assert hits[0].id == "added" and hits[0].uri == str(extra)
    assert list(client.delete("firstcopies", ["added"]).deleted_ids) == ["added"]
    assert client.describe_collection("firstcopies").item_count == len(photos)
    hits = client.search("firstcopies", image=edited_bytes(extra.read_bytes(), "crop50"), top_k=3).hits
    assert all(h.id != "added" for h in hits)
