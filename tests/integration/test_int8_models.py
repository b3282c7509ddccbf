"""The INT8 models (resnet50_int8, face_dlib_int8) served like the fp32 ones: through the managed
CPU Triton and through the local ONNX Runtime fallback, listed with their precision, bound to a
collection, finding the right LFW person, and close to their fp32 model's embeddings."""

from __future__ import annotations

import time

import numpy as np
import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import LFW, ROOT, ServerThread, base_settings, lfw_images

pytestmark = pytest.mark.integration
PEOPLE = ["Vladimir_Putin", "Venus_Williams", "Tony_Blair"]
BACKENDS = {"triton": pb.INFERENCE_BACKEND_TRITON, "local": pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL}


@pytest.fixture(scope="module", params=["triton", "local"])
def client(request, tmp_path_factory):
    for name in ("resnet50_int8", "face_dlib_int8"):
        if not (ROOT / "model_repository" / name / "build_info.json").exists():
            pytest.fail(f"{name} is not built: run python scripts/build_models.py --allow-untrained")
    triton_url = "" if request.param == "triton" else "off"  # "": the managed Triton
    with ServerThread(base_settings(tmp_path_factory.mktemp(f"int8_{request.param}"), triton_url=triton_url)) as srv:
        with SearchClient(srv.address, timeout=120) as c:
            c.backend = BACKENDS[request.param]
            yield c


def _on_expected_backend(client) -> None:
    # A heavily loaded machine can make a Triton call time out; the server then answers from the
    # fallback until its re-probe. Wait for Triton (that path has its own test elsewhere).
    deadline = time.time() + 60
    while client.info().inference_backend != client.backend and time.time() < deadline:
        time.sleep(1)


def test_server_info_lists_the_int8_models_with_their_precision(client):
    info = client.info()
    assert info.inference_backend == client.backend
    models = {m.name: m for m in info.models}
    assert {name: models[name].precision for name in ("resnet50", "face_dlib", "resnet50_int8", "face_dlib_int8")} \
        == {"resnet50": "fp32", "face_dlib": "fp32", "resnet50_int8": "int8", "face_dlib_int8": "int8"}
    for name in ("resnet50", "face_dlib"):
        fp32, int8 = models[name], models[f"{name}_int8"]
        assert (int8.dimension, int8.input_size, int8.trained) == (fp32.dimension, fp32.input_size, fp32.trained)


def test_a_face_collection_with_face_dlib_int8_finds_the_right_person(client):
    client.create_collection("faces_int8", model="face_dlib_int8", crop_mode="largest")
    assert client.describe_collection("faces_int8").model == "face_dlib_int8"
    items = [ImageInput.from_path(p, metadata={"person": person})
             for person in PEOPLE for p in sorted((LFW / person).glob("*.jpg"))[:4]]
    results = list(client.index_images("faces_int8", items))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(items)
    _on_expected_backend(client)
    for person in PEOPLE:
        query = sorted((LFW / person).glob("*.jpg"))[5].read_bytes()
        resp = client.search("faces_int8", image=query, top_k=4)
        assert resp.inference_backend == client.backend
        assert [h.metadata["person"] for h in resp.hits] == [person] * 4


def test_int8_embeddings_are_close_to_fp32(client):
    for model in ("face_dlib", "face_dlib_int8"):
        client.create_collection(f"cos_{model}", model=model, crop_mode="largest", exist_ok=True)
    _on_expected_backend(client)
    images = [p.read_bytes() for p in lfw_images(6)]
    for data in images:
        fp32 = np.asarray(client.embed(data, model="resnet50").vector)
        resp = client.embed(data, model="resnet50_int8")
        assert resp.model == "resnet50_int8" and resp.inference_backend == client.backend
        assert float(fp32 @ np.asarray(resp.vector)) > 0.95
        face_fp32 = np.asarray(client.embed(data, collection="cos_face_dlib").vector)
        face_int8 = client.embed(data, collection="cos_face_dlib_int8")
        assert face_int8.model == "face_dlib_int8"
        assert float(face_fp32 @ np.asarray(face_int8.vector)) > 0.95
