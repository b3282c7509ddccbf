"""Admission control: a bounded number of images in flight, so overload is refused, not queued.

Every image a call decodes and embeds takes one slot from the time it is admitted until its
work is done (a video: one slot per frame requested). Unary calls take their slots without
waiting (`admit`): when there is no room they fail at once with `Overloaded`
(RESOURCE_EXHAUSTED plus a `retry-after-ms` hint) instead of adding to everyone's latency.
Streams (IndexImages, the video uploads) wait for room (`wait`), first come first served, up to
a bound, then fail the same way: the wait is flow control, since a stream that waits stops
reading and gRPC's window holds its client back.

Slots are released in `finally`, so a call that fails, is cancelled or runs past its deadline
gives them back. A call needing more slots than the capacity takes them all (it runs alone).
The retry hint is the time the server needs to finish the images in flight at its recent
completion rate, clamped to 50..5000 ms.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from .errors import Overloaded
from .observability import Metrics, or_null

MIN_RETRY_MS, MAX_RETRY_MS = 50, 5000
# Without completions to measure yet, assume this many images per second.
DEFAULT_RATE = 20.0
RATE_WINDOW_S = 10.0


class Admission:
    def __init__(self, capacity: int, max_wait_s: float = 10.0, metrics: Metrics | None = None,
                 clock=time.monotonic):
        self.capacity = max(1, capacity)
        self.max_wait_s = max(0.0, max_wait_s)
        self._metrics = or_null(metrics)
        self._clock = clock
        self._inflight = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self._done: collections.deque[tuple[float, int]] = collections.deque()  # (time, images) completed
        self._report()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return sum(n for n, f in self._waiters if not f.done())

    # -- taking and giving back ----------------------------------------------------------------
    def _clamp(self, n: int) -> int:
        return min(max(0, n), self.capacity)

    def _fits(self, n: int) -> bool:
        return self._inflight + n <= self.capacity

    def try_take(self, n: int, rpc: str = "") -> int:
        """Takes n slots now or raises Overloaded; returns the slots taken (release those)."""
        self.check(n, rpc)  # waiting streams were first
        n = self._clamp(n)
        if n:
            self._take(n)
        return n

    def check(self, n: int, rpc: str = "") -> None:
        """Raises Overloaded if try_take(n) would, without taking anything (a cheap early refusal)."""
        n = self._clamp(n)
        if n and (self._waiters or not self._fits(n)):
            raise self._overloaded(rpc, f"{self._inflight} images are in flight (limit {self.capacity}, "
                                        "--max-inflight-images)")

    async def take(self, n: int, rpc: str = "", max_wait_s: float | None = None) -> int:
        """Takes n slots, waiting for room up to max_wait_s (default: the configured bound), else
        raises Overloaded; returns the slots taken (release those)."""
        n = self._clamp(n)
        if n == 0:
            return 0
        if not self._waiters and self._fits(n):
            self._take(n)
            return n
        wait_s = self.max_wait_s if max_wait_s is None else max_wait_s
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        self._report()
        try:
            async with asyncio.timeout(wait_s):
                await future
            return n
        except TimeoutError:
            if future.done() and not future.cancelled():  # granted as the wait ran out: keep it
                return n
            raise self._overloaded(rpc, f"no room for {n} images within {wait_s:g} s; {self._inflight} images "
                                        f"are in flight (limit {self.capacity}, --max-inflight-images)") from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, but the caller is gone
                self.release(n)
            raise
        finally:
            if not future.done():
                future.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._grant()
            self._report()

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self._inflight = max(0, self._inflight - n)
        now = self._clock()
        self._done.append((now, n))
        self._trim(now)
        self._grant()
        self._report()

    @contextlib.asynccontextmanager
    async def slots(self, n: int, rpc: str = "", wait: bool = False):
        """`async with admission.slots(n, rpc)`: slots held for the block, given back after it."""
        taken = await self.take(n, rpc) if wait else self.try_take(n, rpc)
        try:
            yield taken
        finally:
            self.release(taken)

    def _take(self, n: int) -> None:
        self._inflight += n
        self._report()

    def _grant(self) -> None:
        """Admits waiting streams in order while they fit."""
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # timed out or cancelled
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            future.set_result(None)

    # -- the retry hint ----------------------------------------------------------------------
    def _trim(self, now: float) -> None:
        while self._done and now - self._done[0][0] > RATE_WINDOW_S:
            self._done.popleft()

    def completion_rate(self) -> float:
        """Images completed per second over the last RATE_WINDOW_S seconds (a default without data)."""
        now = self._clock()
        self._trim(now)
        if not self._done:
            return DEFAULT_RATE
        images = sum(n for _, n in self._done)
        span = max(now - self._done[0][0], 1.0)  # a burst of completions is not an infinite rate
        return images / span

    def retry_after_ms(self) -> int:
        backlog = self._inflight + self.waiting
        ms = 1000.0 * max(backlog, 1) / self.completion_rate()
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, ms)))

    def _overloaded(self, rpc: str, why: str) -> Overloaded:
        self._metrics.rejected(rpc)
        hint = self.retry_after_ms()
        return Overloaded(f"the server is overloaded ({why}); retry after {hint} ms (the retry-after-ms trailing "
                          "metadata)", hint)

    def _report(self) -> None:
        self._metrics.admission(self._inflight, self.waiting, self.capacity)
