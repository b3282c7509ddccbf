"""Backpressure, deadlines, metrics and health through in-process servers.

Overload is refused fast with RESOURCE_EXHAUSTED and a retry hint; a client's deadline ends its
stream without leaving half-indexed items; the Prometheus endpoint counts what happened; the
health service follows the vector store.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import InvalidArgumentError, NotFoundError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from tests.helpers import ServerThread, base_settings, encode, free_port, synthetic_image

MAX_INFLIGHT = 2
CONCURRENT = 16


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the metrics endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = base_settings(tmp_path_factory.mktemp("overload"), max_inflight_images=MAX_INFLIGHT,
                             index_batch_size=2, health_interval_s=0.5)
    with ServerThread(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    return [encode(synthetic_image(seed, (640, 480)), "JPEG", quality=90) for seed in range(8)]


def test_the_server_reports_its_metrics_port_and_a_disabled_endpoint_has_none(server, tmp_path):
    assert server.server.metrics_port and server.server.metrics_port > 0
    with ServerThread(base_settings(tmp_path, metrics_port=-1)) as quiet:
        assert quiet.server.metrics_port is None


def test_overload_is_resource_exhausted_with_a_retry_hint_and_the_server_keeps_serving(server, client, images):
    barrier = threading.Barrier(CONCURRENT)

    def call(n: int):
        stub = pb_grpc.SearchServiceStub(channel)
        barrier.wait(timeout=30)
        try:
            stub.EmbedImage(pb.EmbedImageRequest(image=images[n % len(images)]), timeout=60)
            return "OK", None, ""
        except grpc.RpcError as exc:
            hint = dict(exc.trailing_metadata() or ()).get("retry-after-ms")
            return exc.code().name, hint, exc.details()

    with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(CONCURRENT) as pool:
        outcomes = list(pool.map(call, range(CONCURRENT), timeout=120))

    codes = [code for code, _, _ in outcomes]
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes.count("OK") >= 1 and codes.count("RESOURCE_EXHAUSTED") >= CONCURRENT // 2
    for code, hint, details in outcomes:
        if code == "RESOURCE_EXHAUSTED":
            assert hint is not None and 50 <= int(hint) <= 5000
            assert "overloaded" in details and f"retry after {hint} ms" in details
    # Afterwards: nothing stuck in flight, and a call is served normally.
    assert len(client.embed(images[0], timeout=30).vector) == 2048
    metrics = scrape(server.server.metrics_port)
    assert sample(metrics, "revsearch_inflight_images") == 0
    assert sample(metrics, "revsearch_rejected_total", rpc="EmbedImage") == codes.count("RESOURCE_EXHAUSTED")
    assert sample(metrics, "revsearch_requests_total", rpc="EmbedImage", code="RESOURCE_EXHAUSTED") == \
        codes.count("RESOURCE_EXHAUSTED")


def test_an_index_stream_waits_for_room_instead_of_failing(server, client, images):
    client.create_collection("patient", exist_ok=True)
    results = list(client.index_images("patient", [ImageInput(image=b, uri=f"mem://{i}")
                                                   for i, b in enumerate(images)], timeout=120))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(images)
    client.drop_collection("patient")


def test_metrics_count_requests_by_code_stages_batches_and_the_backend(server, client, images):
    client.create_collection("measured", exist_ok=True)
    indexed = list(client.index_images("measured", [ImageInput(image=b) for b in images[:4]] +
                                       [ImageInput(image=b"not an image")]))
    assert [r.status for r in indexed] == [pb.ITEM_STATUS_INDEXED] * 4 + [pb.ITEM_STATUS_FAILED]
    assert client.search("measured", image=images[1], top_k=2).hits[0].id == indexed[1].id
    with pytest.raises(InvalidArgumentError):
        client.search("measured", image=images[1], top_k=0)
    with pytest.raises(NotFoundError):
        client.search("no_such_collection", item_id="x")

    metrics = scrape(server.server.metrics_port)
    assert sample(metrics, "revsearch_requests_total", rpc="SearchImages", code="OK") >= 1
    assert sample(metrics, "revsearch_requests_total", rpc="SearchImages", code="INVALID_ARGUMENT") >= 1
    assert sample(metrics, "revsearch_requests_total", rpc="SearchImages", code="NOT_FOUND") >= 1
    assert sample(metrics, "revsearch_requests_total", rpc="IndexImages", code="OK") >= 1
    # An item that fails fails alone: the stream itself ended OK.
    assert sample(metrics, "revsearch_requests_total", rpc="IndexImages", code="INVALID_ARGUMENT") == 0
    assert sample(metrics, "revsearch_request_seconds_count", rpc="SearchImages") >= 3
    for stage in ("decode", "embed", "dedup", "index", "search"):
        assert sample(metrics, "revsearch_stage_seconds_count", stage=stage) > 0, stage
        assert sample(metrics, "revsearch_stage_seconds_sum", stage=stage) > 0, stage
    assert sample(metrics, "revsearch_stage_seconds_count", stage="detect") == 0  # no face collection here
    assert sample(metrics, "revsearch_batch_size_count", model="resnet50") > 0
    assert sample(metrics, "revsearch_batch_size_sum", model="resnet50") >= 4 + 1  # indexed + the image query
    assert sample(metrics, "revsearch_inference_backend", backend="onnxruntime-local") == 1
    assert sample(metrics, "revsearch_inference_backend", backend="triton") == 0
    assert sample(metrics, "revsearch_fallbacks_total") == 0  # Triton is off, not failed
    assert sample(metrics, "revsearch_admission_capacity_images") == MAX_INFLIGHT
    assert sample(metrics, "revsearch_dependency_up", dependency="vector_store") == 1
    assert sample(metrics, "revsearch_dependency_up", dependency="inference") == 1
    assert sample(metrics, "revsearch_serving") == 1
    client.drop_collection("measured")


def test_a_deadline_ends_an_index_stream_and_leaves_only_whole_items(server, client, images):
    client.create_collection("hurried", exist_ok=True)
    acknowledged: dict[str, str] = {}
    codes = []
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        # From a deadline shorter than any work to ones that end the stream between or during batches.
        for deadline in (0.05, 0.4, 0.8, 1.2, 1.6):
            requests = [pb.IndexImagesRequest(collection="hurried",
                                              item=pb.ImageItem(image=b, uri=f"mem://{i}", metadata={"n": i}))
                        for i, b in enumerate(images)]
            try:
                for r in stub.IndexImages(iter(requests), timeout=deadline):
                    if r.status == pb.ITEM_STATUS_INDEXED:
                        acknowledged[r.id] = r.uri
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
    assert codes[0] == "DEADLINE_EXCEEDED", codes
    assert set(codes) <= {"DEADLINE_EXCEEDED", "OK"}

    # Cancelled work stops and gives its slots back (clean-up of a cancelled insert included).
    assert wait_until(lambda: sample(scrape(server.server.metrics_port), "revsearch_inflight_images") == 0, 30)
    assert sample(scrape(server.server.metrics_port), "revsearch_requests_total", rpc="IndexImages",
                  code="DEADLINE_EXCEEDED") >= 1
    # Every stored item is whole (its vector found by its own image, its uri and metadata there);
    # every acknowledged item is stored; the count matches exactly the items found.
    stored = []
    for i, b in enumerate(images):
        item = hashlib.sha256(b).hexdigest()[:32]  # the content-derived id
        try:
            by_id = {h.id: h for h in client.search("hurried", item_id=item, top_k=len(images)).hits}
        except NotFoundError:
            continue
        assert by_id[item].uri == f"mem://{i}" and by_id[item].metadata["n"] == i
        by_image = {h.id: h.score for h in client.search("hurried", image=b, top_k=len(images)).hits}
        assert by_image[item] > 0.99
        stored.append(item)
    assert set(acknowledged) <= set(stored)
    assert client.describe_collection("hurried").item_count == len(stored)
    client.drop_collection("hurried")


def test_a_unary_call_past_its_deadline_is_cancelled_on_the_server_and_gives_its_slot_back(server):
    big = encode(synthetic_image(99, (2000, 1500)), "JPEG", quality=95)
    port = server.server.metrics_port
    before = sample(scrape(port), "revsearch_requests_total", rpc="EmbedImage", code="DEADLINE_EXCEEDED")
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SearchServiceStub(channel).EmbedImage(pb.EmbedImageRequest(image=big), timeout=0.02)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: sample(scrape(port), "revsearch_requests_total", rpc="EmbedImage",
                                     code="DEADLINE_EXCEEDED") == before + 1, 10)
    assert sample(scrape(port), "revsearch_inflight_images") == 0


def test_health_follows_the_vector_store_going_away_and_coming_back(tmp_path):
    from milvus_lite.server import Server

    port = free_port()
    db = tmp_path / "lite" / "store.db"
    db.parent.mkdir()

    def start_store() -> Server:
        store = Server(str(db), address=f"127.0.0.1:{port}")
        assert store.init() and store.start()
        return store

    def stop_store(store: Server) -> None:
        store._p.kill()  # gone at once, like a crashed Milvus
        store._p.wait(timeout=10)
        store.stop()

    store = start_store()
    try:
        settings = base_settings(tmp_path / "server", milvus_uri=f"http://127.0.0.1:{port}", milvus_timeout_s=1.0,
                                 health_interval_s=0.3)
        with ServerThread(settings) as srv:
            serving = health_pb2.HealthCheckResponse.SERVING
            assert wait_until(lambda: health_status(srv.address) == serving, 10)
            stop_store(store)
            store = None
            assert wait_until(lambda: health_status(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 20)
            metrics = scrape(srv.server.metrics_port)
            assert sample(metrics, "revsearch_dependency_up", dependency="vector_store") == 0
            assert sample(metrics, "revsearch_dependency_up", dependency="inference") == 1
            assert sample(metrics, "revsearch_serving") == 0
            store = start_store()
            assert wait_until(lambda: health_status(srv.address) == serving, 30)
            assert sample(scrape(srv.server.metrics_port), "revsearch_dependency_up", dependency="vector_store") == 1
    finally:
        if store is not None:
            stop_store(store)
