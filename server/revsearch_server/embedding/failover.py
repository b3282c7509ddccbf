"""Triton first, ONNX Runtime in-process when Triton cannot be reached (if allowed).

The active backend is always known, logged when it changes and reported by the info RPC.
While on the fallback, Triton is probed again every `reprobe_s` so a restarted Triton is
picked up without restarting revsearch; with no backend at all (Triton down at start-up and
--fallback none), Triton is probed again the same way, by calls and by the health checks.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ..errors import Unavailable
from ..models import ModelSpec
from ..observability import Metrics, or_null
from .base import BackendKind, InferenceBackend

log = logging.getLogger(__name__)


class FailoverBackend:
    def __init__(self, primary: InferenceBackend | None, fallback: InferenceBackend | None,
                 reprobe_s: float = 30.0, metrics: Metrics | None = None):
        self._metrics = or_null(metrics)
        self._primary = primary
        self._fallback = fallback
        self._reprobe_s = reprobe_s
        self._models: dict[str, ModelSpec] = {}
        self._active = None
        self._detail = "not started"
        self._last_probe = 0.0
        self._probe_task: asyncio.Task | None = None
        self.fallbacks_taken = 0

    @property
    def kind(self) -> BackendKind:
        return self._active.kind if self._active else BackendKind.NONE

    def describe(self) -> str:
        return self._detail

    async def start(self, models: dict[str, ModelSpec], primary_wait_s: float,
                    no_primary_reason: str = "") -> None:
        self._models = models
        if self._primary is not None:
            try:
                await self._primary.wait_ready(models, primary_wait_s)
                self._use(self._primary, self._primary.describe())
                return
            except Unavailable as exc:
                await self._fall_back(str(exc))
                return
        if no_primary_reason:
            await self._fall_back(no_primary_reason)
        elif self._fallback is not None:
            await self._fallback.wait_ready(models, primary_wait_s)
            self._use(self._fallback, f"{self._fallback.describe()} (Triton disabled)")
        else:
            self._use(None, "no inference backend configured")

    async def embed(self, model: ModelSpec, images: np.ndarray, output: str = "") -> np.ndarray:
        backend = self._active
        if backend is None:
            self._maybe_reprobe()
            raise Unavailable(f"no inference backend is available ({self._detail}); "
                              "start Triton or run the server with --fallback local")
        if backend is self._primary:
            try:
                return await _embed(backend, model, images, output)
            except Unavailable as exc:
                if self._fallback is None:
                    raise
                await self._fall_back(str(exc))
        else:
            self._maybe_reprobe()
        return await _embed(self._fallback, model, images, output)

    async def _fall_back(self, reason: str) -> None:
        if self._fallback is None:
            self._use(None, f"Triton unavailable and --fallback none: {reason}")
            log.error("inference backend: none (%s)", reason)
            return
        await self._fallback.wait_ready(self._models, 0.0)
        self.fallbacks_taken += 1
        self._metrics.fallback()
        self._last_probe = time.monotonic()
        self._use(self._fallback, f"{self._fallback.describe()} (fallback: {reason})")

    async def check(self, timeout_s: float = 2.0) -> bool:
        """Whether a model can be embedded now (the health check): Triton answering, or the local
        fallback there to take over. With no backend active, probes Triton and recovers it."""
        if self._active is None:
            if self._primary is None:
                return False
            if self._probe_task is None or self._probe_task.done():
                self._last_probe = time.monotonic()
                self._probe_task = asyncio.get_running_loop().create_task(self._reprobe(timeout_s))
            await asyncio.shield(self._probe_task)
            return self._active is not None
        if self._active is self._fallback:
            self._maybe_reprobe()
            return True
        return await self._primary.ping(timeout_s) or self._fallback is not None

    def _maybe_reprobe(self) -> None:
        if self._primary is None or (self._probe_task and not self._probe_task.done()):
            return
        if time.monotonic() - self._last_probe < self._reprobe_s:
            return
        self._last_probe = time.monotonic()
        self._probe_task = asyncio.get_running_loop().create_task(self._reprobe())

    async def _reprobe(self, within_s: float = 2.0) -> None:
        try:
            await self._primary.wait_ready(self._models, within_s=within_s)
        except Unavailable:
            return
        self._use(self._primary, f"{self._primary.describe()} (recovered)")

    def _use(self, backend, detail: str) -> None:
        self._active = backend
        self._detail = detail
        self._metrics.backend(self.kind.value)
        # Anything but the primary (Triton) is worth a warning: it is slower or serves nothing.
        log.log(logging.INFO if backend is self._primary else logging.WARNING, "inference backend: %s", detail)

    async def close(self) -> None:
        if self._probe_task:
            self._probe_task.cancel()
        for backend in (self._primary, self._fallback):
            if backend is not None:
                await backend.close()


async def _embed(backend: InferenceBackend, model: ModelSpec, images: np.ndarray, output: str) -> np.ndarray:
    """The backend's embed, with `output` only when one is asked for (backends written before copy
    detection's second output take (model, images))."""
    return await (backend.embed(model, images, output) if output else backend.embed(model, images))
