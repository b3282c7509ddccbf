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
import hashlib
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import RevsearchClientError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from tests.helpers import ROOT, VIDEO, free_port, lfw_images

pytestmark = pytest.mark.integration

ACKED = (pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Probes get their own connection that retries every 100 ms, so "serving again" is the server's
# time, not a shared channel's reconnect back-off.
FAST_RECONNECT = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 100),
                  ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 250)]
MILVUS_DEADLINE_S = 2.0


# -- processes ------------------------------------------------------------------------------------
def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(p.name))
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): names a process for good, whatever reuses its pid later."""
    try:
        return pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _still(identity: tuple[int, str] | None) -> bool:
    return identity is not None and _identity(identity[0]) == identity and _alive(identity[0])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Group:
    """A child process in its own session (its process group: it and everything it starts)."""

    def __init__(self, name: str, cmd: list[str], ready: re.Pattern, timeout_s: float):
        self.name, self.cmd, self.ready, self.timeout_s = name, cmd, ready, timeout_s
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []  # every group started, for the final check
        self.output: collections.deque[str] = collections.deque(maxlen=300)
        self.match: re.Match | None = None
        self.address = ""

    def start(self) -> float:
        """Starts it and waits for its ready line; returns the seconds that took."""
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, start_new_session=True)
        self.groups.append(self.proc.pid)
        ready = threading.Event()

        def pump(stream):
            for line in stream:
                self.output.append(line.rstrip())
                if not ready.is_set() and (m := self.ready.search(line)):
                    self.match = m
                    ready.set()

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() - started > self.timeout_s:
                self.kill9()
                raise RuntimeError(f"{self.name} did not start (rc={self.proc.returncode}); its last output:\n"
                                   + "\n".join(list(self.output)[-30:]))
        return time.monotonic() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL to the whole group, as when its container crashes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to every group it ever had."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for g in self.groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(30)

    def leftovers(self) -> list[int]:
        return [p for g in self.groups for p in _group_members(g)]


def revsearch_server(data_dir: Path, port: int, *flags: str) -> Group:
    cmd = [sys.executable, "-m", "revsearch_server", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
           str(data_dir), "--metrics-port", "-1", "--allow-untrained", "--log-level", "WARNING", *flags]
    group = Group("revsearch server", cmd, re.compile(r"revsearch listening on"), 300)
    group.address = f"127.0.0.1:{port}"
    return group


# milvus_server.py, with the embedded server's port check made to accept a port whose old
# connections are still in TIME_WAIT (as Milvus' own listener does, SO_REUSEADDR): without it, a
# Milvus restarted right after a kill moves to the next free port, and clients would never find it.
_MILVUS_SAME_PORT = """
import runpy, socket, sys
from milvus import MilvusServerConfig

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

MilvusServerConfig.try_bind_port = try_bind_port
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def milvus_server(base: Path, port: int) -> Group:
    cmd = [sys.executable, "-c", _MILVUS_SAME_PORT, str(Path(__file__).with_name("milvus_server.py")), str(base),
           str(port)]
    return Group("embedded Milvus server", cmd, re.compile(r"^READY (\d+)"), 240)


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


# -- calls ----------------------------------------------------------------------------------------
def health(address: str, timeout_s: float = 1.0) -> int | None:
    """The grpc.health.v1 status of the server ("" service), None when it does not answer."""
    with grpc.insecure_channel(address, options=FAST_RECONNECT) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout_s).status
        except grpc.RpcError:
            return None


def describes(address: str, collection: str) -> bool:
    """Whether DescribeCollection succeeds now (it reads the store)."""
    with grpc.insecure_channel(address, options=FAST_RECONNECT) as channel:
        try:
            pb_grpc.SearchServiceStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection),
                                                                  timeout=2.0)
            return True
        except grpc.RpcError:
            return False


def wait_for(check, timeout_s: float, every_s: float = 0.05) -> float:
    """Polls check() until true; returns the seconds it took (raises TimeoutError after timeout_s)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not true within {timeout_s} s")
        time.sleep(every_s)
    return time.monotonic() - started


def chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


# -- kill -9 while indexing -----------------------------------------------------------------------
@dataclass
class Item:
    id: str
    uri: str
    data: bytes
    sha256: str


def lfw_items(count: int) -> list[Item]:
    out = []
    for f in lfw_images(count):
        data = f.read_bytes()
        out.append(Item(re.sub(r"[^A-Za-z0-9._:-]", "-", f.stem), str(f), data, hashlib.sha256(data).hexdigest()))
    return out


@dataclass
class Indexer:
    """A client that indexes items and re-sends, until acknowledged, each item not acknowledged.
    Acknowledged: a response with INDEXED or DUPLICATE (and the stored id)."""
    address: str
    collection: str
    items: list[Item]
    time_limit_s: float
    acks: dict[str, str] = field(default_factory=dict)  # item id -> the id the server answered
    statuses: collections.Counter = field(default_factory=collections.Counter)
    stream_errors: collections.Counter = field(default_factory=collections.Counter)
    attempts: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def pending(self) -> list[Item]:
        return [it for it in self.items if it.id not in self.acks]

    def run(self) -> None:
        end = time.monotonic() + self.time_limit_s
        try:
            with SearchClient(self.address, timeout=30) as client:
                while (todo := self.pending()) and time.monotonic() < end and self.attempts < 500:
                    self.attempts += 1
                    try:
                        responses = client.index_images(
                            self.collection, (ImageInput(image=it.data, id=it.id, uri=it.uri) for it in todo),
                            timeout=max(1.0, min(120.0, end - time.monotonic())))
                        for it, r in zip(todo, responses):
                            self.statuses[pb.ItemStatus.Name(r.status)] += 1
                            if r.status in ACKED:
                                self.acks[it.id] = r.id
                    except RevsearchClientError as exc:
                        self.stream_errors[exc.code.name] += 1
                        time.sleep(0.1)
        finally:
            self.done.set()


def after_acks(rng: random.Random, acked, need: tuple[int, int], delay_s: tuple[float, float]):
    """Kill moments: once the client has had a seeded random number of further acknowledgments
    (so every restart is followed by progress), then a seeded random delay (so the kill lands
    anywhere in a request: reading, decoding, embedding, writing, answering)."""
    def next_moment():
        base, want, extra, at = acked(), rng.randint(*need), rng.uniform(*delay_s), []

        def due() -> bool:
            if acked() - base < want:
                return False
            at[:] = at or [time.monotonic() + extra]
            return time.monotonic() >= at[0]
        return due
    return next_moment


def into_a_call(rng: random.Random, in_flight: list, delay_s: tuple[float, float]):
    """Kill moments: a seeded random time into a call in flight (in_flight[0]: when it began)."""
    def next_moment():
        extra = rng.uniform(*delay_s)
        return lambda: in_flight[0] is not None and time.monotonic() - in_flight[0] >= extra
    return next_moment


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
    items = lfw_items(150)
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


def milvus_reads(uri: str, collection: str) -> bool:
    """Whether Milvus answers a Strong-consistency query of the collection (pymilvus directly)."""
    from pymilvus import MilvusClient

    for name in list(logging.root.manager.loggerDict):  # they log every failed call as an error
        if name.startswith("pymilvus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        client = MilvusClient(uri=uri, timeout=2)
        client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=2)
        return True
    except Exception:  # pymilvus raises many types; any means "not yet"
        return False


# -- the managed Triton killed under load ---------------------------------------------------------
def tritonserver_of(server: Group) -> int | None:
    kids = [p for p in _children(server.pid) if _comm(p) == "tritonserver"]
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


def triton_tree(pid: int) -> tuple[list[int], list[Path]]:
    """A Triton's process and its Python backend stubs, and the shared-memory regions they use
    (a stub's second argument names its region in /dev/shm)."""
    stubs = _children(pid)
    regions = []
    for p in stubs:
        try:
            args = Path(f"/proc/{p}/cmdline").read_text().split("\0")
        except OSError:
            continue
        regions += [Path("/dev/shm") / a for a in args[2:3] if a and "/" not in a]
    return [pid, *stubs], regions


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
            tritons.append(_identity(tritonserver_of(server)))
            for t in load:
                t.start()
            for _ in range(3):
                time.sleep(2.0)
                old = tritonserver_of(server)
                tree, old_regions = triton_tree(old)
                tritons.extend(_identity(p) for p in tree)
                regions += old_regions
                killed = time.monotonic()
                os.kill(old, signal.SIGKILL)
                on_fallback = wait_for(lambda: client.info(timeout=5).inference_backend
                                       == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL, 30, every_s=0.1)
                back = on_fallback + wait_for(
                    lambda: client.info(timeout=5).inference_backend == pb.INFERENCE_BACKEND_TRITON, 170, every_s=0.2)
                try:
                    wait_for(lambda: not any(_alive(p) for p in tree) and not any(r.exists() for r in old_regions),
                             max(1.0, 20 - (time.monotonic() - killed)), every_s=0.2)
                except TimeoutError:
                    pass
                kills.append({"killed": killed, "on_fallback_s": on_fallback, "back_s": back,
                              "new": tritonserver_of(server), "old": old,
                              "left": [(p, _comm(p)) for p in tree if _alive(p)],
                              "regions_left": [r.name for r in old_regions if r.exists()]})
            time.sleep(1.0)
    finally:
        stop.set()
        for t in load:
            if t.ident is not None:
                t.join(60)
        if (last := tritonserver_of(server)) is not None:
            tritons.extend(_identity(p) for p in triton_tree(last)[0])
        server.stop()  # the whole group, with any Triton stub left behind
        for r in regions:  # what the killed Tritons' stubs left in /dev/shm (names read from them)
            r.unlink(missing_ok=True)
    deadline = time.monotonic() + 20
    while server.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server.leftovers(), f"processes left running: {server.leftovers()}"
    # Tritons and stubs of this server (in its group, or in one of their own) end with it too.
    try:
        wait_for(lambda: not any(_still(i) for i in tritons), 30, every_s=0.2)
    except TimeoutError:
        left = [(i[0], _comm(i[0])) for i in tritons if _still(i)]
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
