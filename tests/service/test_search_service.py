"""Every RPC through an in-process server (port 0) with ONNX Runtime and Milvus Lite.

These tests assert on the contract: results, ids, scores and status codes for good and bad input.
"""

from __future__ import annotations

import grpc
import pytest
from PIL import Image
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from revsearch import SearchClient
from revsearch.client import AsyncSearchClient, ImageInput
from revsearch.errors import (AlreadyExistsError, InvalidArgumentError, NotFoundError, ResourceExhaustedError)
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from tests.helpers import ServerThread, base_settings, encode, synthetic_image

MAX_PIXELS = 2_000_000
MAX_IMAGE_BYTES = 3_000_000
MAX_MESSAGE = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = base_settings(tmp_path_factory.mktemp("service"), max_image_pixels=MAX_PIXELS,
                             max_image_bytes=MAX_IMAGE_BYTES, max_receive_message_bytes=MAX_MESSAGE, max_top_k=100)
    with ServerThread(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    return [encode(synthetic_image(seed), "JPEG", quality=90) for seed in range(12)]


@pytest.fixture(scope="module")
def photos(client, images):
    client.create_collection("photos")
    results = list(client.index_images("photos", [ImageInput(image=b, uri=f"mem://{i}", metadata={"n": i})
                                                  for i, b in enumerate(images)]))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(images)
    return results


def test_server_info_names_the_backend_the_models_and_the_limits(client):
    info = client.info()
    assert info.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL
    assert info.default_model == "resnet50"
    models = {m.name: (m.dimension, m.trained, m.precision) for m in info.models}
    assert models == {"resnet50": (2048, False, "fp32"), "face_dlib": (128, True, "fp32"),
                      "resnet50_int8": (2048, False, "int8"), "face_dlib_int8": (128, True, "int8"),
                      "efficientnet_lite0": (1280, True, "fp32"), "efficientnet_lite0_int8": (1280, True, "int8")}
    assert info.default_model_reason == "--default-model resnet50"
    assert info.limits.max_image_pixels == MAX_PIXELS and info.limits.max_top_k == 100
    assert info.vector_store.startswith("milvus-lite:")


def test_health_reports_serving_and_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert "revsearch.v1.SearchService" in names and "grpc.health.v1.Health" in names


def test_each_image_finds_itself_first_with_cosine_one(client, photos, images):
    for i in (0, 5, 11):
        resp = client.search("photos", image=images[i], top_k=3)
        assert resp.hits[0].id == photos[i].id and resp.hits[0].uri == f"mem://{i}"
        assert resp.hits[0].score >= 0.99 and resp.hits[0].rank == 1
        assert resp.hits[0].metadata["n"] == i
        assert resp.hits[0].score >= resp.hits[1].score >= resp.hits[2].score
        assert resp.model_trained is False and resp.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL


def test_top_k_defaults_to_twenty_capped_by_the_collection_size(client, photos):
    assert len(client.search("photos", item_id=photos[0].id).hits) == len(photos)


def test_search_by_stored_id_and_by_vector_agree(client, photos, images):
    vector = client.embed(images[4]).vector
    by_vector = client.search("photos", vector=vector, top_k=5)
    by_id = client.search("photos", item_id=photos[4].id, top_k=5)
    assert [h.id for h in by_vector.hits] == [h.id for h in by_id.hits]
    assert by_vector.hits[0].id == photos[4].id


def test_embed_returns_a_unit_vector_of_the_model_dimension(client, images):
    resp = client.embed(images[0])
    assert len(resp.vector) == 2048 and resp.model == "resnet50"
    assert abs(sum(v * v for v in resp.vector) - 1.0) < 1e-4


def test_reindexing_the_same_bytes_is_a_duplicate_and_adds_nothing(client, photos, images):
    before = client.describe_collection("photos").item_count
    again = list(client.index_images("photos", [ImageInput(image=images[2], uri="other-uri")]))
    assert again[0].status == pb.ITEM_STATUS_DUPLICATE and again[0].id == photos[2].id
    assert client.describe_collection("photos").item_count == before


def test_a_client_id_used_for_other_bytes_fails_only_that_item(client, photos):
    results = list(client.index_images("photos", [
        ImageInput(image=encode(synthetic_image(100)), id=photos[0].id),
        ImageInput(image=encode(synthetic_image(101)), id="custom-101"),
    ]))
    assert results[0].status == pb.ITEM_STATUS_FAILED and results[0].error.code_name == "ALREADY_EXISTS"
    assert results[1].status == pb.ITEM_STATUS_INDEXED and results[1].id == "custom-101"
    client.delete("photos", ["custom-101"])


def test_bad_items_in_a_stream_fail_alone_and_leave_nothing_behind(client):
    client.create_collection("mixed")
    good = encode(synthetic_image(200))
    truncated = encode(synthetic_image(201))[:3000]
    too_many_pixels = encode(Image.new("RGB", (2000, 1500), (9, 99, 199)), "PNG")  # small file, 3 Mpx
    too_many_bytes = b"\xff\xd8" + b"\0" * (MAX_IMAGE_BYTES + 10)
    items = [ImageInput(image=good, uri="good"), ImageInput(image=b"not an image at all", uri="text"),
             ImageInput(image=truncated, uri="truncated"), ImageInput(image=b"", uri="empty"),
             ImageInput(image=too_many_pixels, uri="pixels"), ImageInput(image=too_many_bytes, uri="bytes"),
             ImageInput(image=good, uri="bad id", id="no spaces allowed")]
    results = list(client.index_images("mixed", items))
    codes = [(r.uri, r.error.code_name or pb.ItemStatus.Name(r.status)) for r in results]
    assert codes == [("good", "ITEM_STATUS_INDEXED"), ("text", "INVALID_ARGUMENT"),
                     ("truncated", "INVALID_ARGUMENT"), ("empty", "INVALID_ARGUMENT"),
                     ("pixels", "RESOURCE_EXHAUSTED"), ("bytes", "RESOURCE_EXHAUSTED"),
                     ("bad id", "INVALID_ARGUMENT")]
    assert [r.item_index for r in results] == list(range(len(items)))
    assert "2000000 pixels" in results[4].error.message and "empty" in results[3].error.message
    assert client.describe_collection("mixed").item_count == 1
    client.drop_collection("mixed")


def test_a_message_over_the_size_limit_is_resource_exhausted_and_the_server_keeps_serving(client, photos):
    with pytest.raises(ResourceExhaustedError):
        client.search("photos", image=b"\xff" * (MAX_MESSAGE + 1024))
    assert client.search("photos", item_id=photos[0].id, top_k=1).hits[0].id == photos[0].id


def test_search_input_errors_have_their_codes(client, photos, images):
    cases = [
        (lambda: client.search("nope", image=images[0]), NotFoundError, "does not exist"),
        (lambda: client.search("photos", image=images[0], top_k=0), InvalidArgumentError, "top_k"),
        (lambda: client.search("photos", image=images[0], top_k=101), InvalidArgumentError, "between 1 and 100"),
        (lambda: client.search("photos", vector=[0.1] * 10), InvalidArgumentError, "has 10 values"),
        (lambda: client.search("photos", item_id="missing"), NotFoundError, "no item"),
        (lambda: client.search("photos", image=b"junk"), InvalidArgumentError, "not an image"),
        (lambda: client.search("photos"), InvalidArgumentError, "query is required"),
        (lambda: client.search("bad-name", image=images[0]), InvalidArgumentError, "invalid collection name"),
    ]
    for call, error, text in cases:
        with pytest.raises(error, match=text):
            call()


def test_collections_can_be_created_listed_described_and_dropped(client):
    created = client.create_collection("temp_c", description="scratch")
    assert created.created and created.collection.dimension == 2048 and created.collection.metric == "COSINE"
    assert client.create_collection("temp_c", exist_ok=True).created is False
    with pytest.raises(AlreadyExistsError):
        client.create_collection("temp_c")
    with pytest.raises(AlreadyExistsError):
        client.create_collection("temp_c", index_backend="exact_knn", exist_ok=True)
    assert "temp_c" in [c.name for c in client.list_collections()]
    assert client.describe_collection("temp_c").description == "scratch"
    client.drop_collection("temp_c")
    with pytest.raises(NotFoundError):
        client.describe_collection("temp_c")
    with pytest.raises(NotFoundError):
        client.drop_collection("temp_c")


def test_collection_settings_are_validated(client):
    with pytest.raises(InvalidArgumentError, match="unknown model"):
        client.create_collection("x1", model="vgg16")
    with grpc.insecure_channel(client.target) as channel:  # an enum value this server does not know
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SearchServiceStub(channel).CreateCollection(pb.CreateCollectionRequest(name="x2", crop_mode=42),
                                                                timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "crop_mode" in info.value.details()
    with pytest.raises(InvalidArgumentError, match="aligned face crops"):
        client.create_collection("x3", model="face_dlib")
    with pytest.raises(InvalidArgumentError, match="invalid collection name"):
        client.create_collection("9lives")


def test_delete_reports_missing_ids_and_deleted_items_are_no_longer_found(client, images):
    client.create_collection("deletes")
    [item] = list(client.index_images("deletes", [ImageInput(image=images[7])]))
    resp = client.delete("deletes", [item.id, "never-there"])
    assert list(resp.deleted_ids) == [item.id] and list(resp.not_found_ids) == ["never-there"]
    assert client.search("deletes", image=images[7]).hits == []
    with pytest.raises(InvalidArgumentError):
        client.delete("deletes", [])
    with pytest.raises(NotFoundError):
        client.delete("no_such_collection", ["x"])
    client.drop_collection("deletes")


def test_an_index_stream_to_an_unknown_collection_ends_with_not_found(client, images):
    with pytest.raises(NotFoundError):
        list(client.index_images("ghost", [ImageInput(image=images[0])]))


def test_an_index_stream_without_a_collection_is_invalid(server, images):
    with grpc.insecure_channel(server.address) as channel:
        stub = __import__("revsearch.v1.search_service_pb2_grpc", fromlist=["x"]).SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.IndexImages(iter([pb.IndexImagesRequest(item=pb.ImageItem(image=images[0]))]), timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_exact_knn_collections_return_the_same_ranking_as_milvus(client, photos, images):
    client.create_collection("knn", index_backend="exact_knn")
    list(client.index_images("knn", [ImageInput(image=b, uri=f"mem://{i}") for i, b in enumerate(images)]))
    for i in (1, 6):
        milvus = client.search("photos", image=images[i], top_k=5).hits
        knn = client.search("knn", image=images[i], top_k=5).hits
        assert [h.id for h in knn][0] == [h.id for h in milvus][0] == photos[i].id
        assert [round(h.score, 4) for h in knn] == [round(h.score, 4) for h in milvus]
    client.drop_collection("knn")


def test_the_async_client_indexes_and_searches(server, images):
    import asyncio

    async def main():
        async with AsyncSearchClient(server.address) as c:
            await c.create_collection("async_c", exist_ok=True)
            results = [r async for r in c.index_images("async_c", [ImageInput(image=images[9])])]
            hits = (await c.search("async_c", image=images[9], top_k=1)).hits
            await c.drop_collection("async_c")
            return results, hits

    results, hits = asyncio.run(main())
    assert results[0].status == pb.ITEM_STATUS_INDEXED and hits[0].id == results[0].id


def test_a_batch_search_answers_every_query_in_order_and_a_bad_query_fails_alone(client, photos, images):
    vector = client.embed(images[7]).vector
    queries = [images[3], b"not an image", list(vector), {"item_id": photos[9].id}, {"item_id": "never_stored"},
               [0.0] * 2048, images[11]]
    resp = client.batch_search("photos", queries, top_k=3)
    assert len(resp.results) == len(queries) and resp.model == "resnet50" and resp.model_trained is False
    ok = {0: photos[3].id, 2: photos[7].id, 3: photos[9].id, 6: photos[11].id}
    for i, expected in ok.items():
        assert not resp.results[i].HasField("error") and resp.results[i].hits[0].id == expected, i
        assert len(resp.results[i].hits) == 3
    single = client.search("photos", image=images[3], top_k=3)
    assert [h.id for h in resp.results[0].hits] == [h.id for h in single.hits]
    assert [h.score for h in resp.results[0].hits] == pytest.approx([h.score for h in single.hits], abs=1e-5)
    errors = {i: resp.results[i].error for i in (1, 4, 5)}
    assert errors[1].code_name == "INVALID_ARGUMENT" and "not an image" in errors[1].message
    assert errors[4].code_name == "NOT_FOUND" and not resp.results[4].hits
    assert errors[5].code_name == "INVALID_ARGUMENT" and "all zeros" in errors[5].message
    assert resp.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL


def test_a_batch_search_with_no_or_too_many_queries_is_invalid(client, photos, images):
    with pytest.raises(InvalidArgumentError, match="empty"):
        client.batch_search("photos", [])
    with pytest.raises(InvalidArgumentError, match="at most 64"):
        client.batch_search("photos", [{"item_id": photos[0].id}] * 65)
    with pytest.raises(NotFoundError):
        client.batch_search("no_such_collection", [images[0]])
