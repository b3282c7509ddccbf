"""Metrics in their own registry, served over HTTP; health follows the dependency checks; the
inference backend recovers from having none and reports which one is active."""

import asyncio
import urllib.request

import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2

from revsearch_server.embedding.base import BackendKind
from revsearch_server.embedding.failover import FailoverBackend
from revsearch_server.errors import Unavailable
from revsearch_server.health import HealthMonitor
from revsearch_server.observability import NO_METRICS, Metrics, or_null


def test_each_metrics_object_has_its_own_registry_and_serves_it_over_http():
    first, second = Metrics(), Metrics()
    first.request("SearchImages", "OK", 0.02)
    with pytest.raises(ZeroDivisionError), first.stage("decode"):  # timed even when it fails
        1 / 0
    port = first.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        first.close()
    assert 'revsearch_requests_total{code="OK",rpc="SearchImages"} 1.0' in text
    assert 'revsearch_stage_seconds_count{stage="decode"} 1.0' in text
    assert 'revsearch_stage_seconds_count{stage="search"} 0.0' in text  # every stage listed from the start
    assert second.registry.get_sample_value("revsearch_requests_total", {"rpc": "SearchImages", "code": "OK"}) is None


def test_the_backend_gauge_marks_only_the_active_backend():
    m = Metrics()
    m.backend("triton")
    m.backend("onnxruntime-local")
    values = {b: m.registry.get_sample_value("revsearch_inference_backend", {"backend": b})
              for b in ("triton", "onnxruntime-local", "none")}
    assert values == {"triton": 0, "onnxruntime-local": 1, "none": 0}


def test_components_without_metrics_record_nothing():
    assert or_null(None) is NO_METRICS
    with NO_METRICS.stage("embed"):
        NO_METRICS.request("x", "OK", 1.0)
    assert NO_METRICS.text() == ""


def test_health_follows_the_checks_and_the_gauges_say_which_dependency_is_down():
    state = {"vector_store": True, "inference": True}

    async def main():
        servicer = health.aio.HealthServicer()
        metrics = Metrics()

        async def check(name):
            if state[name] is None:
                raise RuntimeError("check crashed")
            return state[name]

        monitor = HealthMonitor(servicer, ("", "svc"), {n: (lambda n=n: check(n)) for n in state}, 0.01, metrics)
        seen = []

        async def status():
            reply = await servicer.Check(health_pb2.HealthCheckRequest(service="svc"), None)
            seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        await monitor.check_once()
        await status()
        state["vector_store"] = False
        monitor.start()
        await asyncio.sleep(0.1)
        await status()
        down = metrics.registry.get_sample_value("revsearch_dependency_up", {"dependency": "vector_store"})
        state["vector_store"] = True
        state["inference"] = None  # a crashing check counts as down
        await asyncio.sleep(0.1)
        await status()
        state["inference"] = True
        await asyncio.sleep(0.1)
        await status()
        await monitor.stop()
        await status()
        return seen, down

    seen, down = asyncio.run(main())
    assert seen == ["SERVING", "NOT_SERVING", "NOT_SERVING", "SERVING", "NOT_SERVING"]
    assert down == 0


class FakeTriton:
    kind = BackendKind.TRITON

    def __init__(self):
        self.up = False

    async def wait_ready(self, models, within_s):
        if not self.up:
            raise Unavailable("Triton at fake is not serving")

    async def ping(self, timeout_s):
        return self.up

    async def embed(self, model, images):
        if not self.up:
            raise Unavailable("Triton at fake failed")
        return np.zeros((len(images), 2), np.float32)

    def describe(self):
        return "triton at fake"

    async def close(self):
        pass


class FakeLocal(FakeTriton):
    kind = BackendKind.ONNXRUNTIME_LOCAL

    async def wait_ready(self, models, within_s):
        pass

    async def embed(self, model, images):
        return np.ones((len(images), 2), np.float32)


def test_without_a_fallback_the_health_check_recovers_triton_when_it_comes_back():
    async def main():
        triton, metrics = FakeTriton(), Metrics()
        backend = FailoverBackend(triton, None, metrics=metrics)
        await backend.start({}, primary_wait_s=0)
        before = (backend.kind, await backend.check(0.1))
        triton.up = True
        after = (backend.kind, await backend.check(0.1), backend.kind)
        active = metrics.registry.get_sample_value("revsearch_inference_backend", {"backend": "triton"})
        return before, after, active

    before, after, active = asyncio.run(main())
    assert before == (BackendKind.NONE, False)
    assert after == (BackendKind.NONE, True, BackendKind.TRITON) and active == 1


def test_a_fallback_taken_is_counted_and_the_fallback_keeps_the_service_healthy():
    async def main():
        triton, metrics = FakeTriton(), Metrics()
        triton.up = True
        backend = FailoverBackend(triton, FakeLocal(), metrics=metrics)
        await backend.start({}, primary_wait_s=0)
        triton.up = False
        healthy_while_triton_is_down = await backend.check(0.1)  # the fallback can take over
        out = await backend.embed(None, np.zeros((1, 4, 4, 3), np.uint8))
        return healthy_while_triton_is_down, out, backend.kind, metrics

    healthy, out, kind, metrics = asyncio.run(main())
    assert healthy and kind is BackendKind.ONNXRUNTIME_LOCAL and out.tolist() == [[1.0, 1.0]]
    assert metrics.registry.get_sample_value("revsearch_fallbacks_total") == 1
    assert metrics.registry.get_sample_value("revsearch_inference_backend", {"backend": "onnxruntime-local"}) == 1
