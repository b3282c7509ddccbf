"""One backend call answering several callers: what the embedding batcher, the search coalescer
and the face detection batcher share once they have gathered their callers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np


async def answer_together(pending: list[tuple[Sequence, asyncio.Future]], run: Callable[[Sequence], Awaitable],
                          join: Callable[[list[Sequence]], Sequence] = np.concatenate) -> None:
    """Calls `run` once on the callers' rows joined in order (stacked arrays by default; `join`
    for rows of another kind) and gives each caller its slice of the result, or the exception
    (each caller maps it as if it had called alone). Callers whose future is already done
    (cancelled) are skipped."""
    try:
        out = await run(join([rows for rows, _ in pending]))
    except Exception as exc:
        for _, future in pending:
            if not future.done():
                future.set_exception(exc)
        return
    start = 0
    for rows, future in pending:
        if not future.done():
            future.set_result(out[start:start + len(rows)])
        start += len(rows)


class CallJoiner:
    """Calls that arrive while one of the same key runs go together in the next run.

    Like the search coalescer, this adds no wait: a call runs at once when none of its key is
    running. `run` takes the waiting callers' items (in arrival order) and its one result goes to
    each of them (a result that answers all of them: a store write, or a lookup of the union of
    their keys), as does its exception. The run happens in a task of its own, so a caller that is
    cancelled stops waiting while the joined call finishes for the others (and for the caller's
    own clean-up, which waits for its write to end: index/base.py's insert_or_undo)."""

    def __init__(self, max_items: int = 256):
        self._max = max(1, max_items)
        self._lanes: dict[object, list[tuple[object, asyncio.Future]]] = {}
        self._workers: dict[object, asyncio.Task] = {}

    async def call(self, key: object, item: object, run: Callable[[list], Awaitable]):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._lanes.setdefault(key, []).append((item, future))
        if key not in self._workers:
            self._workers[key] = loop.create_task(self._work(key, run))
        return await future

    async def _work(self, key: object, run: Callable[[list], Awaitable]) -> None:
        waiting = self._lanes[key]
        try:
            while waiting:
                batch = [(item, f) for item, f in waiting[:self._max] if not f.done()]
                del waiting[:self._max]
                if not batch:
                    continue
                try:
                    out = await run([item for item, _ in batch])
                except Exception as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for _, f in batch:
                    if not f.done():
                        f.set_result(out)
        finally:
            # No await between the last look at `waiting` and here, so no call can slip in.
            del self._workers[key]
            if not waiting:
                del self._lanes[key]
            for _, f in waiting:  # only left when this task was cancelled (shutdown)
                if not f.done():
                    f.cancel()
