"""Crash and dependency chaos, small and bounded (the full runs: benchmarks/bench_chaos.py).

* The server, run as users run it, is killed -9 with its children (Milvus Lite; as when a container
  crashes) again and again while a client indexes and re-sends what was not acknowledged: every
  acknowledged item is found by its id, nothing is stored twice, the count is the number of distinct
  images sent; the same for clips through IndexVideo.
* The embedded Milvus server is killed -9 and restarted under search load: once a call has found it
  gone, every call fails at once with UNAVAILABLE and health says NOT_SERVING until Milvus serves reads
  again (after a kill it listens soon after its restart, but serves reads only once the dead process's
  session has expired, ~30 s after the kill); the server serves again by itself within 15 s of that,
  without losing an acknowledged write.
* The managed Triton is killed -9 under load, three times: the local fallback answers meanwhile, the
  server returns to Triton by itself, and a killed Triton leaves no backend stub or /dev/shm region.

Every process is started in its own session, so a kill takes its whole group, and every group
started here is killed again at the end of its test (and checked to be gone).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import RevsearchClientError
from revsearch.v1 import search_service_pb2 as pb
from revsearch_testkit.chaos import (ACKED, NOT_SERVING, SERVING, Group, Indexer, Item, after_acks, alive, children,
                                     chunks, comm, describes, health, identity, into_a_call, items_from, milvus_reads,
                                     milvus_server, revsearch_server, still, triton_tree, wait_for)
from tests.helpers import VIDEO, free_port, lfw_images

pytestmark = pytest.mark.integration

MILVUS_DEADLINE_S = 2.0


# -- processes (revsearch_testkit/chaos.py starts and kills them) -----------------------------------
@pytest.fixture
def processes():
    """Groups to stop after the test, whatever happened; then none of their processes may be left."""
    started: list[Group] = []
    yield started
    for g in reversed(started):
        g.stop()
    deadline = time.monotonic() + 20
    while any(g.leftovers() for g in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {g.name: g.leftovers() for g in started if g.leftovers()}
    assert not left, f"processes left running: {left}"


# -- kill -9 while indexing -----------------------------------------------------------------------
def lfw_items(count: int) -> list[Item]:
    return items_from(lfw_images(count))


def kill_repeatedly(server: Group, kills: int, busy, serving, next_moment) -> list[float]:
    """Kills the server's group -9 at the moments next_moment() makes, while busy(), restarting it
    at once on the same port and data; the seconds from each kill to the first successful call."""
    serve_again = []
    while len(serve_again) < kills and busy():
        due, waited = next_moment(), time.monotonic()
        while busy() and not due() and time.monotonic() - waited < 60:
            time.sleep(0.01)
        if not busy() or not due():
            break
        killed = time.monotonic()
        server.kill9()
        server.start()
        wait_for(serving, 60)
        serve_again.append(time.monotonic() - killed)
    return serve_again


def check_images(address: str, collection: str, items: list[Item], acks: dict[str, str],
                 by_bytes: int | None = None) -> dict:
    """Every acknowledged item found by its id (its stored vector finds itself first) and by its
    bytes (every one, or a seeded sample of by_bytes) at rank 1; nothing stored twice."""
    by_sha: dict[str, set[str]] = collections.defaultdict(set)
    for it in items:
        if it.id in acks:
            by_sha[it.sha256].add(acks[it.id])
    lost, twice = [], []
    with SearchClient(address, timeout=120) as client:
        count = client.describe_collection(collection).item_count
        stored_ids = sorted({i for ids in by_sha.values() for i in ids})
        for part in chunks(stored_ids, 64):  # found by its id: its stored vector finds itself first
            res = client.batch_search(collection, [{"item_id": i} for i in part], top_k=1)
            lost += [i for i, r in zip(part, res.results) if r.error.code or not r.hits or r.hits[0].id != i]
        firsts = list({it.sha256: it for it in reversed(items) if it.id in acks}.values())
        if by_bytes is not None and by_bytes < len(firsts):
            firsts = random.Random(1).sample(firsts, by_bytes)
        for part in chunks(firsts, 16):  # and by its bytes, once
            res = client.batch_search(collection, [it.data for it in part], top_k=2)
            for it, r in zip(part, res.results):
                hits = [h.id for h in r.hits]
                if not hits or hits[0] != acks[it.id]:
                    lost.append(acks[it.id])
                elif hits[1:2] == hits[:1]:
                    twice.append(acks[it.id])
    twice += [sha for sha, ids in by_sha.items() if len(ids) > 1]  # one image acknowledged under two ids
    return {"count": count, "distinct_sent": len({it.sha256 for it in items}), "acknowledged": len(acks),
            "lost": sorted(set(lost)), "twice": sorted(set(twice))}


def test_a_server_killed_again_and_again_while_indexing_loses_and_duplicates_nothing(tmp_path, processes):
    port, rng = free_port(), random.Random(4)
    # Enough images that three kills land while indexing runs: each kill waits for 15-35 more
    # acknowledgments and up to 1 s more, and 150 images had once been all indexed after two.
    items = lfw_items(240)
    items.append(Item("resent-copy", "copy", items[3].data, items[3].sha256))  # the same bytes again
    server = revsearch_server(tmp_path / "data", port, "--triton-url", "off")
    processes.append(server)
    server.start()
    with SearchClient(server.address, timeout=30) as client:
        client.create_collection("chaos", exist_ok=True)
    indexer = Indexer(server.address, "chaos", items, time_limit_s=150)
    thread = threading.Thread(target=indexer.run, daemon=True)
    started = time.monotonic()
    thread.start()
    serve_again = kill_repeatedly(server, 3, busy=lambda: not indexer.done.is_set(),
                                  serving=lambda: describes(server.address, "chaos"),
                                  next_moment=after_acks(rng, lambda: len(indexer.acks), (15, 35), (0.0, 1.0)))
    thread.join(170)
    indexed_s = time.monotonic() - started
    assert indexer.done.is_set() and not indexer.pending(), f"not acknowledged: {len(indexer.pending())}"
    # Once more after the last write, so everything is read back from what survived a crash.
    server.kill9()
    server.start()
    wait_for(lambda: describes(server.address, "chaos"), 60)
    result = check_images(server.address, "chaos", items, indexer.acks, by_bytes=40)
    print(f"indexed in {indexed_s:.1f} s, checked in {time.monotonic() - started - indexed_s:.1f} s; "
          f"kills {len(serve_again) + 1}, serve again after {[round(s, 2) for s in serve_again]} s, "
          f"stream errors {dict(indexer.stream_errors)}, statuses {dict(indexer.statuses)}, {result}")
    assert len(serve_again) == 3, "the indexing ended before every kill"
    assert sum(indexer.stream_errors.values()) >= 3  # each kill cut a stream
    assert result["lost"] == [] and result["twice"] == []
    assert result["acknowledged"] == len(items)
    assert indexer.acks["resent-copy"] == items[3].id
    assert result["count"] == result["distinct_sent"] == len(items) - 1


CLIPS = ["video-retalking_face_3.mp4", "video-retalking_face_5.mp4"]


def index_clips_until_acknowledged(address: str, collection: str, clips: list[Path], time_limit_s: float,
                                   acks: dict[str, pb.IndexVideoResponse], errors: collections.Counter,
                                   done: threading.Event, in_flight: list) -> None:
    """Indexes each clip, again and again until acknowledged; in_flight[0]: when the call now in
    flight began (None between calls)."""
    end = time.monotonic() + time_limit_s
    try:
        with SearchClient(address, timeout=60) as client:
            while (todo := [c for c in clips if c.stem not in acks]) and time.monotonic() < end:
                for clip in todo:
                    in_flight[0] = time.monotonic()
                    try:
                        r = client.index_video(collection, clip, id=clip.stem, timeout=60)
                        if r.status in ACKED:
                            acks[clip.stem] = r
                        else:
                            errors[pb.ItemStatus.Name(r.status)] += 1
                    except RevsearchClientError as exc:
                        errors[exc.code.name] += 1
                        time.sleep(0.1)
                    finally:
                        in_flight[0] = None
    finally:
        done.set()


def check_clips(address: str, collection: str, clips: list[Path], acks: dict, reference: str) -> dict:
    """Each acknowledged clip stored whole and once: found first by itself with both rankings (its
    face rows and its mean vector), a re-send is a DUPLICATE of the same id, and the collection holds
    exactly the rows a clean index of the same clips holds."""
    lost, expected_rows = [], 0
    with SearchClient(address, timeout=120) as client:
        count = client.describe_collection(collection).item_count
        client.create_collection(reference, media_type="video", exist_ok=True)
        for clip in clips:
            clean = client.index_video(reference, clip, id=clip.stem, timeout=120)
            expected_rows += clean.vector_count - 1  # its rows, without the mean
            if clip.stem not in acks:
                continue
            again = client.index_video(collection, clip, id="other-id", timeout=120)
            found = [client.search_videos(collection, clip=clip, ranking=ranking, top_k=1, timeout=120).hits
                     for ranking in ("frames", "mean_vector")]
            if again.status != pb.ITEM_STATUS_DUPLICATE or again.id != clip.stem or any(
                    not hits or hits[0].id != clip.stem for hits in found):
                lost.append(clip.stem)
    return {"rows": count, "expected_rows": expected_rows, "acknowledged": len(acks), "lost": lost}


def test_a_server_killed_while_indexing_clips_stores_each_clip_whole_and_once(tmp_path, processes):
    port, rng = free_port(), random.Random(7)
    clips = [VIDEO / name for name in CLIPS]
    server = revsearch_server(tmp_path / "data", port, "--triton-url", "off")
    processes.append(server)
    server.start()
    with SearchClient(server.address, timeout=30) as client:
        client.create_collection("clips", media_type="video", exist_ok=True)
    acks, errors, done, in_flight = {}, collections.Counter(), threading.Event(), [None]
    thread = threading.Thread(target=index_clips_until_acknowledged, daemon=True,
                              args=(server.address, "clips", clips, 150, acks, errors, done, in_flight))
    thread.start()
    serve_again = kill_repeatedly(server, 2, busy=lambda: not done.is_set(),
                                  serving=lambda: describes(server.address, "clips"),
                                  next_moment=into_a_call(rng, in_flight, (0.05, 0.6)))
    thread.join(170)
    assert done.is_set() and sorted(acks) == sorted(c.stem for c in clips), f"acknowledged {sorted(acks)}"
    server.kill9()
    server.start()
    wait_for(lambda: describes(server.address, "clips"), 60)
    result = check_clips(server.address, "clips", clips, acks, "clips_clean")
    print(f"kills {len(serve_again) + 1}, serve again after {[round(s, 2) for s in serve_again]} s, "
          f"errors {dict(errors)}, {result}")
    assert len(serve_again) == 2, "the indexing ended before every kill"
    assert result["lost"] == []
    assert result["rows"] == result["expected_rows"]


# What a kill between a clip's two writes (its face rows, then its mean vector) leaves in Milvus
# Lite: the rows without the mean. Made here by deleting the mean from the file while the server is
# down (in a child process of its own: the Milvus Lite process pymilvus starts lives with its opener).
_DELETE_MEAN = """
import logging, sys
logging.disable(logging.CRITICAL)
from pymilvus import MilvusClient
client = MilvusClient(uri=sys.argv[1])
client.delete(sys.argv[2], ids=[sys.argv[3]])
left = client.query(sys.argv[2], filter=f'id == "{sys.argv[3]}"', output_fields=["id"])
client.close()
print("LEFT", len(left))
"""


def test_a_clip_cut_between_its_rows_and_its_mean_vector_is_stored_whole_when_sent_again(tmp_path, processes):
    """The state a kill between IndexVideo's two inserts leaves (benchmarks/results/chaos.md caught
    it: a clip acknowledged DUPLICATE on its re-send, its 5 face rows stored, its mean vector never):
    sent again, the clip must end up whole (found first by itself with both rankings), not answered
    DUPLICATE of a clip that the mean-vector ranking can never find."""
    clip = VIDEO / CLIPS[0]
    server = revsearch_server(tmp_path / "data", free_port(), "--triton-url", "off")
    processes.append(server)
    server.start()
    with SearchClient(server.address, timeout=120) as client:
        client.create_collection("clips", media_type="video")
        assert client.index_video("clips", clip, id=clip.stem).status == pb.ITEM_STATUS_INDEXED
    server.kill9()
    cut = subprocess.run([sys.executable, "-c", _DELETE_MEAN, str(tmp_path / "data" / "milvus.db"),
                          "revsearch_clips__means", clip.stem], capture_output=True, text=True, timeout=120,
                         start_new_session=True)
    assert cut.stdout.strip().endswith("LEFT 0"), cut.stdout + cut.stderr
    server.start()
    with SearchClient(server.address, timeout=120) as client:
        again = client.index_video("clips", clip, id=clip.stem)
        found = {ranking: [h.id for h in client.search_videos("clips", clip=clip, ranking=ranking, top_k=1).hits]
                 for ranking in ("frames", "mean_vector")}
        rows = client.describe_collection("clips").item_count
    print(f"re-sent: {pb.ItemStatus.Name(again.status)} {again.id}; found first: {found}; rows {rows}")
    assert again.id == clip.stem
    assert found == {"frames": [clip.stem], "mean_vector": [clip.stem]}
    assert rows == 5


# -- the embedded Milvus server killed under load -------------------------------------------------
@dataclass
class Call:
    started: float
    seconds: float
    code: str  # "OK" or the status code's name


def search_load(address: str, collection: str, vectors: list[np.ndarray], stop: threading.Event,
                calls: list[Call]) -> None:
    with SearchClient(address, timeout=10) as client:
        n = 0
        while not stop.is_set() and n < 100_000:
            n += 1
            started = time.monotonic()
            try:
                client.search(collection, vector=vectors[n % len(vectors)], top_k=3, timeout=10)
                code = "OK"
            except RevsearchClientError as exc:
                code = exc.code.name
            calls.append(Call(started, time.monotonic() - started, code))
            if code != "OK":
                time.sleep(0.02)  # a failing call answers at once: don't spin


def index_load(address: str, collection: str, items: list[Item], stop: threading.Event,
               acks: dict[str, str]) -> None:
    """One image per call, re-sent until acknowledged."""
    with SearchClient(address, timeout=10) as client:
        todo = collections.deque(items)
        while todo and not stop.is_set():
            it = todo.popleft()
            try:
                r = client.index_image(collection, ImageInput(image=it.data, id=it.id, uri=it.uri), timeout=10)
                if r.status in ACKED:
                    acks[it.id] = r.id
                    continue
            except RevsearchClientError:
                pass
            todo.append(it)
            time.sleep(0.05)


def health_timeline(address: str, stop: threading.Event, seen: list[tuple[float, int | None]]) -> None:
    while not stop.wait(0.1):
        seen.append((time.monotonic(), health(address)))


@pytest.fixture(scope="module")
def milvus_kill(tmp_path_factory) -> dict:
    """The embedded Milvus server killed -9 under load (2 callers searching, one indexing one image
    per call and re-sending what failed) and restarted on the same port and data 4 s later; the
    timeline of every search, of health, and what the server holds afterwards."""
    tmp = tmp_path_factory.mktemp("milvus-kill")
    milvus = milvus_server(tmp / "milvus", free_port())
    setup = server = None
    items = lfw_items(60)
    acks = {it.id: it.id for it in items[:20]}
    calls: list[Call] = []
    seen: list[tuple[float, int | None]] = []
    stop = threading.Event()
    try:
        milvus.start()
        uri = f"http://127.0.0.1:{milvus.match.group(1)}"
        # The collection is made with the default deadline: creating (and loading) a collection in a
        # Milvus server takes longer than the short deadline the chaos runs with.
        setup = revsearch_server(tmp / "setup", free_port(), "--triton-url", "off", "--milvus-uri", uri)
        setup.start()
        with SearchClient(setup.address, timeout=60) as client:
            client.create_collection("load")
            first = list(client.index_images("load", [ImageInput(image=it.data, id=it.id) for it in items[:20]]))
            assert [r.status for r in first] == [pb.ITEM_STATUS_INDEXED] * 20
            vectors = [np.asarray(client.embed(it.data, collection="load").vector) for it in items[:5]]
        setup.stop()
        server = revsearch_server(tmp / "data", free_port(), "--triton-url", "off", "--milvus-uri", uri,
                                  "--milvus-timeout", str(MILVUS_DEADLINE_S), "--health-interval-s", "0.5")
        server.start()
        threads = [threading.Thread(target=search_load, args=(server.address, "load", vectors, stop, calls)),
                   threading.Thread(target=search_load, args=(server.address, "load", vectors, stop, calls)),
                   threading.Thread(target=index_load, args=(server.address, "load", items[20:], stop, acks)),
                   threading.Thread(target=health_timeline, args=(server.address, stop, seen))]
        for t in threads:
            t.daemon = True
            t.start()
        try:
            time.sleep(2.0)
            killed = time.monotonic()
            milvus.kill9()
            time.sleep(4.0)
            restarting = time.monotonic()
            milvus.start()
            back = time.monotonic()
            assert milvus.match.group(1) == uri.rsplit(":", 1)[1], "Milvus came back on another port"
            # Milvus itself serves the collection again only once the killed process's session has
            # expired (its session TTL, 30 s after the kill): until then consistent reads wait.
            milvus_serves = back + wait_for(lambda: milvus_reads(uri, "revsearch_load"), 90, every_s=0.2)
            recovered = milvus_serves + wait_for(
                lambda: any(c.code == "OK" and c.started > milvus_serves for c in calls), 30)
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        check = check_images(server.address, "load", items, acks)
    finally:
        for g in (server, setup, milvus):
            if g is not None:
                g.stop()
        left = {g.name: g.leftovers() for g in (server, setup, milvus) if g is not None and g.leftovers()}
        assert not left, f"processes left running: {left}"
    # The store went away when the first call found it unreachable (the circuit opened then).
    opened = min(c.started + c.seconds for c in calls if c.started + c.seconds > killed and c.code != "OK")
    finding = [c for c in calls
               if c.started < opened < c.started + c.seconds or killed < c.started + c.seconds <= opened]
    down = [c for c in calls if opened <= c.started and c.started + c.seconds < milvus_serves]
    seconds = sorted(c.seconds for c in down if c.code != "OK")
    out = {"killed": killed, "opened": opened, "restarting": restarting, "back": back, "milvus_serves": milvus_serves,
           "recovered": recovered, "calls": calls, "seen": seen, "finding": finding, "down": down,
           "acks": acks, "items": items, "check": check}
    print(f"milvus up after {back - restarting:.1f} s, serving reads {milvus_serves - back:.1f} s later; revsearch "
          f"serving {recovered - milvus_serves:.2f} s after that; circuit open {opened - killed:.1f} s after the kill, "
          f"calls finding it down: {[(c.code, round(c.seconds, 2)) for c in finding]}; then: "
          f"{dict(collections.Counter(c.code for c in down))}, failures p50 {statistics.median(seconds):.3f} s "
          f"p99 {seconds[int(0.99 * len(seconds))]:.3f} s max {seconds[-1]:.3f} s, "
          f"{sum(1 for x in seconds if x > 0.25 * MILVUS_DEADLINE_S)} over {0.25 * MILVUS_DEADLINE_S} s; health: "
          f"{[(round(t - killed, 1), s) for t, s in health_changes(seen)]}; acked {len(acks)}")
    return out


def health_changes(seen: list[tuple[float, int | None]]) -> list[tuple[float, str]]:
    names = {SERVING: "SERVING", NOT_SERVING: "NOT_SERVING", None: "no answer"}
    out = []
    for t, s in seen:
        if not out or out[-1][1] != names.get(s, str(s)):
            out.append((t, names.get(s, str(s))))
    return out


def test_milvus_killed_under_load_gives_unavailable_and_the_server_comes_back_by_itself(milvus_kill):
    k = milvus_kill
    codes = collections.Counter(c.code for c in k["down"])
    assert {c.code for c in k["down"] if c.started + c.seconds < k["back"]} == {"UNAVAILABLE"}
    assert set(codes) <= {"OK", "UNAVAILABLE"} and codes["UNAVAILABLE"] >= 20
    # The calls that found the store gone waited for it, bounded: a search ~2x the deadline
    # (pymilvus retries until then), an index call its write and then the clean-up of that write.
    # (A call answered just before the kill took effect may still be OK.)
    assert all(c.code in ("OK", "UNAVAILABLE") and c.seconds < 2 * (2 * MILVUS_DEADLINE_S + 1.0)
               for c in k["finding"])
    assert any(c.code == "UNAVAILABLE" for c in k["finding"])
    assert NOT_SERVING in [s for t, s in k["seen"] if k["killed"] < t < k["restarting"]]
    # Back by itself (no restart) within 15 s of Milvus serving reads again; health says so.
    assert k["recovered"] - k["milvus_serves"] <= 15.0
    after = [c for c in k["calls"] if c.started > k["recovered"]]
    assert after and all(c.code == "OK" for c in after)
    assert [s for t, s in k["seen"] if t > k["recovered"] + 1.0][-1:] == [SERVING]


def test_milvus_killed_under_load_loses_no_acknowledged_write(milvus_kill):
    k, result = milvus_kill, milvus_kill["check"]
    assert len(k["acks"]) > 20
    assert result["lost"] == [] and result["twice"] == []
    assert result["count"] == len({it.sha256 for it in k["items"] if it.id in k["acks"]})


def test_while_milvus_cannot_serve_every_call_fails_at_once_and_health_says_not_serving(milvus_kill):
    """Once a call has found the store unreachable, no call waits for it again until it is back:
    neither while Milvus is dead nor while it listens but cannot serve reads yet (after a restart,
    until the killed process's session expires); and health is NOT_SERVING all that time."""
    k = milvus_kill
    slow = [round(c.seconds, 2) for c in k["down"] if c.code != "OK" and c.seconds > 0.25 * MILVUS_DEADLINE_S]
    assert slow == [], f"calls that waited for the unreachable store: {slow}"
    first_not_serving = min(t for t, s in k["seen"] if t > k["killed"] and s == NOT_SERVING)
    serving_meanwhile = [round(t - k["killed"], 1) for t, s in k["seen"]
                         if first_not_serving < t < k["milvus_serves"] and s == SERVING]
    assert serving_meanwhile == [], "health said SERVING while every search failed (s after the kill)"


# -- the managed Triton killed under load ---------------------------------------------------------
def tritonserver_of(server: Group) -> int | None:
    kids = [p for p in children(server.pid) if comm(p) == "tritonserver"]
    return kids[0] if kids else None


def embed_load(address: str, images: list[bytes], stop: threading.Event, calls: list) -> None:
    with SearchClient(address, timeout=30) as client:
        n = 0
        while not stop.is_set() and n < 100_000:
            n += 1
            started = time.monotonic()
            try:
                backend = client.embed(images[n % len(images)], timeout=30).inference_backend
                calls.append((started, time.monotonic() - started, "OK", backend))
            except RevsearchClientError as exc:
                calls.append((started, time.monotonic() - started, exc.code.name, None))
                time.sleep(0.05)


@pytest.fixture(scope="module")
def triton_kills(tmp_path_factory) -> dict:
    """A server with its managed Triton, under embedding load from 4 callers (enough that a stub is
    in the middle of a request when Triton dies), whose Triton is killed -9 three times; each time
    the test waits for the fallback, for Triton again, and up to 20 s for the killed Triton's
    processes and shared-memory regions to go."""
    server = revsearch_server(tmp_path_factory.mktemp("triton"), free_port(), "--health-interval-s", "0.5",
                              "--triton-reprobe-s", "2")
    images = [it.data for it in lfw_items(8)]
    calls: list = []
    stop = threading.Event()
    kills, regions, tritons = [], [], []
    load = [threading.Thread(target=embed_load, args=(server.address, images, stop, calls), daemon=True)
            for _ in range(4)]
    try:
        server.start()
        with SearchClient(server.address, timeout=60) as client:
            first_backend = client.info().inference_backend
            tritons.append(identity(tritonserver_of(server)))
            for t in load:
                t.start()
            for _ in range(3):
                time.sleep(2.0)
                old = tritonserver_of(server)
                tree, old_regions = triton_tree(old)
                tritons.extend(identity(p) for p in tree)
                regions += old_regions
                killed = time.monotonic()
                os.kill(old, signal.SIGKILL)
                on_fallback = wait_for(lambda: client.info(timeout=5).inference_backend
                                       == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL, 30, every_s=0.1)
                back = on_fallback + wait_for(
                    lambda: client.info(timeout=5).inference_backend == pb.INFERENCE_BACKEND_TRITON, 170, every_s=0.2)
                try:
                    wait_for(lambda: not any(alive(p) for p in tree) and not any(r.exists() for r in old_regions),
                             max(1.0, 20 - (time.monotonic() - killed)), every_s=0.2)
                except TimeoutError:
                    pass
                kills.append({"killed": killed, "on_fallback_s": on_fallback, "back_s": back,
                              "new": tritonserver_of(server), "old": old,
                              "left": [(p, comm(p)) for p in tree if alive(p)],
                              "regions_left": [r.name for r in old_regions if r.exists()]})
            time.sleep(1.0)
    finally:
        stop.set()
        for t in load:
            if t.ident is not None:
                t.join(60)
        if (last := tritonserver_of(server)) is not None:
            tritons.extend(identity(p) for p in triton_tree(last)[0])
        server.stop()  # the whole group, with any Triton stub left behind
        for r in regions:  # what the killed Tritons' stubs left in /dev/shm (names read from them)
            r.unlink(missing_ok=True)
    deadline = time.monotonic() + 20
    while server.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server.leftovers(), f"processes left running: {server.leftovers()}"
    # Tritons and stubs of this server (in its group, or in one of their own) end with it too.
    try:
        wait_for(lambda: not any(still(i) for i in tritons), 30, every_s=0.2)
    except TimeoutError:
        left = [(i[0], comm(i[0])) for i in tritons if still(i)]
        for pid, _ in left:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"Triton processes outlived the stopped server: {left}")
    errors = collections.Counter(c[2] for c in calls if c[2] != "OK")
    local = sum(1 for c in calls if c[2] == "OK" and c[3] == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL)
    slowest = max(c[1] for c in calls if c[0] + c[1] > kills[0]["killed"])
    summary = [(round(k["on_fallback_s"], 1), round(k["back_s"], 1), k["left"], len(k["regions_left"])) for k in kills]
    print(f"triton kills: {summary} (on the fallback after s, back on Triton after s, its processes and shm "
          f"regions left 20 s on); answers by the fallback {local}, errors {dict(errors)}, slowest answer since "
          f"the first kill {slowest:.2f} s")
    return {"first_backend": first_backend, "kills": kills, "calls": calls, "errors": errors, "local": local}


def test_triton_killed_under_load_falls_back_then_returns_to_triton_by_itself(triton_kills):
    assert triton_kills["first_backend"] == pb.INFERENCE_BACKEND_TRITON
    assert not triton_kills["errors"], "calls failed while Triton was down"
    assert triton_kills["local"] >= 1
    last = triton_kills["calls"][-1]
    assert last[2] == "OK" and last[3] == pb.INFERENCE_BACKEND_TRITON
    assert all(k["new"] not in (None, k["old"]) for k in triton_kills["kills"])


def test_a_killed_triton_leaves_no_backend_stub_or_shared_memory_behind(triton_kills):
    # Each stub holds its model's memory, each region 16 MiB of /dev/shm: a Triton that crashes
    # again and again must not pile them up.
    kills = triton_kills["kills"]
    assert [k["left"] for k in kills] == [[]] * len(kills), "stubs of a killed Triton still run 20 s on"
    assert [k["regions_left"] for k in kills] == [[]] * len(kills), "a killed Triton's /dev/shm regions remain"
