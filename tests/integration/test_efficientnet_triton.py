"""efficientnet_lite0 (ImageNet weights from the package registry) through the managed CPU Triton:
served, marked trained, the default model under --default-model auto when resnet50 has no weights,
and a copy-detection collection of it finds the original of a cropped copy."""

from __future__ import annotations

import json

import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.copy_edits import edited_bytes
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import ROOT, ServerThread, base_settings

pytestmark = pytest.mark.integration
MODEL_DIR = ROOT / "model_repository" / "efficientnet_lite0"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    if not (MODEL_DIR / "build_info.json").is_file():
        pytest.skip("efficientnet_lite0 is not built (make models)")
    settings = base_settings(tmp_path_factory.mktemp("effnet"), triton_url="", default_model="auto")
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=120) as c:
        yield c


def test_served_by_triton_and_marked_trained(client):
    info = client.info()
    assert info.inference_backend == pb.INFERENCE_BACKEND_TRITON
    model = {m.name: m for m in info.models}["efficientnet_lite0"]
    assert model.trained and model.dimension == 1280 and model.input_size == 224
    record = json.loads((MODEL_DIR / "build_info.json").read_text())
    assert model.weights_sha256 == record["weights_sha256"] == \
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    assert record["classifier_check"]["checked"] and 819 in record["classifier_check"]["stage_frame_top3"]
    resnet = json.loads((ROOT / "model_repository" / "resnet50" / "build_info.json").read_text())
    if not resnet["trained"]:  # auto picks resnet50 only when it has real weights
        assert info.default_model == "efficientnet_lite0" and info.default_model_reason.startswith("auto:")


def test_a_cropped_copy_finds_its_original_through_triton(client):
    photos = sorted(PHOTOS.glob("*.jpg"))[:12]
    client.create_collection("effnet_copies", model="efficientnet_lite0")
    ids = [r.id for r in client.index_images("effnet_copies", (ImageInput.from_path(p) for p in photos))]
    resp = client.search("effnet_copies", image=edited_bytes(photos[3].read_bytes(), "crop50"), top_k=3)
    assert resp.hits[0].id == ids[3] and resp.inference_backend == pb.INFERENCE_BACKEND_TRITON
