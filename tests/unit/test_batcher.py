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
