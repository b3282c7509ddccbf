"""Each transport limit, proven against a running server (fake inference, Milvus Lite): streams per
connection, keepalive enforcement, metadata size, connection age, idle streams, concurrent calls."""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time

import grpc

from revsearch.v1 import search_service_pb2 as pb

SERVICE = "/revsearch.v1.SearchService/"


def _info(channel, timeout=10, metadata=()):
    return channel.unary_unary(SERVICE + "GetServerInfo", request_serializer=pb.GetServerInfoRequest.SerializeToString,
                               response_deserializer=pb.GetServerInfoResponse.FromString)(
        pb.GetServerInfoRequest(), timeout=timeout, metadata=metadata)


def _code(fn) -> grpc.StatusCode:
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


class OpenUpload:
    """An IndexVideo call that sends its header and then nothing until released."""

    def __init__(self, channel, collection: str = "clips"):
        self.release = threading.Event()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = threading.Event()

        def messages():
            yield pb.IndexVideoRequest(header=pb.VideoHeader(collection=collection))
            self.release.wait(60)

        call = channel.stream_unary(SERVICE + "IndexVideo", request_serializer=pb.IndexVideoRequest.SerializeToString,
                                    response_deserializer=pb.IndexVideoResponse.FromString)

        def run():
            try:
                call(messages(), timeout=60)
                self.code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                self.code, self.details = err.code(), err.details()
            self.ended.set()

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.ended.wait(30)


def _server(start_server, **settings):
    server = start_server(fakes=True, **settings)
    from revsearch import SearchClient

    with SearchClient(server.address) as client:
        client.create_collection("clips", media_type="video")
    return server


def test_a_connection_carries_at_most_max_concurrent_streams_calls(start_server):
    server = _server(start_server, max_concurrent_streams=2, stream_idle_timeout_s=30)
    with grpc.insecure_channel(server.address) as channel:
        held = [OpenUpload(channel) for _ in range(2)]
        time.sleep(0.5)
        # A third call on the same connection waits for a free stream; on a new connection it goes.
        assert _code(lambda: _info(channel, timeout=1.0)) == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
            assert _code(lambda: _info(other)) == grpc.StatusCode.OK
        for h in held:
            h.close()
        assert _code(lambda: _info(channel)) == grpc.StatusCode.OK


def test_a_client_that_pings_too_often_is_disconnected(start_server):
    server = _server(start_server, keepalive_min_interval_s=10, stream_idle_timeout_s=30)
    aggressive = [("grpc.keepalive_time_ms", 200), ("grpc.keepalive_timeout_ms", 1000),
                  ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(server.address, options=aggressive) as channel:
        upload = OpenUpload(channel)
        assert upload.ended.wait(20), "the server kept a connection that pings every 200 ms"
        assert upload.code == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as polite:
        assert _code(lambda: _info(polite)) == grpc.StatusCode.OK


def test_metadata_over_the_limit_is_refused_and_the_server_keeps_serving(start_server):
    server = _server(start_server, max_metadata_bytes=4096)
    with grpc.insecure_channel(server.address) as channel:
        code = _code(lambda: _info(channel, metadata=(("x-padding", "p" * 8192),)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc's own answer, before any handler runs
        assert _code(lambda: _info(channel, metadata=(("x-padding", "p" * 1024),))) == grpc.StatusCode.OK


def test_a_connection_past_its_maximum_age_is_closed_after_the_grace_period(start_server):
    server = _server(start_server, max_connection_age_s=1.0, max_connection_age_grace_s=1.0, stream_idle_timeout_s=30)
    with grpc.insecure_channel(server.address) as channel:
        upload = OpenUpload(channel)
        started = time.monotonic()
        assert upload.ended.wait(15)
        assert upload.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 10
        assert _code(lambda: _info(channel)) == grpc.StatusCode.OK  # the client reconnects


def test_a_stream_idle_past_the_timeout_ends_with_deadline_exceeded_and_frees_what_it_held(start_server):
    server = _server(start_server, stream_idle_timeout_s=1.0)
    spooled_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "revsearch-upload-*")))
    with grpc.insecure_channel(server.address) as channel:
        upload = OpenUpload(channel)
        started = time.monotonic()
        assert upload.ended.wait(15)
        assert upload.code == grpc.StatusCode.DEADLINE_EXCEEDED and "sent nothing for 1 s" in upload.details
        assert time.monotonic() - started < 5
        upload.close()
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "revsearch-upload-*"))) <= spooled_before
    registry = server.server.metrics.registry
    assert registry.get_sample_value("revsearch_inflight_images") == 0


def test_calls_beyond_the_concurrency_cap_are_refused_with_a_retry_hint_not_queued(start_server):
    server = _server(start_server, max_concurrent_rpcs=2, stream_idle_timeout_s=30)
    with grpc.insecure_channel(server.address) as channel:
        held = [OpenUpload(channel) for _ in range(2)]
        time.sleep(0.5)
        try:
            _info(channel)
            refused = None
        except grpc.RpcError as err:
            refused = err
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(refused.trailing_metadata())["retry-after-ms"]) > 0
        for h in held:
            h.close()
        time.sleep(0.2)
        assert _code(lambda: _info(channel)) == grpc.StatusCode.OK


def test_one_client_with_128_concurrent_calls_gets_every_answer(fake_server):
    """Busy clients share one connection: at the old limit of 100 streams, 128 callers on one channel got
    thousands of UNAVAILABLE (REFUSED_STREAM) answers within seconds, though never 100 calls were open."""
    import asyncio

    from revsearch.client import AsyncSearchClient

    async def run() -> list:
        async with AsyncSearchClient(fake_server.address, timeout=60) as client:
            async def caller():
                return [await client.info() for _ in range(15)]

            return await asyncio.gather(*(caller() for _ in range(128)), return_exceptions=True)

    results = asyncio.run(run())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures and sum(len(r) for r in results) == 128 * 15
