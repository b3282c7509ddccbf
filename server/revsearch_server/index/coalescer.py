"""Gathers concurrent searches of one collection into one index call.

A search of N query vectors costs far less than N searches of one: Milvus Lite's FLAT scan and the
exact-KNN matrix product read every stored vector once per call, not once per query, and a Milvus
server answers nq > 1 in one round trip. Unlike the embedding batcher this adds no wait: a search
goes to the index at once when none is running for its collection, and the searches that arrive
while one runs go together in the next call. So one caller sees no extra latency, and under load
the index is called as often as it can answer, with everything that queued meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from ..observability import Metrics, or_null
from ..shared_call import answer_together
from .base import Hit, VectorIndex


@dataclass
class _Lane:
    """Searches waiting for one (index, top_k)."""

    index: VectorIndex
    k: int
    waiting: deque[tuple[np.ndarray, asyncio.Future]] = field(default_factory=deque)
    worker: asyncio.Task | None = None


class SearchCoalescer:
    """`search(index, queries, k)` is `index.search(queries, k)`, shared with concurrent callers.

    max_queries bounds the query vectors per index call (memory of exact KNN's score matrix and
    Milvus's nq); 1 turns coalescing off. A caller that is cancelled stops waiting; the call it
    was part of still answers the others."""

    def __init__(self, max_queries: int = 64, metrics: Metrics | None = None):
        self._max = max(1, max_queries)
        self._lanes: dict[tuple[Hashable, int], _Lane] = {}
        self._metrics = or_null(metrics)

    async def search(self, index: VectorIndex, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if self._max == 1:
            return await index.search(queries, k)
        key = (index.search_key, k)  # a lane holds its index, so an id() key cannot be reused meanwhile
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(index, k)
        future = asyncio.get_running_loop().create_future()
        lane.waiting.append((queries, future))
        if lane.worker is None:
            lane.worker = asyncio.get_running_loop().create_task(self._work(key, lane))
        return await future

    async def _work(self, key: tuple[Hashable, int], lane: _Lane) -> None:
        batch: list[tuple[np.ndarray, asyncio.Future]] = []
        try:
            while lane.waiting:
                batch, n = [], 0
                while lane.waiting and (not batch or n + len(lane.waiting[0][0]) <= self._max):
                    queries, future = lane.waiting.popleft()
                    if not future.done():  # done = cancelled: its caller has gone
                        batch.append((queries, future))
                        n += len(queries)
                if not batch:
                    continue
                self._metrics.search_batch(n)
                await answer_together(batch, lambda queries: lane.index.search(queries, lane.k))
        finally:
            # No await between the last look at `waiting` and here, so no search can slip in.
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            for _, future in [*batch, *lane.waiting]:  # only left when this task was cancelled (shutdown)
                if not future.done():
                    future.cancel()
