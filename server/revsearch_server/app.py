"""The server's entry point (`revsearch-server`, `python -m revsearch_server`) and its life cycle.

RevsearchServer starts, in order: the metrics endpoint, the dependencies (wiring.build_dependencies:
models, inference backend, vector store, services), the gRPC server (wiring.build_grpc_server),
then the health monitor; `stop` undoes it in reverse. One Metrics object (its own registry) is
made here and passed down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import warnings

import grpc
from grpc_health.v1 import health, health_pb2

from . import __version__
from .config import Settings
from .embedding.base import BackendKind
from .health import HealthMonitor
from .models import ModelsUnavailable
from .observability import Metrics
from .wiring import SERVICE_NAME, Dependencies, Overrides, StartupError, build_dependencies, build_grpc_server

log = logging.getLogger("revsearch")


class RevsearchServer:
    def __init__(self, settings: Settings, overrides: Overrides = Overrides()):
        self.settings = settings
        self.port: int | None = None
        self.deps: Dependencies | None = None
        self._overrides = overrides
        self._server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.metrics = Metrics()
        self._monitor: HealthMonitor | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port of the metrics endpoint (None when disabled or not started)."""
        return self.metrics.port

    async def start(self) -> int:
        s = self.settings
        if s.metrics_port >= 0:
            try:
                port = self.metrics.serve(s.metrics_host, s.metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc} (--metrics-port "
                                   "picks another port, 0 a free one, -1 turns metrics off)") from None
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, port)
        self.deps = deps = await build_dependencies(s, self.metrics, self._overrides)
        self._server, self.port = build_grpc_server(s, deps, self.health)
        await self._server.start()
        # Health: from what start-up found, then re-checked every --health-interval-s.
        store, backend, triton = deps.store, deps.inference, deps.triton
        probe_s = max(0.5, min(s.milvus_timeout_s, s.health_interval_s))

        async def inference_ok() -> bool:
            if triton is not None:  # a managed Triton that died is started again; the fallback serves meanwhile
                await asyncio.to_thread(triton.restart_if_dead)
            return await backend.check(min(2.0, probe_s))

        self._monitor = HealthMonitor(
            self.health, ("", SERVICE_NAME),
            {"vector_store": lambda: store.ping(probe_s), "inference": inference_ok},
            s.health_interval_s, self.metrics)
        await self._monitor.report({"vector_store": deps.store_ok, "inference": backend.kind is not BackendKind.NONE})
        self._monitor.start()
        log.info("revsearch %s serving on %s:%d; inference: %s; vector store: %s", __version__, s.host,
                 self.port, backend.describe(), store.describe())
        for m in deps.models.values():
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
        if self.deps is not None:
            await self.deps.close()
        self.metrics.close()

    def reload(self) -> None:
        """Re-reads the TLS files and the key file (what SIGHUP does); a bad file keeps the old."""
        if self.deps is not None:
            log.info("reloading TLS and API keys")
            self.deps.security.reload()

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
        # SIGHUP: re-read the TLS certificate and the API keys; serving goes on.
        loop.add_signal_handler(signal.SIGHUP, server.reload)
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
