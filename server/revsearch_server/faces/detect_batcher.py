"""Joins the face detection of concurrent calls into one detector call.

Detection runs in one worker thread (faces/cropper.py), one call at a time. Calls that arrive
while it is busy (index batches of other streams, single query images of concurrent EmbedImage or
SearchImages calls, a clip's frames) wait here and then go to the detector together: its P-Net
runs once per pyramid level for all images of a size, and the R- and O-Net crops of all of them go
in one batch, so per image there are fewer, larger net calls. A call that finds the worker idle
is detected at once: no wait is added at low load.

Requests are joined only when they ask for the same detector (minimum face size) and the same
detection size; others wait for their own turn, oldest first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor

import numpy as np

from ..shared_call import answer_together

# Blocking: (key, images) -> per image its faces (or None where the detector failed on it).
DetectRun = Callable[[Hashable, list[np.ndarray]], list]


class DetectionBatcher:
    def __init__(self, worker: Executor, run: DetectRun, max_images: int = 64):
        """max_images: the most images of joined calls in one detector call (a single call with more
        is not split: the detector bounds its own net batches)."""
        self._worker = worker
        self._run = run
        self._max_images = max(1, max_images)
        self._waiting: list[tuple[Hashable, list[np.ndarray], asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.calls = 0  # detector calls made (the tests and benchmarks read them)
        self.requests = 0  # requests answered

    async def detect(self, key: Hashable, images: list[np.ndarray]) -> list:
        """The detector's answer for these images, detected alone or with other calls' images."""
        if not images:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((key, images, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work())
        return await future

    def _take(self) -> tuple[Hashable, list[tuple[list[np.ndarray], asyncio.Future]]]:
        """The oldest live request and every later one of the same key that fits."""
        self._waiting = [w for w in self._waiting if not w[2].done()]  # callers gone (cancelled)
        key = self._waiting[0][0]
        taken, kept, count = [], [], 0
        for w in self._waiting:
            if w[0] == key and (not taken or count + len(w[1]) <= self._max_images):
                taken.append((w[1], w[2]))
                count += len(w[1])
            else:
                kept.append(w)
        self._waiting = kept
        return key, taken

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while any(not w[2].done() for w in self._waiting):
            key, taken = self._take()
            self.calls += 1
            # The detector's failure is every joined caller's; each gets its own images' answer.
            await answer_together(taken, lambda images: loop.run_in_executor(self._worker, self._run, key, images),
                                  join=lambda parts: [img for imgs in parts for img in imgs])
            self.requests += sum(1 for _, f in taken if f.done() and not f.cancelled() and f.exception() is None)
        self._waiting.clear()
