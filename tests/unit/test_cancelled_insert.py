"""An insert whose request is cancelled (client gone, deadline passed) is whole or gone: never half."""

import asyncio
import time

import numpy as np
import pytest

from revsearch_server.errors import Unavailable
from revsearch_server.index.base import Record, insert_or_undo
from revsearch_server.index.exact_knn import ExactKnnIndex


def records(n: int, dim: int = 4) -> list[Record]:
    rng = np.random.default_rng(0)
    return [Record(id=f"item{i}", vector=rng.normal(size=dim).astype(np.float32), uri=f"mem://{i}", sha256=f"{i:064x}",
                   model="m", model_version="1", created_at_ms=0) for i in range(n)]


class SlowExactKnn(ExactKnnIndex):
    """Writes its segment slowly, like a store call in flight."""

    def _write_segment(self, recs):
        time.sleep(0.2)
        super()._write_segment(recs)


async def cancel_during(coro, after_s: float):
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(after_s)
    task.cancel()
    result = await asyncio.gather(task, return_exceptions=True)
    return result[0]


def test_an_insert_cancelled_midway_is_finished_then_removed_also_after_a_restart(tmp_path):
    index = SlowExactKnn(tmp_path, 4)
    outcome = asyncio.run(cancel_during(insert_or_undo(index, records(3)), 0.05))
    assert isinstance(outcome, asyncio.CancelledError)
    assert asyncio.run(index.count()) == 0
    assert asyncio.run(ExactKnnIndex(tmp_path, 4).count()) == 0  # the segment on disk is tombstoned


def test_an_insert_that_is_not_cancelled_is_kept(tmp_path):
    index = ExactKnnIndex(tmp_path, 4)
    asyncio.run(insert_or_undo(index, records(3)))
    assert asyncio.run(index.count()) == 3


class FailingIndex:
    def __init__(self):
        self.deleted = []

    async def insert(self, recs):
        await asyncio.sleep(0.1)
        raise Unavailable("store down")  # cleans up after itself, by contract

    async def delete(self, ids):
        self.deleted.append(ids)
        return ids


def test_a_failed_insert_is_not_deleted_again_when_its_caller_is_cancelled():
    index = FailingIndex()

    async def main():
        outcome = await cancel_during(insert_or_undo(index, records(2)), 0.02)
        await asyncio.sleep(0.2)
        return outcome

    assert isinstance(asyncio.run(main()), asyncio.CancelledError)
    assert index.deleted == []


def test_a_failed_insert_raises_its_error():
    with pytest.raises(Unavailable):
        asyncio.run(insert_or_undo(FailingIndex(), records(1)))
