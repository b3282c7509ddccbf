"""Receiving a chunked upload: the header message first, then bytes spooled to a temporary file.

OpenCV reads videos from files, so chunks go straight to disk (never whole into memory) while
their sha256 is computed. The byte limit is enforced as chunks arrive, so an oversized upload
stops at the limit instead of after the last byte.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import AsyncIterator

from ..errors import InvalidArgument, ResourceExhausted


@dataclass
class Spooled:
    path: str
    sha256: str
    size: int

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


async def spool_chunks(messages: AsyncIterator, first_chunk: bytes, max_bytes: int, what: str) -> Spooled:
    """Writes first_chunk and the `chunk` of every later message to a temporary file.

    messages yield request messages with a `part` oneof of header/chunk; a second header is an
    error. The file is removed again on any error or cancellation."""
    fd, path = tempfile.mkstemp(prefix="revsearch-upload-", suffix=".bin")
    spooled = Spooled(path, "", 0)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            async def write(data: bytes) -> None:
                spooled.size += len(data)
                if spooled.size > max_bytes:
                    raise ResourceExhausted(f"{what} is over the limit of {max_bytes} bytes (--max-video-bytes)")
                digest.update(data)
                f.write(data)

            if first_chunk:
                await write(first_chunk)
            async for message in messages:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(f"{what}: only the first message may carry a header; later messages "
                                          "carry chunks of bytes")
                await write(message.chunk)
        if spooled.size == 0:
            raise InvalidArgument(f"{what} is empty: send the file's bytes as chunks after the header")
        spooled.sha256 = digest.hexdigest()
        return spooled
    except BaseException:
        spooled.remove()
        raise
