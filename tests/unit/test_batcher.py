"""The micro-batcher gathers concurrent requests, keeps order and spreads errors."""

import asyncio

import numpy as np

from revsearch_server.embedding.batcher import MicroBatcher


def test_concurrent_requests_share_backend_calls_and_get_their_own_rows():
    calls = []

    async def run(x):
        calls.append(len(x))
        await asyncio.sleep(0.01)
        return x * 2

    async def main():
        b = MicroBatcher(run, max_size=8, max_wait_s=0.02)
        outs = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32)) for i in range(16)))
        await b.close()
        return outs

    outs = asyncio.run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(16)]
    assert sum(calls) == 16 and len(calls) < 16 and max(calls) <= 8


def test_a_backend_error_reaches_every_caller_of_that_batch():
    async def run(x):
        raise RuntimeError("backend down")

    async def main():
        b = MicroBatcher(run, max_size=4, max_wait_s=0.01)
        results = await asyncio.gather(*(b.submit(np.zeros((1, 2))) for _ in range(3)), return_exceptions=True)
        await b.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_a_multi_row_request_is_kept_whole():
    async def main():
        b = MicroBatcher(lambda x: asyncio.sleep(0, result=x + 1), max_size=4, max_wait_s=0.0)
        out = await b.submit(np.zeros((6, 3)))
        await b.close()
        return out

    out = asyncio.run(main())
    assert out.shape == (6, 3) and out.min() == 1


def test_a_cancelled_request_is_not_embedded_and_batch_sizes_are_measured():
    from revsearch_server.observability import Metrics

    calls = []

    async def run(x):
        calls.append(x[:, 0].tolist())
        return x

    async def main():
        metrics = Metrics()
        b = MicroBatcher(run, max_size=8, max_wait_s=0.05, metrics=metrics, name="m")
        gone = asyncio.ensure_future(b.submit(np.full((2, 1), 9.0)))
        kept = asyncio.ensure_future(b.submit(np.full((1, 1), 1.0)))
        await asyncio.sleep(0.01)  # both queued, the batch still filling
        assert metrics.registry.get_sample_value("revsearch_embed_queue_images", {"model": "m"}) == 3
        gone.cancel()  # the client went away (or its deadline passed)
        out = await kept
        await b.close()
        return out, metrics

    out, metrics = asyncio.run(main())
    assert calls == [[1.0]] and out.tolist() == [[1.0]]
    assert metrics.registry.get_sample_value("revsearch_batch_size_count", {"model": "m"}) == 1
    assert metrics.registry.get_sample_value("revsearch_batch_size_sum", {"model": "m"}) == 1
    assert metrics.registry.get_sample_value("revsearch_embed_queue_images", {"model": "m"}) == 0
