"""ImportVectors and the vector-index settings through an in-process server (Milvus Lite, the fake
inference backend): imported items are found by vector, a bad item fails alone with its position, a
re-run stores only what is missing, a cut-off import keeps what was stored, and Lite says it builds
FLAT only."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from revsearch.client import VectorInput
from revsearch.errors import InvalidArgumentError, NotFoundError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def target(fake_client):
    c = fake_client.create_collection("imported", exist_ok=True).collection
    return c


def test_imported_vectors_are_found_by_vector_and_counted_as_imported(fake_client, target):
    vectors = _vectors(300, target.dimension)
    items = [VectorInput(id=f"v{i}", vector=v, uri=f"archive://{i}", metadata={"n": i}) for i, v in enumerate(vectors)]
    resp = fake_client.import_vectors("imported", items, model=target.model, model_version=target.model_version,
                                      per_message=128)
    assert (resp.received, resp.imported, resp.existing, resp.failed) == (300, 300, 0, 0)
    for i in (0, 151, 299):
        hit = fake_client.search("imported", vector=vectors[i], top_k=1).hits[0]
        assert hit.id == f"v{i}" and hit.uri == f"archive://{i}" and hit.score > 0.999
        assert dict(hit.metadata) == {"n": i}
    described = fake_client.describe_collection("imported")
    assert described.item_count == 300 and described.imported_item_count == 300


def test_running_the_same_import_again_stores_nothing_twice(fake_client, target):
    vectors = _vectors(300, target.dimension)
    items = [VectorInput(id=f"v{i}", vector=v) for i, v in enumerate(vectors)]
    resp = fake_client.import_vectors("imported", items + [VectorInput(id="extra", vector=vectors[0] + 1)],
                                      model=target.model, model_version=target.model_version)
    assert (resp.imported, resp.existing, resp.failed) == (1, 300, 0)
    assert fake_client.describe_collection("imported").item_count == 301


def test_each_bad_item_fails_alone_with_its_position_and_code(fake_client, target):
    dim = target.dimension
    good = _vectors(3, dim, seed=5)
    nan, inf = good[1].copy(), good[2].copy()
    nan[3], inf[0] = np.nan, np.inf
    items = [VectorInput(id="ok1", vector=good[0]),
             VectorInput(id="short", vector=good[0][:-1]),
             VectorInput(id="nan", vector=nan),
             VectorInput(id="inf", vector=inf),
             VectorInput(id="zeros", vector=np.zeros(dim, np.float32)),
             VectorInput(id="", vector=good[1]),
             VectorInput(id="bad id!", vector=good[1]),
             VectorInput(id="ok1", vector=good[2]),  # repeated within this import
             VectorInput(id="ok2", vector=good[2])]
    resp = fake_client.import_vectors("imported", items, model=target.model, model_version=target.model_version,
                                      per_message=4)
    assert (resp.received, resp.imported, resp.failed) == (9, 2, 7)
    failures = {f.item_index: (f.id, f.error.code_name, f.error.message) for f in resp.failures}
    assert sorted(failures) == [1, 2, 3, 4, 5, 6, 7]
    assert failures[1][1] == "INVALID_ARGUMENT" and f"{dim - 1} values" in failures[1][2] and str(dim) in failures[1][2]
    assert failures[2][1] == failures[3][1] == "INVALID_ARGUMENT" and "NaN or infinite" in failures[2][2]
    assert "all zeros" in failures[4][2] and "no id" in failures[5][2]
    assert failures[6][1] == "INVALID_ARGUMENT"
    assert failures[7][:2] == ("ok1", "ALREADY_EXISTS") and "twice" in failures[7][2]
    assert fake_client.search("imported", vector=good[2], top_k=1).hits[0].id == "ok2"
    assert fake_client.search("imported", vector=good[0], top_k=1).hits[0].id == "ok1"


def test_a_model_or_version_that_is_not_the_collections_ends_the_import_before_anything_is_stored(fake_client, target):
    before = fake_client.describe_collection("imported").item_count
    items = [VectorInput(id="x1", vector=_vectors(1, target.dimension)[0])]
    with pytest.raises(InvalidArgumentError, match="version 999"):
        fake_client.import_vectors("imported", items, model=target.model, model_version="999")
    with pytest.raises(InvalidArgumentError, match="efficientnet_lite0|another model"):
        fake_client.import_vectors("imported", items, model="efficientnet_lite0" if target.model != "efficientnet_lite0"
                                   else "resnet50", model_version=target.model_version)
    with pytest.raises(NotFoundError):
        fake_client.import_vectors("no_such_collection", items, model=target.model, model_version="1")
    assert fake_client.describe_collection("imported").item_count == before


def test_a_stream_without_a_header_first_or_with_a_second_header_is_invalid(fake_server, target):
    with grpc.insecure_channel(fake_server.address) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        item = pb.VectorItem(id="h1", vector=pb.Vector(values=[1.0] * target.dimension))
        with pytest.raises(grpc.RpcError) as no_header:
            stub.ImportVectors(iter([pb.ImportVectorsRequest(items=[item])]), timeout=30)
        assert no_header.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in no_header.value.details()
        header = pb.ImportVectorsHeader(collection="imported", model=target.model, model_version=target.model_version)
        with pytest.raises(grpc.RpcError) as twice:
            stub.ImportVectors(iter([pb.ImportVectorsRequest(header=header, items=[item]),
                                     pb.ImportVectorsRequest(header=header)]), timeout=30)
        assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "only the first" in twice.value.details()
        tiny = pb.VectorItem(id="t", vector=pb.Vector(values=[1.0]))  # the count is checked before the vectors
        too_many = pb.ImportVectorsRequest(header=header, items=[tiny] * 10_001)
        with pytest.raises(grpc.RpcError) as big:
            stub.ImportVectors(iter([too_many]), timeout=30)
        assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "10000 per message" in big.value.details()


def test_an_import_cut_off_mid_stream_keeps_what_was_stored_and_a_rerun_finishes_it(fake_client, fake_server):
    c = fake_client.create_collection("cutoff", exist_ok=True).collection
    vectors = _vectors(900, c.dimension, seed=9)
    sent_three = threading.Event()
    hold = threading.Event()
    header = pb.ImportVectorsHeader(collection="cutoff", model=c.model, model_version=c.model_version)

    def messages():
        for m in range(3):
            yield pb.ImportVectorsRequest(header=header if m == 0 else None, items=[
                VectorInput(id=f"c{i}", vector=vectors[i]).to_pb() for i in range(m * 100, m * 100 + 100)])
        sent_three.set()
        hold.wait(30)  # the client "dies" here: the call is cancelled below

    with grpc.insecure_channel(fake_server.address) as channel:
        future = pb_grpc.SearchServiceStub(channel).ImportVectors.future(messages(), timeout=60)
        assert sent_three.wait(30)
        deadline = time.time() + 30
        while fake_client.describe_collection("cutoff").item_count < 300 and time.time() < deadline:
            time.sleep(0.1)
        future.cancel()
        hold.set()
    assert fake_client.describe_collection("cutoff").item_count == 300
    resp = fake_client.import_vectors("cutoff", [VectorInput(id=f"c{i}", vector=v) for i, v in enumerate(vectors)],
                                      model=c.model, model_version=c.model_version)
    assert (resp.imported, resp.existing, resp.failed) == (600, 300, 0)
    assert fake_client.describe_collection("cutoff").item_count == 900


def test_video_collections_do_not_take_imports(fake_client):
    c = fake_client.create_collection("imported_videos", media_type="video", exist_ok=True).collection
    with pytest.raises(InvalidArgumentError, match="holds videos"):
        fake_client.import_vectors("imported_videos", [VectorInput(id="a", vector=[1.0] * c.dimension)],
                                   model=c.model, model_version=c.model_version)


def test_an_exact_knn_collection_takes_imports_too(fake_client):
    c = fake_client.create_collection("imported_knn", index_backend="exact_knn", exist_ok=True).collection
    vectors = _vectors(50, c.dimension, seed=3)
    resp = fake_client.import_vectors("imported_knn", [VectorInput(id=f"k{i}", vector=v) for i, v in enumerate(vectors)],
                                      model=c.model, model_version=c.model_version)
    assert resp.imported == 50
    assert fake_client.search("imported_knn", vector=vectors[7], top_k=1).hits[0].id == "k7"
    described = fake_client.describe_collection("imported_knn")
    assert described.imported_item_count == 50 and "exact KNN" in described.vector_index_detail


def test_milvus_lite_builds_flat_only_and_says_so(fake_client):
    info = fake_client.info()
    assert list(info.vector_index_types) == [pb.VECTOR_INDEX_TYPE_FLAT]
    assert info.default_vector_index == pb.VECTOR_INDEX_TYPE_FLAT
    assert info.limits.max_import_items_per_message == 10_000
    with pytest.raises(InvalidArgumentError, match="HNSW is not supported by milvus-lite.*supports FLAT"):
        fake_client.create_collection("hnsw_on_lite", vector_index={"type": "hnsw"})
    with pytest.raises(InvalidArgumentError, match="does not apply to a FLAT index"):
        fake_client.create_collection("flat_with_m", vector_index={"type": "flat", "hnsw_m": 8})
    with pytest.raises(InvalidArgumentError, match="not supported by the exact-KNN backend"):
        fake_client.create_collection("knn_ivf", index_backend="exact_knn", vector_index={"type": "ivf_flat"})
    flat = fake_client.create_collection("flat_asked", vector_index={"type": "flat"}).collection
    assert flat.vector_index.type == pb.VECTOR_INDEX_TYPE_FLAT and flat.vector_index_detail.startswith("FLAT")
    assert [c.name for c in fake_client.list_collections()].count("hnsw_on_lite") == 0


def test_a_search_breadth_is_ignored_by_exact_indexes(fake_client, target):
    vectors = _vectors(300, target.dimension)
    vector = vectors[42]
    # The import of the first test again (it stores nothing twice), so that this test also runs alone.
    fake_client.import_vectors("imported", [VectorInput(id=f"v{i}", vector=v, uri=f"archive://{i}", metadata={"n": i})
                                            for i, v in enumerate(vectors)],
                               model=target.model, model_version=target.model_version, per_message=128)
    assert fake_client.search("imported", vector=vector, top_k=1, search_breadth=7).hits[0].id == "v42"
    batch = fake_client.batch_search("imported", [vector], top_k=1, search_breadth=3)
    assert batch.results[0].hits[0].id == "v42"
