"""Admission control: a bounded number of images in flight; overload is refused with a retry hint,
streams wait (bounded) for room, and cancelled work always gives its slots back."""

import asyncio

import pytest

from revsearch_server.admission import Admission
from revsearch_server.config import parse
from revsearch_server.errors import Overloaded, ResourceExhausted
from revsearch_server.observability import Metrics


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_unary_call_over_the_limit_is_refused_at_once_with_a_retry_hint():
    metrics = Metrics()
    a = Admission(3, metrics=metrics)
    assert a.try_take(2, "EmbedImage") == 2
    with pytest.raises(Overloaded) as refused:
        a.try_take(2, "EmbedImage")
    assert isinstance(refused.value, ResourceExhausted)
    assert 50 <= refused.value.retry_after_ms <= 5000
    assert "overloaded" in str(refused.value) and "--max-inflight-images" in str(refused.value)
    assert a.try_take(1) == 1 and a.inflight == 3
    a.release(3)
    assert a.inflight == 0 and a.try_take(3) == 3
    assert metrics.registry.get_sample_value("revsearch_rejected_total", {"rpc": "EmbedImage"}) == 1
    assert metrics.registry.get_sample_value("revsearch_inflight_images") == 3


def test_calls_without_images_take_no_slots_and_a_call_larger_than_the_limit_runs_alone():
    a = Admission(4)
    assert a.try_take(0) == 0 and a.inflight == 0
    assert a.try_take(64) == 4  # all of them
    with pytest.raises(Overloaded):
        a.try_take(1)
    assert a.try_take(0) == 0  # a search by vector is never refused


def test_the_retry_hint_is_the_time_to_finish_the_work_in_flight_at_the_recent_rate():
    clock = FakeClock()
    a = Admission(100, clock=clock)
    a.try_take(100)
    for _ in range(10):  # 50 images completed over 5 s: 10 images/s
        a.release(5)
        clock.now += 0.5
    a.try_take(50)
    assert a.inflight == 100 and a.completion_rate() == pytest.approx(10.0, rel=0.01)
    assert a.retry_after_ms() == 5000  # 100 images at 10/s is 10 s: clamped
    a.release(95)
    clock.now += 0.01
    assert a.retry_after_ms() == pytest.approx(5 / a.completion_rate() * 1000, abs=1)
    clock.now += 60  # nothing completed recently: the default rate, 20 images/s
    assert a.completion_rate() == 20.0 and a.retry_after_ms() == 250
    a.release(4)  # 4 images/s (a burst counts as over one second), one image in flight
    assert a.retry_after_ms() == 250
    a.try_take(99)
    a.release(99)  # fast completions: one image in flight is 10 ms of work, clamped from below
    assert a.retry_after_ms() == 50


def test_a_stream_waits_for_room_and_streams_are_admitted_in_order():
    async def main():
        a = Admission(2)
        a.try_take(2)
        order = []

        async def stream(name, n):
            async with a.slots(n, "IndexImages", wait=True):
                order.append(name)
                await asyncio.sleep(0.01)

        waiting = [asyncio.create_task(stream("first", 2)), asyncio.create_task(stream("second", 1))]
        await asyncio.sleep(0.01)
        assert order == [] and a.waiting == 3
        with pytest.raises(Overloaded):  # unary calls do not jump the queue
            a.try_take(1)
        a.release(2)
        await asyncio.gather(*waiting)
        return order, a.inflight

    assert asyncio.run(main()) == (["first", "second"], 0)


def test_a_stream_that_waits_too_long_is_refused_and_leaves_nothing_taken():
    async def main():
        a = Admission(1, max_wait_s=0.05)
        a.try_take(1)
        with pytest.raises(Overloaded, match="no room for 1 images within 0.05 s"):
            await a.take(1, "IndexImages")
        return a.inflight, a.waiting

    assert asyncio.run(main()) == (1, 0)


def test_cancelled_work_gives_its_slots_back_whether_waiting_or_working():
    async def main():
        a = Admission(2)
        started = asyncio.Event()

        async def work():
            async with a.slots(2, "EmbedImage"):
                started.set()
                await asyncio.sleep(10)

        worker = asyncio.create_task(work())
        await started.wait()
        waiter = asyncio.create_task(a.take(1, "IndexImages"))
        await asyncio.sleep(0.01)
        waiter.cancel()  # cancelled while waiting
        worker.cancel()  # cancelled while working (a deadline passing)
        await asyncio.gather(worker, waiter, return_exceptions=True)
        return a.inflight, a.waiting, a.try_take(2)

    assert asyncio.run(main()) == (0, 0, 2)


def test_a_waiter_granted_room_as_it_is_cancelled_gives_the_room_back():
    async def main():
        a = Admission(1)
        a.try_take(1)
        waiter = asyncio.create_task(a.take(1))
        await asyncio.sleep(0)
        a.release(1)  # grants the waiter...
        waiter.cancel()  # ...which is cancelled before it runs again
        await asyncio.gather(waiter, return_exceptions=True)
        return a.inflight

    assert asyncio.run(main()) == 0


def test_the_limits_come_from_flags_or_environment(monkeypatch):
    assert parse([]).max_inflight_images == 256 and parse([]).metrics_port == 9464
    monkeypatch.setenv("REVSEARCH_MAX_INFLIGHT_IMAGES", "7")
    monkeypatch.setenv("REVSEARCH_HEALTH_INTERVAL_S", "0.5")
    s = parse(["--metrics-port", "-1", "--admission-wait-s", "3"])
    assert (s.max_inflight_images, s.health_interval_s, s.metrics_port, s.admission_wait_s) == (7, 0.5, -1, 3.0)


def test_a_choice_set_by_environment_that_is_not_one_of_the_flags_choices_stops_with_the_choices(monkeypatch, capsys):
    monkeypatch.setenv("REVSEARCH_FACE_NET_RUNTIME", "tensorrt")
    with pytest.raises(SystemExit) as stopped:
        parse([])
    assert stopped.value.code == 2
    assert "invalid choice 'tensorrt' from REVSEARCH_FACE_NET_RUNTIME (choose from auto, openvino, onnxruntime)" \
        in capsys.readouterr().err
    monkeypatch.setenv("REVSEARCH_FACE_NET_RUNTIME", "onnxruntime")
    assert parse([]).face_net_runtime == "onnxruntime"
