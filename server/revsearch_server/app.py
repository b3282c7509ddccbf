"""Builds the server from settings (the one factory) and runs it.

Order of start-up: metrics endpoint, models (fail fast with a clear message), inference
backend (managed or external Triton, else the local fallback), vector store, then the gRPC server
with the health and reflection services, and the health monitor. One Metrics object (its own
registry) and one Admission object are made here and passed down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc

from . import __version__
from .admission import Admission
from .catalog import Catalog
from .config import Settings
from .embedding.base import BackendKind
from .embedding.embedder import Embedder
from .embedding.failover import FailoverBackend
from .embedding.local_onnx import LocalOnnxBackend
from .embedding.triton import TritonBackend
from .faces.cropper import FaceCropper
from .errors import Unavailable
from .health import HealthMonitor
from .imaging import ImageLimits
from .index.milvus import MilvusStore
from .models import ModelsUnavailable, load_models
from .observability import Metrics
from .pipeline import SearchPipeline
from .servicer import InfoProvider, SearchServicer
from .video.pipeline import VideoPipeline
from .video.sampling import VideoLimits
from .triton_managed import ManagedTriton

log = logging.getLogger("revsearch")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
# An external Triton gets a short look at start-up; a managed one gets its full start time.
EXTERNAL_TRITON_WAIT_S = 10.0


class StartupError(Exception):
    """A start-up problem the user can fix; the message says how."""


class RevsearchServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._triton: ManagedTriton | None = None
        self._embedder: Embedder | None = None
        self._store: MilvusStore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._cropper: FaceCropper | None = None
        self.health = health.aio.HealthServicer()
        self.metrics = Metrics()
        self.admission = Admission(settings.max_inflight_images, settings.admission_wait_s, self.metrics)
        self._monitor: HealthMonitor | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port of the metrics endpoint (None when disabled or not started)."""
        return self.metrics.port

    async def start(self) -> int:
        s = self.settings
        if s.metrics_port >= 0:
            try:
                port = self.metrics.serve(s.host, s.metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.host}:{s.metrics_port}: {exc} (--metrics-port picks "
                                   "another port, 0 a free one, -1 turns metrics off)") from None
            log.info("metrics on http://%s:%d/metrics", s.host, port)
        models = load_models(s.model_repository, s.allow_untrained)
        if s.default_model not in models:
            raise ModelsUnavailable(f"default model {s.default_model!r} is not servable; available: "
                                    f"{', '.join(sorted(models))} (--default-model picks another)")

        primary, wait_s, reason = None, min(EXTERNAL_TRITON_WAIT_S, s.triton_startup_timeout_s), ""
        if s.triton_enabled and not s.managed_triton:
            primary = TritonBackend(s.triton_url, s.triton_timeout_s)
        elif s.managed_triton:
            self._triton = ManagedTriton(s.model_repository, s.data_dir / "triton", models)
            try:
                url = await asyncio.to_thread(self._triton.start)
                primary = TritonBackend(url, s.triton_timeout_s, alive=self._triton.alive,
                                        log_hint=f"; see {self._triton.log_path}")
                wait_s = s.triton_startup_timeout_s
            except Unavailable as exc:
                reason = str(exc)
                log.error("managed Triton could not start: %s", exc)
        fallback = LocalOnnxBackend() if s.fallback == "local" or not s.triton_enabled else None
        backend = FailoverBackend(primary, fallback, metrics=self.metrics)
        await backend.start(models, primary_wait_s=wait_s, no_primary_reason=reason)
        self._embedder = Embedder(backend, models, s.default_model, s.batch_max_size, s.batch_max_wait_ms / 1000,
                                  self.metrics)

        s.data_dir.mkdir(parents=True, exist_ok=True)
        uri = s.milvus_uri or str(s.milvus_lite_path.resolve())
        self._store = MilvusStore(uri, s.milvus_token, s.milvus_timeout_s, s.milvus_consistency, s.milvus_search_ef)
        store_ok = True
        try:
            await self._store.start()
        except Unavailable as exc:
            # Serve anyway: calls answer UNAVAILABLE until Milvus is back, and health says so.
            store_ok = False
            log.error("vector store unreachable at start-up: %s", exc)
        catalog = Catalog(self._store, s.data_dir / "exact_knn")

        self._pool = ThreadPoolExecutor(max_workers=s.decode_workers, thread_name_prefix="decode")
        limits = ImageLimits(max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)
        self._cropper = FaceCropper(self._pool, limits, self.metrics)
        video_limits = VideoLimits(max_duration_s=s.max_video_duration_s, max_width=s.max_video_width,
                                   max_height=s.max_video_height, max_frames=s.max_video_frames)
        pipeline = SearchPipeline(self._embedder, catalog, self._pool, limits, s.max_top_k, self._cropper,
                                  video_limits, self.metrics, s.search_batch_max_queries)
        videos = VideoPipeline(pipeline, video_limits, s.video_frame_max_side, self._pool, self.metrics)

        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
            ("grpc.max_send_message_length", s.max_receive_message_bytes),
        ])
        pb_grpc.add_SearchServiceServicer_to_server(
            SearchServicer(pipeline, InfoProvider(s, self._embedder, self._store.describe()), s.index_batch_size,
                           videos, s.max_video_bytes, self.admission, self.metrics),
            self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        await self._server.start()
        # Health: from what start-up found, then re-checked every --health-interval-s.
        store, probe_s = self._store, max(0.5, min(s.milvus_timeout_s, s.health_interval_s))
        self._monitor = HealthMonitor(
            self.health, ("", SERVICE_NAME),
            {"vector_store": lambda: store.ping(probe_s),
             "inference": lambda: backend.check(min(2.0, probe_s))},
            s.health_interval_s, self.metrics)
        await self._monitor.report({"vector_store": store_ok, "inference": backend.kind is not BackendKind.NONE})
        self._monitor.start()
        log.info("revsearch %s serving on %s:%d; inference: %s; vector store: %s", __version__, s.host,
                 self.port, backend.describe(), self._store.describe())
        for m in models.values():
            if not m.trained:
                log.warning("model %s is UNTRAINED: search results are not meaningful", m.name)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._monitor is not None:
            await self._monitor.stop()  # reports NOT_SERVING
        if self._server is not None:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await self._server.stop(grace)
        if self._embedder is not None:
            await self._embedder.close()
        if self._store is not None:
            await self._store.close()
        if self._cropper is not None:
            self._cropper.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._triton is not None:
            await asyncio.to_thread(self._triton.stop)
        self.metrics.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    server = RevsearchServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        metrics = f"; metrics on port {server.metrics_port}" if server.metrics_port else ""
        print(f"revsearch listening on {settings.host}:{server.port}{metrics}", flush=True)
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    from .config import parse

    settings = parse(argv)
    configure_logging(settings)
    run(settings)


def run(settings: Settings) -> None:
    """Runs until SIGINT/SIGTERM; a start-up problem the user can fix exits with its message."""
    try:
        asyncio.run(serve(settings))
    except (ModelsUnavailable, StartupError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


def configure_logging(settings: Settings) -> None:
    # milvus-lite imports pkg_resources and warns about it on every start; nothing for users to act on.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
