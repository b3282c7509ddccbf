"""Concurrent searches of one collection share index calls and each caller gets its own hits."""

import asyncio

import numpy as np
import pytest

from revsearch_server.index.base import Record
from revsearch_server.index.coalescer import SearchCoalescer
from revsearch_server.index.exact_knn import ExactKnnIndex


def _records(n: int, dim: int = 16) -> list[Record]:
    vecs = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [Record(id=f"id{i}", vector=vecs[i], uri=f"u{i}", sha256=f"{i:064x}", model="m", model_version="1",
                   created_at_ms=i) for i in range(n)]


class CountingIndex:
    """The real exact-KNN index, with its search calls counted (and slowed, so that searches overlap)."""

    def __init__(self, index: ExactKnnIndex, fail: bool = False):
        self._index, self.calls, self._fail = index, [], fail

    @property
    def search_key(self):
        return id(self)

    async def search(self, queries, k):
        self.calls.append(len(queries))
        await asyncio.sleep(0.02)
        if self._fail:
            raise RuntimeError("milvus went away")
        return await self._index.search(queries, k)


@pytest.fixture
def stored(tmp_path):
    recs = _records(300)
    index = ExactKnnIndex(tmp_path, 16)
    asyncio.run(index.insert(recs))
    return index, recs


def test_concurrent_searches_share_calls_and_get_the_same_hits_as_alone(stored):
    index, recs = stored
    counting = CountingIndex(index)

    async def main():
        coalescer = SearchCoalescer(max_queries=64)
        first = asyncio.ensure_future(coalescer.search(counting, recs[0].vector[None, :], 5))
        await asyncio.sleep(0)  # it has gone to the index; the next 39 arrive while it runs
        rest = await asyncio.gather(*(coalescer.search(counting, recs[i].vector[None, :], 5) for i in range(1, 40)))
        together = [await first, *rest]
        alone = [await index.search(recs[i].vector[None, :], 5) for i in range(40)]
        return together, alone

    together, alone = asyncio.run(main())
    assert [[h.id for h in t[0]] for t in together] == [[h.id for h in a[0]] for a in alone]
    assert [t[0][0].id for t in together] == [f"id{i}" for i in range(40)]
    # The first search goes alone and at once; the 39 that queued behind it go as one call.
    assert counting.calls == [1, 39]


def test_a_lone_search_is_not_held_back_and_max_queries_caps_a_call(stored):
    index, recs = stored
    counting = CountingIndex(index)

    async def main():
        coalescer = SearchCoalescer(max_queries=8)
        await coalescer.search(counting, recs[0].vector[None, :], 3)
        multi = np.stack([r.vector for r in recs[:3]])  # a batch query counts all its vectors
        return await asyncio.gather(*(coalescer.search(counting, multi, 3) for _ in range(4)))

    results = asyncio.run(main())
    assert counting.calls[0] == 1
    # Four searches of 3 vectors arrive together: two per call, as 3 more would pass 8.
    assert counting.calls[1:] == [6, 6]
    assert all([hits[0].id for hits in r] == ["id0", "id1", "id2"] for r in results)


def test_searches_with_different_top_k_or_index_are_not_mixed(stored, tmp_path):
    index, recs = stored
    a, b = CountingIndex(index), CountingIndex(index)

    async def main():
        coalescer = SearchCoalescer()
        q = recs[1].vector[None, :]
        return await asyncio.gather(coalescer.search(a, q, 3), coalescer.search(a, q, 7), coalescer.search(b, q, 3))

    r3, r7, other = asyncio.run(main())
    assert (len(r3[0]), len(r7[0]), len(other[0])) == (3, 7, 3)
    assert sorted(a.calls) == [1, 1] and b.calls == [1]


def test_an_index_error_reaches_every_caller_of_that_call_and_the_next_search_works(stored):
    index, recs = stored
    failing = CountingIndex(index, fail=True)

    async def main():
        coalescer = SearchCoalescer()
        results = await asyncio.gather(*(coalescer.search(failing, recs[i].vector[None, :], 3) for i in range(5)),
                                       return_exceptions=True)
        failing._fail = False
        after = await coalescer.search(failing, recs[2].vector[None, :], 3)
        return results, after

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "went away" in str(r) for r in results)
    assert after[0][0].id == "id2"


def test_a_cancelled_caller_leaves_the_others_answered(stored):
    index, recs = stored
    counting = CountingIndex(index)

    async def main():
        coalescer = SearchCoalescer()
        first = asyncio.ensure_future(coalescer.search(counting, recs[0].vector[None, :], 3))
        await asyncio.sleep(0)  # the first call is running; these three queue behind it
        queued = [asyncio.ensure_future(coalescer.search(counting, recs[i].vector[None, :], 3)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        queued[1].cancel()
        done = await asyncio.gather(first, queued[0], queued[2], return_exceptions=True)
        return done, queued[1].cancelled(), coalescer._lanes

    done, cancelled, lanes = asyncio.run(main())
    assert [d[0][0].id for d in done] == ["id0", "id1", "id3"]
    assert cancelled and counting.calls == [1, 2]  # the cancelled search was not sent
    assert lanes == {}  # nothing left behind once the searches are answered


def test_max_queries_one_turns_coalescing_off(stored):
    index, recs = stored
    counting = CountingIndex(index)

    async def main():
        coalescer = SearchCoalescer(max_queries=1)
        return await asyncio.gather(*(coalescer.search(counting, recs[i].vector[None, :], 3) for i in range(4)))

    asyncio.run(main())
    assert counting.calls == [1, 1, 1, 1]
