"""Read-ahead batching of a request stream (IndexImages): whatever has arrived goes as one batch.

A reader task moves requests into a bounded queue; the consumer takes the first waiting item and
everything else already queued, up to `max_batch`. The bound is the flow control: when the
queue is full the reader stops reading, and gRPC's window makes the client wait instead of the
server buffering without limit. While a batch is being worked on (and waits for admission),
the queue fills and the client is held back the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def read_ahead(items: AsyncIterator[T], max_batch: int) -> AsyncIterator[list[tuple[int, T]]]:
    """Batches of (position in the stream, item), in order. An error of `items` (a bad request)
    is raised here once the batches before it have been taken; the reader stops with the consumer."""
    max_batch = max(1, max_batch)
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * max_batch)

    async def read():
        position = 0
        async for item in items:
            await queue.put((position, item))
            position += 1
        await queue.put(_DONE)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        finished = False
        while not finished:
            first = await _next_or_reader_error(queue, reader)
            if first is _DONE:
                return
            batch = [first]
            while len(batch) < max_batch and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is _DONE:
                    finished = True
                    break
                batch.append(nxt)
            yield batch
    finally:
        reader.cancel()


async def _next_or_reader_error(queue: asyncio.Queue, reader: asyncio.Task):
    """The next queued item; if the reader failed first, its error."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if reader.exception() is not None:
        raise reader.exception()
    return await queue.get()
