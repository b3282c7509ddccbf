"""Gathers concurrent embedding requests for one model into batches for the backend.

Inference on CPU and GPU is cheaper per image in batches; requests that arrive within
`max_wait_s` of each other (up to `max_size` images) share one backend call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from ..observability import Metrics, or_null
from ..shared_call import answer_together


class MicroBatcher:
    """The queue is unbounded by itself: admission control (admission.py) bounds the images in
    flight, and so what can wait here. A caller that is cancelled (client gone, deadline passed)
    leaves its future cancelled; the worker skips such requests instead of embedding them."""

    def __init__(self, run: Callable[[np.ndarray], Awaitable[np.ndarray]], max_size: int, max_wait_s: float,
                 metrics: Metrics | None = None, name: str = ""):
        self._run = run
        self._max_size = max(1, max_size)
        self._max_wait_s = max(0.0, max_wait_s)
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._metrics = or_null(metrics)
        self._name = name
        self._queued = 0  # images submitted and not yet sent to the backend

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Embeds [n, ...] images; returns [n, D] in the same order."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((images, future))
        self._count(len(images))
        return await future

    def _count(self, delta: int) -> None:
        self._queued += delta
        self._metrics.embed_queue(self._name, self._queued)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            pending = [first]
            count = len(first[0])
            deadline = loop.time() + self._max_wait_s
            while count < self._max_size:
                timeout = deadline - loop.time()
                try:
                    item = self._queue.get_nowait() if timeout <= 0 else \
                        await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                pending.append(item)
                count += len(item[0])
            self._count(-count)  # off to the backend (or dropped)
            # Requests whose caller went away (cancelled) need no work.
            pending = [(x, f) for x, f in pending if not f.done()]
            if not pending:
                continue
            self._metrics.batch(self._name, sum(len(x) for x, _ in pending))
            await answer_together(pending, self._run)

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()
