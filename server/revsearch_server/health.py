"""Health: the standard grpc.health.v1 service follows the required dependencies.

A background task checks, every `--health-interval-s`, that the vector store answers a cheap
call and that some inference backend can embed (Triton answering, or the local fallback there
to take over). The service ("" and revsearch.v1.SearchService) reports SERVING while both do and
NOT_SERVING otherwise; each dependency's state is also the gauge revsearch_dependency_up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health, health_pb2

from .observability import Metrics, or_null

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    def __init__(self, servicer: health.aio.HealthServicer, services: tuple[str, ...],
                 checks: dict[str, Callable[[], Awaitable[bool]]], interval_s: float,
                 metrics: Metrics | None = None):
        self._servicer = servicer
        self._services = services
        self._checks = checks
        self._interval_s = max(0.05, interval_s)
        self._metrics = or_null(metrics)
        self.state: dict[str, bool] = {}
        self.serving: bool | None = None
        self._task: asyncio.Task | None = None

    async def report(self, state: dict[str, bool]) -> bool:
        """Records each dependency's state and sets the health status from them; returns serving."""
        for name, up in state.items():
            if self.state.get(name) != up and name in self.state:
                log.log(logging.INFO if up else logging.ERROR, "health: %s is %s", name, "up" if up else "DOWN")
            self.state[name] = up
            self._metrics.dependency(name, up)
        serving = all(self.state.values())
        if serving != self.serving:
            for service in self._services:
                await self._servicer.set(service, SERVING if serving else NOT_SERVING)
            if self.serving is not None:
                log.log(logging.INFO if serving else logging.ERROR, "health: %s",
                        "SERVING" if serving else "NOT_SERVING (" + ", ".join(
                            n for n, up in self.state.items() if not up) + " down)")
            self.serving = serving
            self._metrics.serving(serving)
        return serving

    async def check_once(self) -> bool:
        names = list(self._checks)
        results = await asyncio.gather(*(self._checks[n]() for n in names), return_exceptions=True)
        return await self.report({n: r is True for n, r in zip(names, results)})

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the monitor die
                log.exception("health check failed")

    async def stop(self) -> None:
        """Stops checking and reports NOT_SERVING (the server is going away)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for service in self._services:
            await self._servicer.set(service, NOT_SERVING)
        self.serving = False
        self._metrics.serving(False)
