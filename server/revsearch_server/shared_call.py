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
