"""When Triton or Milvus cannot be reached the server still starts, says so, and answers
UNAVAILABLE within its deadlines (or falls back to local inference when allowed)."""

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from revsearch import SearchClient
from revsearch.errors import UnavailableError
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import ServerThread, base_settings, encode, free_port, synthetic_image


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status


def test_without_triton_and_without_fallback_embedding_is_unavailable(tmp_path):
    settings = base_settings(tmp_path, triton_url=f"127.0.0.1:{free_port()}", fallback="none",
                             triton_startup_timeout_s=1.0)
    with ServerThread(settings) as srv, SearchClient(srv.address) as client:
        info = client.info()
        assert info.inference_backend == pb.INFERENCE_BACKEND_NONE and "--fallback none" in info.inference_detail
        assert _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="no inference backend"):
            client.embed(encode(synthetic_image(1)))
        assert time.monotonic() - started < 10


def test_without_triton_the_local_fallback_serves_and_says_why(tmp_path):
    settings = base_settings(tmp_path, triton_url=f"127.0.0.1:{free_port()}", fallback="local",
                             triton_startup_timeout_s=1.0)
    with ServerThread(settings) as srv, SearchClient(srv.address) as client:
        info = client.info()
        assert info.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL
        assert "fallback" in info.inference_detail and "Triton" in info.inference_detail
        resp = client.embed(encode(synthetic_image(1)))
        assert len(resp.vector) == 2048 and resp.inference_backend == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL


def test_an_unreachable_milvus_gives_unavailable_not_a_hang(tmp_path):
    settings = base_settings(tmp_path, milvus_uri=f"http://127.0.0.1:{free_port()}", milvus_timeout_s=2.0)
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=30) as client:
        assert _health(srv.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="vector store"):
            client.list_collections()
        with pytest.raises(UnavailableError):
            client.search("photos", image=encode(synthetic_image(2)))
        assert time.monotonic() - started < 20
        assert client.info().version  # still serving
