"""One backend call answering several callers: what the embedding batcher and the search
coalescer share once they have gathered their callers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np


async def answer_together(pending: list[tuple[np.ndarray, asyncio.Future]],
                          run: Callable[[np.ndarray], Awaitable]) -> None:
    """Calls `run` once on the callers' rows stacked in order and gives each caller its slice of
    the result, or the exception (each caller maps it as if it had called alone). Callers whose
    future is already done (cancelled) are skipped."""
    try:
        out = await run(np.concatenate([rows for rows, _ in pending]))
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
