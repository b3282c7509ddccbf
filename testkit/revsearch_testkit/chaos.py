"""Crash testing a revsearch deployment on this machine, as its clients see it: the pieces the
bounded chaos tests (tests/integration/test_chaos.py) and the full runs (benchmarks/bench_chaos.py)
share.

* `Group`: a child process in its own session, so that a kill -9 takes it and everything it
  started (as when a container crashes); `revsearch_server()` and `milvus_server()` make the two
  that get killed. Process facts come from /proc (Linux only).
* Probes on their own connection that reconnects every 100 ms (`health`, `describes`), so that
  "serving again" is the server's time, not a shared channel's back-off; `milvus_reads` asks
  Milvus itself.
* `Indexer`: indexes items and re-sends whatever was not acknowledged; `after_acks` and
  `into_a_call` make seeded kill moments.
* `python -m revsearch_testkit.chaos milvus-server BASE_DIR PORT [dotted.key=value ...]`
  (`milvus_server_command()`): the embedded Milvus 2.3 standalone server (PyPI package `milvus`, in
  requirements-build.txt), printing "READY <port>", stopping on SIGTERM, and able to restart on the
  same port right after a kill; milvus.yaml settings may be given (the 1M benchmark's segment size).

Part of the test kit (tests and benchmarks only; never shipped, never imported by the client or the
server). It needs the server's dependencies too (grpcio-health-checking; pymilvus for `milvus_reads`).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from revsearch.client import ImageInput, SearchClient
from revsearch.errors import RevsearchClientError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc

ACKED = (pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST_RECONNECT = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 100),
                  ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 250)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# -- processes ------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (st := _stat(int(p.name))) and int(st[2]) == pgid and st[0] not in ("Z", "X"):
            out.append(int(p.name))
    return out


def children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): names a process for good, whatever reuses its pid later."""
    st = _stat(pid)
    return (pid, st[19]) if st is not None and len(st) > 19 else None


def still(ident: tuple[int, str] | None) -> bool:
    return ident is not None and identity(ident[0]) == ident and alive(ident[0])


def triton_tree(pid: int) -> tuple[list[int], list[Path]]:
    """A Triton's process and its Python backend stubs, and the shared-memory regions they use
    (a stub's second argument names its region in /dev/shm)."""
    stubs = children(pid)
    regions = []
    for p in stubs:
        try:
            args = Path(f"/proc/{p}/cmdline").read_text().split("\0")
        except OSError:
            continue
        regions += [Path("/dev/shm") / a for a in args[2:3] if a and "/" not in a]
    return [pid, *stubs], regions


class Group:
    """A child process in its own session (its process group: it and everything it starts)."""

    def __init__(self, name: str, cmd: list[str], ready: str, timeout_s: float, address: str = ""):
        """ready: the pattern of the output line that says it is ready (its match: `match`)."""
        self.name, self.cmd, self.ready, self.timeout_s = name, cmd, re.compile(ready), timeout_s
        self.address = address
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []  # every group started, for the final check
        self.output: collections.deque[str] = collections.deque(maxlen=300)
        self.match: re.Match | None = None

    def start(self) -> float:
        """Starts it and waits for its ready line; returns the seconds that took."""
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
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

    def stop(self, require_gone: bool = False) -> None:
        """SIGTERM, then SIGKILL to every group it ever had; with require_gone, waits up to 20 s for
        their processes to go and raises RuntimeError naming those left."""
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
        if require_gone:
            deadline = time.monotonic() + 20
            while self.leftovers() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.leftovers():
                raise RuntimeError(f"{self.name}: processes left running: {self.leftovers()}")

    def leftovers(self) -> list[int]:
        return [p for g in self.groups for p in group_members(g)]


def revsearch_server(data_dir: Path, port: int, *flags: str) -> Group:
    """A revsearch server process as users run it (untrained models allowed, no metrics port)."""
    cmd = [sys.executable, "-m", "revsearch_server", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
           str(data_dir), "--metrics-port", "-1", "--allow-untrained", "--log-level", "WARNING", *flags]
    return Group("revsearch server", cmd, r"revsearch listening on", 300, f"127.0.0.1:{port}")


def milvus_server_command(base: Path | str, port: int, config: dict[str, str] | None = None) -> list[str]:
    """The command line of the embedded Milvus server (this module's milvus-server command): it prints
    "READY <port>" once it serves. config: milvus.yaml settings by dotted key (e.g.
    {"dataCoord.segment.maxSize": "4096"}), each replacing the packaged template's value."""
    return [sys.executable, "-m", "revsearch_testkit.chaos", "milvus-server", str(base), str(port),
            *(f"{key}={value}" for key, value in (config or {}).items())]


def start_embedded_milvus(base: Path | str, timeout_s: float = 180, config: dict[str, str] | None = None
                          ) -> tuple[subprocess.Popen, str]:
    """The embedded Milvus server in a child process on a free port, once it serves: (process, URI).
    RuntimeError with its last lines when it does not start within timeout_s. config: as
    milvus_server_command's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(milvus_server_command(base, port, config), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, said = time.time() + timeout_s, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        said.append(line.rstrip())
        if line.startswith("READY"):
            return proc, f"http://127.0.0.1:{int(line.split()[1])}"
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"the embedded Milvus server did not start (rc={proc.poll()}): {' | '.join(said[-5:])}")


def stop_embedded_milvus(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM, then SIGKILL after timeout_s; the milvus binary too, if its wrapper could not stop it."""
    children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()] \
        if Path(f"/proc/{proc.pid}/task/{proc.pid}/children").exists() else []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def milvus_server(base: Path, port: int) -> Group:
    """The embedded Milvus server (this module's milvus-server command) on that port and data."""
    return Group("embedded Milvus server", milvus_server_command(base, port), r"^READY (\d+)", 240)


def _reusable_port(self, port: int):
    """The embedded Milvus' port check, accepting a port whose old connections are still in
    TIME_WAIT (as Milvus' own listener does, SO_REUSEADDR): without it a Milvus restarted right after
    a kill moves to the next free port, where no client would look for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _check_config(path: Path, config: dict[str, str]) -> None:
    """Every setting asked for is in the milvus.yaml written (the package skips a key its template
    lacks without a word): SystemExit naming those that are not."""
    import yaml

    written = yaml.safe_load(path.read_text())
    missing = []
    for key, value in config.items():
        node = written
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or str(node) != str(value):
            missing.append(f"{key}={value} (written: {node})")
    if missing:
        sys.exit(f"milvus.yaml does not have: {', '.join(missing)}")


def serve_milvus(base_dir: str, port: int, config: dict[str, str] | None = None) -> None:
    """Runs the embedded Milvus server until SIGTERM: prints "READY <port>", and "DIED" (exit 1)
    if the Milvus process dies under it, so that whoever waits on it fails fast. config: milvus.yaml
    settings by dotted key, over the packaged template's."""
    from milvus import MilvusServerConfig, default_server

    MilvusServerConfig.try_bind_port = _reusable_port
    default_server.set_base_dir(base_dir)
    default_server.listen_port = port
    # Its etcd port is otherwise searched upwards from 2379 by test-binding without SO_REUSEADDR:
    # a 2379 still in TIME_WAIT makes it pick 2380, which its own etcd peer listener needs.
    default_server.config.set("etcd_port", free_port())
    for key, value in (config or {}).items():
        default_server.config.set(key, value)
    default_server.start()
    _check_config(Path(base_dir) / "configs" / "milvus.yaml", config or {})
    print(f"READY {default_server.listen_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1.0):
        if default_server.server_proc is None or default_server.server_proc.poll() is not None:
            print("DIED", flush=True)
            sys.exit(1)
    default_server.stop()


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


def milvus_reads(uri: str, collection: str) -> bool:
    """Whether Milvus answers a Strong-consistency query of the collection (pymilvus directly)."""
    from pymilvus import MilvusClient

    for name in list(logging.root.manager.loggerDict):  # they log every failed call as an error
        if name.startswith("pymilvus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        MilvusClient(uri=uri, timeout=2).query(collection, filter="", output_fields=["count(*)"],
                                               consistency_level="Strong", timeout=2)
        return True
    except Exception:  # pymilvus raises many types; any means "not yet"
        return False


# -- indexing under kills -------------------------------------------------------------------------
@dataclass
class Item:
    id: str
    uri: str
    data: bytes
    sha256: str


def items_from(paths: Iterable[Path]) -> list[Item]:
    """Image files as items, each with an id made from its file name."""
    out = []
    for f in paths:
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
    max_attempts: int = 500  # streams at most
    max_call_s: float = 120.0  # the deadline of one stream, at most
    acks: dict[str, str] = field(default_factory=dict)  # item id -> the id the server answered
    statuses: collections.Counter = field(default_factory=collections.Counter)
    stream_errors: collections.Counter = field(default_factory=collections.Counter)
    resent_found_stored: int = 0  # re-sent items answered DUPLICATE: their write outlived a kill, unacknowledged
    sent: collections.Counter = field(default_factory=collections.Counter)
    attempts: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def pending(self) -> list[Item]:
        return [it for it in self.items if it.id not in self.acks]

    def run(self) -> None:
        end = time.monotonic() + self.time_limit_s
        try:
            with SearchClient(self.address, timeout=30) as client:
                while (todo := self.pending()) and time.monotonic() < end and self.attempts < self.max_attempts:
                    self.attempts += 1

                    def requests():
                        for it in todo:
                            self.sent[it.id] += 1
                            yield ImageInput(image=it.data, id=it.id, uri=it.uri)

                    try:
                        left_s = max(1.0, min(self.max_call_s, end - time.monotonic()))
                        for it, r in zip(todo, client.index_images(self.collection, requests(), timeout=left_s)):
                            self.statuses[pb.ItemStatus.Name(r.status)] += 1
                            if r.status in ACKED:
                                self.acks[it.id] = r.id
                                if r.status == pb.ITEM_STATUS_DUPLICATE and r.id == it.id:
                                    self.resent_found_stored += 1
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[0] != "milvus-server" or not all("=" in a for a in args[3:]):
        sys.exit("usage: python -m revsearch_testkit.chaos milvus-server BASE_DIR PORT [dotted.key=value ...]")
    serve_milvus(args[1], int(args[2]), dict(a.split("=", 1) for a in args[3:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
