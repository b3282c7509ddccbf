"""Prometheus metrics of one server: requests, stage latencies, admission, batching, backends, health.

One `Metrics` object per server, with its own CollectorRegistry (several servers can run in one
process, as the tests do), created by app.py and passed down. Components take it as an optional
constructor argument; None gives `NO_METRICS`, which records nothing, so their unit tests need
not care. The registry is served as text over HTTP (`--metrics-port`).

Metric names:
  revsearch_requests_total{rpc,code}        finished RPCs by gRPC status code
  revsearch_request_seconds{rpc}            RPC latency (histogram)
  revsearch_stage_seconds{stage}            decode, detect, embed, dedup, index, search, sample, rerank (histogram)
  revsearch_inflight_images                 images admitted and being worked on
  revsearch_admission_waiting_images        images of streams waiting for room (the admission queue)
  revsearch_admission_capacity_images       --max-inflight-images
  revsearch_rejected_total{rpc}             calls refused with RESOURCE_EXHAUSTED for overload
  revsearch_embed_queue_images{model}       images waiting in the micro-batcher
  revsearch_batch_size{model}               images per inference call (histogram)
  revsearch_search_batch_queries            query vectors per index search call (histogram)
  revsearch_inference_backend{backend}      1 for the active backend, 0 for the others
  revsearch_fallbacks_total                 switches from Triton to the local fallback
  revsearch_dependency_up{dependency}       vector_store / inference, from the health checks
  revsearch_serving                         1 while the health service reports SERVING
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_wsgi_server

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "embed", "dedup", "index", "search", "sample", "rerank")
BACKENDS = ("triton", "onnxruntime-local", "none")
DEPENDENCIES = ("vector_store", "inference")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in their own registry; `serve` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._requests = Counter("revsearch_requests", "Finished RPCs by method and gRPC status code",
                                 ["rpc", "code"], registry=r)
        self._request_seconds = Histogram("revsearch_request_seconds", "RPC latency, seconds", ["rpc"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self._stage_seconds = Histogram("revsearch_stage_seconds", "Latency of one pipeline stage, seconds",
                                        ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self._inflight = Gauge("revsearch_inflight_images", "Images admitted and being worked on", registry=r)
        self._waiting = Gauge("revsearch_admission_waiting_images",
                              "Images of streams waiting for room (the admission queue)", registry=r)
        self._capacity = Gauge("revsearch_admission_capacity_images",
                               "Images allowed in flight (--max-inflight-images)", registry=r)
        self._rejected = Counter("revsearch_rejected", "Calls refused with RESOURCE_EXHAUSTED because the server "
                                 "was overloaded", ["rpc"], registry=r)
        self._embed_queue = Gauge("revsearch_embed_queue_images", "Images waiting in the micro-batcher",
                                  ["model"], registry=r)
        self._batch_size = Histogram("revsearch_batch_size", "Images per inference call", ["model"],
                                     buckets=_BATCH_BUCKETS, registry=r)
        self._search_batch = Histogram("revsearch_search_batch_queries", "Query vectors per index search call "
                                       "(concurrent searches are coalesced)", buckets=_BATCH_BUCKETS, registry=r)
        self._backend = Gauge("revsearch_inference_backend", "1 for the active inference backend", ["backend"],
                              registry=r)
        self._fallbacks = Counter("revsearch_fallbacks", "Switches from Triton to the local fallback", registry=r)
        self._dependency = Gauge("revsearch_dependency_up", "1 while a required dependency answers its health check",
                                 ["dependency"], registry=r)
        self._malformed = Counter("revsearch_malformed_messages", "Requests whose bytes were not a valid message "
                                  "of the RPC's request type (answered INVALID_ARGUMENT)", ["rpc"], registry=r)
        self._key_requests = Counter("revsearch_key_requests", "Finished RPCs by API key id, method and gRPC status "
                                     "code ('-': no key)", ["key", "rpc", "code"], registry=r)
        self._denials = Counter("revsearch_auth_denials", "Calls refused by API key checks, by key id ('-': no key "
                                "or an unknown one) and reason", ["key", "reason"], registry=r)
        self._serving = Gauge("revsearch_serving", "1 while the health service reports SERVING", registry=r)
        for stage in STAGES:  # every stage is listed from the start, at count 0
            self._stage_seconds.labels(stage)
        for backend in BACKENDS:
            self._backend.labels(backend).set(0)
        self._http = None
        self._http_thread: threading.Thread | None = None
        self.port: int | None = None

    # -- recording ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str):
        """Times the block as one observation of `name` (also when it raises or is cancelled)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._stage_seconds.labels(name).observe(time.perf_counter() - started)

    def request(self, rpc: str, code: str, seconds: float) -> None:
        self._requests.labels(rpc, code).inc()
        self._request_seconds.labels(rpc).observe(seconds)

    def rejected(self, rpc: str) -> None:
        self._rejected.labels(rpc or "unknown").inc()

    def malformed(self, rpc: str) -> None:
        self._malformed.labels(rpc).inc()

    def key_request(self, key: str, rpc: str, code: str) -> None:
        self._key_requests.labels(key, rpc, code).inc()

    def denied(self, key: str, reason: str) -> None:
        self._denials.labels(key, reason).inc()

    def admission(self, inflight: int, waiting: int, capacity: int) -> None:
        self._inflight.set(inflight)
        self._waiting.set(waiting)
        self._capacity.set(capacity)

    def embed_queue(self, model: str, images: int) -> None:
        self._embed_queue.labels(model).set(images)

    def batch(self, model: str, size: int) -> None:
        self._batch_size.labels(model).observe(size)

    def search_batch(self, queries: int) -> None:
        self._search_batch.observe(queries)

    def backend(self, active: str) -> None:
        for name in {*BACKENDS, active}:
            self._backend.labels(name).set(1 if name == active else 0)

    def fallback(self) -> None:
        self._fallbacks.inc()

    def dependency(self, name: str, up: bool) -> None:
        self._dependency.labels(name).set(1 if up else 0)

    def serving(self, up: bool) -> None:
        self._serving.set(1 if up else 0)

    def text(self) -> str:
        """The exposition text, as the HTTP endpoint serves it."""
        return generate_latest(self.registry).decode()

    # -- HTTP --------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Serves /metrics (any path, in fact) on host:port in a daemon thread; 0 picks a free port."""
        self._http, self._http_thread = start_wsgi_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
            self._http_thread = None


class _NoMetrics(Metrics):
    """Records nothing: the default of components built without a Metrics object."""

    def __init__(self) -> None:  # no registry, no metrics
        self.port = None

    def stage(self, name: str):
        return contextlib.nullcontext()

    def request(self, rpc, code, seconds): pass
    def rejected(self, rpc): pass
    def malformed(self, rpc): pass
    def key_request(self, key, rpc, code): pass
    def denied(self, key, reason): pass
    def admission(self, inflight, waiting, capacity): pass
    def embed_queue(self, model, images): pass
    def batch(self, model, size): pass
    def search_batch(self, queries): pass
    def backend(self, active): pass
    def fallback(self): pass
    def dependency(self, name, up): pass
    def serving(self, up): pass

    def text(self) -> str:
        return ""

    def serve(self, host, port):
        raise RuntimeError("NO_METRICS cannot be served")

    def close(self): pass


NO_METRICS: Metrics = _NoMetrics()


def or_null(metrics: Metrics | None) -> Metrics:
    return NO_METRICS if metrics is None else metrics
