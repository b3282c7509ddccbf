"""Receiving a chunked upload (IndexVideo, SearchVideos): the header message first, then the
file's bytes as chunks, spooled to a temporary file.

OpenCV reads videos from files, so chunks go straight to disk (never whole into memory) while
their sha256 is computed. The byte limit is enforced as chunks arrive, so an oversized upload
stops at the limit instead of after the last byte. The file is removed when the receiving
context ends, on success, error or cancellation alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator

from ..errors import InvalidArgument, ResourceExhausted
from ..usecases.videos import Spooled


async def first_header(messages: AsyncIterator, kind: str):
    """The first message's header, or INVALID_ARGUMENT. messages have a `part` oneof of
    header/chunk."""
    first = await anext(messages, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument(f"the first {kind} must carry the header (collection and options); the file's "
                              "bytes follow as chunks")
    return first.header


class ChunkBody:
    """The UploadBody (usecases/videos.py) of a request stream whose header was read already."""

    def __init__(self, messages: AsyncIterator):
        self._messages = messages

    async def expect_empty(self, why: str) -> None:
        if await anext(self._messages, None) is not None:
            raise InvalidArgument(why)

    @contextlib.asynccontextmanager
    async def receive(self, max_bytes: int, what: str):
        spooled = await spool_chunks(self._messages, max_bytes, what)
        try:
            yield spooled
        finally:
            _remove(spooled.path)


async def spool_chunks(messages: AsyncIterator, max_bytes: int, what: str) -> Spooled:
    """Writes the `chunk` of every message to a temporary file; a second header is an error.
    The file is removed again on any error or cancellation."""
    fd, path = tempfile.mkstemp(prefix="revsearch-upload-", suffix=".bin")
    size, digest = 0, hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            async for message in messages:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(f"{what}: only the first message may carry a header; later messages "
                                          "carry chunks of bytes")
                size += len(message.chunk)
                if size > max_bytes:
                    raise ResourceExhausted(f"{what} is over the limit of {max_bytes} bytes (--max-video-bytes)")
                digest.update(message.chunk)
                f.write(message.chunk)
        if size == 0:
            raise InvalidArgument(f"{what} is empty: send the file's bytes as chunks after the header")
        return Spooled(path, digest.hexdigest(), size)
    except BaseException:
        _remove(path)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
