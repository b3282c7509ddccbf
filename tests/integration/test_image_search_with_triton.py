"""End to end through the managed CPU Triton and Milvus Lite, on a few hundred LFW images.

Every image must find itself first; the exact-KNN baseline and Milvus must agree; Triton and the
local ONNX Runtime fallback must give the same embedding; duplicates are not re-added; bad items
fail alone; and when Triton dies the server falls back to local inference and keeps answering.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.v1 import search_service_pb2 as pb
from revsearch_server.embedding.local_onnx import make_session
from revsearch_server.imaging import ImageLimits, preprocess
from revsearch_server.models import load_models
from tests.helpers import ServerThread, base_settings, lfw_images

pytestmark = pytest.mark.integration
N_IMAGES = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("triton"), triton_url="")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def files():
    return lfw_images(N_IMAGES)


@pytest.fixture(scope="module")
def indexed(client, files):
    """The same images in a Milvus collection and an exact-KNN collection."""
    assert client.info().inference_backend == pb.INFERENCE_BACKEND_TRITON
    out = {}
    for name, backend in (("lfw", "milvus"), ("lfw_knn", "exact_knn")):
        client.create_collection(name, index_backend=backend)
        results = list(client.index_images(name, [ImageInput.from_path(f) for f in files]))
        assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(files), name
        out[name] = results
    assert client.describe_collection("lfw").item_count == len(files)
    return out


def test_every_indexed_image_finds_itself_at_rank_one(client, files, indexed):
    def top(path):
        return client.search("lfw", image=path.read_bytes(), top_k=5).hits

    with ThreadPoolExecutor(4) as pool:
        all_hits = list(pool.map(top, files))
    misses = [(str(f), h[0].uri, h[0].score) for f, h in zip(files, all_hits)
              if h[0].uri != str(f) or h[0].score < 0.99]
    assert not misses, f"{len(misses)} images did not find themselves first: {misses[:5]}"
    assert all(h[0].rank == 1 and h[0].score >= h[1].score for h in all_hits)


def test_exact_knn_and_milvus_return_the_same_top_k(client, indexed):
    for item in indexed["lfw"][::10]:
        milvus = client.search("lfw", item_id=item.id, top_k=20).hits
        knn = client.search("lfw_knn", item_id=item.id, top_k=20).hits
        assert milvus[0].id == knn[0].id == item.id
        np.testing.assert_allclose([h.score for h in milvus], [h.score for h in knn], atol=1e-5)
        # Ids must match wherever the scores are not tied within float error.
        for rank, (m, k) in enumerate(zip(milvus, knn)):
            if m.id != k.id:
                assert abs(m.score - k.score) < 1e-5, f"rank {rank + 1}: {m.id} {m.score} vs {k.id} {k.score}"


def test_triton_and_local_onnx_runtime_give_the_same_embedding(client, server, files):
    spec = load_models(server.settings.model_repository, allow_untrained=True)["resnet50"]
    session = make_session(spec.onnx_path)
    limits = ImageLimits(server.settings.max_image_bytes, server.settings.max_image_pixels)
    for path in files[:8]:
        via_triton = np.asarray(client.embed(path.read_bytes()).vector)
        local = session.run(None, {"images": preprocess(path.read_bytes(), limits)[None]})[0][0]
        cosine = float(via_triton @ local / np.linalg.norm(local))
        assert cosine >= 0.9999, f"{path}: cosine {cosine}"


def test_reindexing_the_same_images_adds_no_duplicates(client, files, indexed):
    results = list(client.index_images("lfw", [ImageInput.from_path(f) for f in files[:25]]))
    assert [r.status for r in results] == [pb.ITEM_STATUS_DUPLICATE] * 25
    assert [r.id for r in results] == [r.id for r in indexed["lfw"][:25]]
    assert client.describe_collection("lfw").item_count == len(files)


def test_bad_items_fail_alone_through_triton(client, files, indexed):
    data = files[0].read_bytes()
    results = list(client.index_images("lfw", [ImageInput(image=data[:len(data) // 3], uri="truncated"),
                                               ImageInput(image=b"GIF89a nonsense", uri="junk"),
                                               ImageInput.from_path(lfw_images(N_IMAGES + 1)[-1])]))
    assert [r.status for r in results] == [pb.ITEM_STATUS_FAILED, pb.ITEM_STATUS_FAILED, pb.ITEM_STATUS_INDEXED]
    assert {r.error.code_name for r in results[:2]} == {"INVALID_ARGUMENT"}
    assert client.describe_collection("lfw").item_count == len(files) + 1


def test_the_face_pipeline_through_triton_finds_the_person(client, server):
    from tests.helpers import LFW

    people = ["Vladimir_Putin", "Venus_Williams", "Tony_Blair"]
    client.create_collection("faces", model="face_dlib", crop_mode="largest")
    items = [ImageInput.from_path(p, metadata={"person": person})
             for person in people for p in sorted((LFW / person).glob("*.jpg"))[:4]]
    results = list(client.index_images("faces", items))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(items)
    # On a heavily loaded machine a Triton call can time out and the server falls back for up to
    # its 30 s re-probe interval; that path has its own test below. Here: the face model on Triton.
    deadline = time.time() + 60
    while client.info().inference_backend != pb.INFERENCE_BACKEND_TRITON and time.time() < deadline:
        time.sleep(1)
    for person in people:
        query = sorted((LFW / person).glob("*.jpg"))[5].read_bytes()
        resp = client.search("faces", image=query, top_k=4)
        assert resp.inference_backend == pb.INFERENCE_BACKEND_TRITON
        assert [h.metadata["person"] for h in resp.hits] == [person] * 4


def test_when_triton_dies_the_server_falls_back_to_local_inference(client, server, files, indexed):
    expected = np.asarray(client.embed(files[1].read_bytes()).vector)
    triton = server.server.deps.triton
    triton.process.send_signal(signal.SIGTERM)
    triton.process.wait(60)
    resp = client.embed(files[1].read_bytes())
    assert resp.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL
    assert float(np.asarray(resp.vector) @ expected) >= 0.9999
    info = client.info()
    assert info.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL and "fallback" in info.inference_detail
    assert client.search("lfw", image=files[1].read_bytes(), top_k=1).hits[0].uri == str(files[1])
