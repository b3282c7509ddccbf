"""Concurrent calls' face detection is joined into one detector call (faces/detect_batcher.py):
calls that come while the worker is busy share the next call, each gets its own images' answer,
calls for another detector wait for their own call, a detector failure reaches every joined
caller, and a cancelled caller's images are not detected."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from revsearch_server.faces.detect_batcher import DetectionBatcher


class SlowDetector:
    """Answers each image with its own first pixel value and the key, after `delay` seconds; the
    first call waits for `release` so that others can queue behind it."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[object, list[int]]] = []
        self.release = threading.Event()
        self.delay = delay

    def __call__(self, key, images):
        if not self.calls:
            self.release.wait(5)
        self.calls.append((key, [int(img[0, 0, 0]) for img in images]))
        if any(int(img[0, 0, 0]) == 255 for img in images):
            raise RuntimeError("the detector broke")
        return [(key, int(img[0, 0, 0])) for img in images]


def _images(*values: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), v, np.uint8) for v in values]


async def _behind_a_busy_worker(batcher: DetectionBatcher, queue):
    """Starts a first call (images [1], key 20) that holds the worker until the detector is
    released, then lets queue() make the calls that wait behind it; returns (first, queued)."""
    first = asyncio.ensure_future(batcher.detect(20, _images(1)))
    await asyncio.sleep(0.05)  # the first call is in the detector, waiting for release
    queued = queue()
    await asyncio.sleep(0.05)
    return first, queued


@pytest.fixture()
def worker():
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def test_calls_arriving_while_the_worker_is_busy_share_one_detector_call_and_get_their_own_answers(worker):
    detector = SlowDetector()

    async def go():
        batcher = DetectionBatcher(worker, detector)
        first, later = await _behind_a_busy_worker(batcher, lambda: [
            asyncio.ensure_future(batcher.detect(20, _images(10 + k, 20 + k))) for k in range(3)])
        detector.release.set()
        return await first, await asyncio.gather(*later), batcher

    first, later, batcher = asyncio.run(go())
    assert first == [(20, 1)]
    assert later == [[(20, 10 + k), (20, 20 + k)] for k in range(3)]
    assert detector.calls == [(20, [1]), (20, [10, 20, 11, 21, 12, 22])]
    assert batcher.calls == 2 and batcher.requests == 4


def test_calls_for_another_detector_wait_for_their_own_call_in_arrival_order(worker):
    detector = SlowDetector()

    async def go():
        batcher = DetectionBatcher(worker, detector)
        first, others = await _behind_a_busy_worker(batcher, lambda: [
            asyncio.ensure_future(batcher.detect(key, _images(v))) for key, v in ((40, 2), (20, 3), (40, 4))])
        detector.release.set()
        return await asyncio.gather(first, *others)

    results = asyncio.run(go())
    assert results == [[(20, 1)], [(40, 2)], [(20, 3)], [(40, 4)]]
    assert detector.calls == [(20, [1]), (40, [2, 4]), (20, [3])]


def test_joined_calls_stop_at_the_image_limit(worker):
    detector = SlowDetector()

    async def go():
        batcher = DetectionBatcher(worker, detector, max_images=4)
        first, rest = await _behind_a_busy_worker(batcher, lambda: [
            asyncio.ensure_future(batcher.detect(20, _images(10 + k, 20 + k))) for k in range(3)])
        detector.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(go())
    assert [len(values) for _, values in detector.calls] == [1, 4, 2]


def test_a_detector_failure_reaches_every_joined_caller_and_the_next_calls_still_work(worker):
    detector = SlowDetector()

    async def go():
        batcher = DetectionBatcher(worker, detector)
        first, joined = await _behind_a_busy_worker(batcher, lambda: [
            asyncio.ensure_future(batcher.detect(20, _images(v))) for v in (5, 255)])
        detector.release.set()
        await first
        outcomes = await asyncio.gather(*joined, return_exceptions=True)
        return outcomes, await batcher.detect(20, _images(7))

    outcomes, after = asyncio.run(go())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert after == [(20, 7)]


def test_a_cancelled_callers_images_are_not_detected(worker):
    detector = SlowDetector()

    async def go():
        batcher = DetectionBatcher(worker, detector)
        first, (gone, kept) = await _behind_a_busy_worker(batcher, lambda: [
            asyncio.ensure_future(batcher.detect(20, _images(v))) for v in (9, 8)])
        gone.cancel()
        detector.release.set()
        return await first, await kept

    first, kept = asyncio.run(go())
    assert kept == [(20, 8)] and detector.calls == [(20, [1]), (20, [8])]


def test_no_images_need_no_detector_call(worker):
    detector = SlowDetector()
    detector.release.set()
    assert asyncio.run(DetectionBatcher(worker, detector).detect(20, [])) == [] and detector.calls == []
