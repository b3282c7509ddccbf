"""The transport's reusable pieces on their own: read-ahead batching, the upload receiver, the
tolerant deserializer and the rate-limited log line."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from revsearch.v1 import search_service_pb2 as pb
from revsearch_server.errors import InvalidArgument, ResourceExhausted
from revsearch_server.transport.calls import Malformed, RateLimitedLog, tolerant_deserializer
from revsearch_server.transport.streams import read_ahead
from revsearch_server.transport.uploads import ChunkBody, first_header


async def _items(values, fail_at=None, delay=0.0):
    for n, v in enumerate(values):
        if n == fail_at:
            raise InvalidArgument(f"bad item {n}")
        if delay:
            await asyncio.sleep(delay)
        yield v


def _batches(source, max_batch):
    async def main():
        return [batch async for batch in read_ahead(source, max_batch)]
    return asyncio.run(main())


def test_read_ahead_keeps_the_order_and_positions_and_never_exceeds_the_batch_size():
    batches = _batches(_items(range(23)), 4)
    assert [p for b in batches for p, _ in b] == list(range(23))
    assert [v for b in batches for _, v in b] == list(range(23))
    assert max(len(b) for b in batches) <= 4


def test_read_ahead_batches_what_has_arrived_while_the_consumer_was_busy():
    async def main():
        sizes = []
        async for batch in read_ahead(_items(range(12), delay=0.01), 8):
            sizes.append(len(batch))
            await asyncio.sleep(0.05)  # the reader fills the queue meanwhile
        return sizes
    sizes = asyncio.run(main())
    assert sum(sizes) == 12 and sizes[0] == 1 and max(sizes) > 1


def test_read_ahead_raises_a_bad_item_after_the_items_before_it():
    async def main():
        seen = []
        with pytest.raises(InvalidArgument, match="bad item 3"):
            async for batch in read_ahead(_items(range(10), fail_at=3, delay=0.01), 2):
                seen.extend(v for _, v in batch)
        return seen
    assert asyncio.run(main()) == [0, 1, 2]


def test_an_empty_stream_gives_no_batch():
    assert _batches(_items([]), 4) == []


async def _messages(*parts):
    for p in parts:
        yield p


def _chunk(data: bytes):
    return pb.IndexVideoRequest(chunk=data)


def test_the_upload_receiver_spools_chunks_with_their_digest_and_removes_the_file_afterwards():
    async def main():
        messages = _messages(pb.IndexVideoRequest(header=pb.VideoHeader(collection="c")), _chunk(b"abc"), _chunk(b"de"))
        header = await first_header(messages, "IndexVideoRequest")
        async with ChunkBody(messages).receive(100, "the video") as spooled:
            assert open(spooled.path, "rb").read() == b"abcde" and spooled.size == 5
            path = spooled.path
        return header, spooled, path
    header, spooled, path = asyncio.run(main())
    import hashlib
    assert header.collection == "c" and spooled.sha256 == hashlib.sha256(b"abcde").hexdigest()
    assert not os.path.exists(path)


@pytest.mark.parametrize("parts, error, match", [
    ([_chunk(b"x" * 60), _chunk(b"y" * 60)], ResourceExhausted, "over the limit of 100 bytes"),
    ([], InvalidArgument, "is empty"),
    ([_chunk(b"x"), pb.IndexVideoRequest(header=pb.VideoHeader())], InvalidArgument, "only the first message"),
])
def test_the_upload_receiver_refuses_oversized_empty_or_doubled_headers_and_leaves_no_file(parts, error, match,
                                                                                          tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def main():
        async with ChunkBody(_messages(*parts)).receive(100, "the video"):
            pass
    with pytest.raises(error, match=match):
        asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


def test_a_stream_must_start_with_its_header():
    with pytest.raises(InvalidArgument, match="must carry the header"):
        asyncio.run(first_header(_messages(_chunk(b"x")), "IndexVideoRequest"))


def test_the_tolerant_deserializer_returns_a_marker_naming_the_type_instead_of_raising():
    decode = tolerant_deserializer(pb.SearchImagesRequest)
    good = pb.SearchImagesRequest(collection="c", top_k=3)
    assert decode(good.SerializeToString()) == good
    bad = decode(b"\x0a\xff\xff\xff\xff\x0f")
    assert isinstance(bad, Malformed) and bad.type_name == "revsearch.v1.SearchImagesRequest"


def test_the_rate_limited_log_writes_one_line_per_interval_and_counts_the_rest(caplog):
    now = [0.0]
    limited = RateLimitedLog(every_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    logged = [limited.warning("rpc", "malformed %s", n) for n in range(50)]
    now[0] = 10.5
    logged.append(limited.warning("rpc", "malformed %s", 50))
    assert logged.count(True) == 2
    assert caplog.records[-1].getMessage() == "malformed 50 (49 similar lines suppressed)"
