"""What the benchmarks share, so that no benchmark imports another one or anything under tests/.

  data       the shared data paths (LFW, videos) and a deterministic LFW sample
  processes  a revsearch server process as users run it; the embedded Milvus 2.3 server; process
             trees and their resident memory; flush/index state of a Milvus server (ServerControl)
  server     the server's own code run in this process, one stage at a time: its MilvusStore (with
             its pool), its face cropper split into detection and crops, its Embedder over the
             in-process ONNX Runtime backend (flip-averaged, L2-normalised like the server)
  clients    EmbedImage from many callers at saturation (images/s, latency, backends)
  results    machine facts, timestamps, writing benchmarks/results/<name>.{json,md}

Benchmarks run as `python benchmarks/bench_x.py`: this folder is then on sys.path, so they import
this module as `common`; `revsearch` and `revsearch_server` are installed (editable) in the venv, and so
is the test kit (`revsearch_testkit`, `make venv`: `pip install --no-deps -e testkit`). The embedded
Milvus server runs in a child process, `python -m revsearch_testkit.chaos milvus-server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revsearch.client import AsyncSearchClient
from revsearch_server.domain import FaceOptions
from revsearch_server.embedding.embedder import Embedder
from revsearch_server.embedding.local_onnx import LocalOnnxBackend
from revsearch_server.errors import RevsearchError
from revsearch_server.faces.cropper import FaceCrop, FaceCropper
from revsearch_server.faces.geometry import DetectedFace
from revsearch_server.imaging import ImageLimits
from revsearch_server.index.milvus import MilvusStore
from revsearch_server.models import ModelSpec
from revsearch_testkit.chaos import start_embedded_milvus, stop_embedded_milvus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
LFW = SHARED_DATA / "lfw"
VIDEO = SHARED_DATA / "video"
# No limit on what the benchmarks decode: they feed known files, and the limits are not measured.
NO_LIMITS = ImageLimits(1 << 30, 1 << 30)


# -- data and small helpers -----------------------------------------------------------------------
def lfw_images(count: int, per_person_max: int = 3) -> list[Path]:
    """A deterministic sample of LFW images, a few per person, sorted by path."""
    if not LFW.is_dir():
        raise FileNotFoundError(f"shared data missing: {LFW}")
    picked: list[Path] = []
    for person in sorted(LFW.iterdir()):
        picked.extend(sorted(person.glob("*.jpg"))[:per_person_max])
        if len(picked) >= count:
            break
    return picked[:count]


def iou(a, b) -> float:
    """Intersection over union of two boxes (x_min, y_min, x_max, y_max)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def timed(fn):
    """(fn(), seconds it took)."""
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- results ------------------------------------------------------------------------------------
def machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_results(name: str, result: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)


# -- a revsearch server process -------------------------------------------------------------------
def start_server(extra: list[str], data_dir: str, allow_untrained: bool, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """A server as users run it (its own process, managed Triton unless extra says otherwise); env:
    its environment instead of this process's (e.g. PYTHONPATH to serve another checkout's code)."""
    cmd = [sys.executable, "-m", "revsearch_server", "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir,
           "--log-level", "WARNING", "--metrics-port", "0", *extra] + (["--allow-untrained"] if allow_untrained else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.time() + 300
    lines: list[str] = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise RuntimeError(f"server exited: rc={proc.returncode}; its last output:\n{''.join(lines[-20:])}")
        lines.append(line)
        m = re.search(r"revsearch listening on [^:]+:(\d+)", line)
        if m:
            # Keep reading its output, so a chatty server never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, f"127.0.0.1:{m.group(1)}"
    stop_server(proc)
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- process trees and memory -------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, pid first."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) for p in process_tree(pid)) / 1024


# -- callers at saturation -----------------------------------------------------------------------------
async def saturate(concurrency: int, seconds: float, call) -> dict:
    """`concurrency` callers running call(n) back to back for `seconds`, n unique per call: requests/s,
    latency p50 / p99 (ms) of the answered calls, and the failed ones counted by kind (never hidden)."""
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    counter = [0]
    stop_at = time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < stop_at:
            counter[0] += 1
            t = time.perf_counter()
            try:
                await call(counter[0])
                latencies.append(time.perf_counter() - t)
            except Exception as exc:  # counted and named
                kind = f"{type(exc).__name__}: {str(getattr(exc, 'details', '') or exc)[:120]}"
                kinds[kind] = kinds.get(kind, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    lat = np.array(latencies or [0.0]) * 1000
    return {"per_s": len(latencies) / elapsed, "requests": len(latencies), "errors": sum(kinds.values()),
            "error_kinds": kinds, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


# -- EmbedImage at saturation ------------------------------------------------------------------------
async def embed_at_saturation(address: str, images: list[bytes], concurrency: int, seconds: float,
                              model: str = "") -> dict:
    """EmbedImage from `concurrency` callers for `seconds` (after a warm-up call each): images/s,
    latency p50/p99 (ms), the inference backends that answered and the server's backend detail."""
    async with AsyncSearchClient(address, timeout=120) as client:
        info = await client.info()
        for b in images[:concurrency]:  # warm-up: sessions, detectors, batches
            await client.embed(b, model=model)
        latencies: list[float] = []
        backends: set[int] = set()
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int):
            i = offset
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                resp = await client.embed(images[i % len(images)], model=model)
                latencies.append(time.perf_counter() - t)
                backends.add(resp.inference_backend)
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"images_per_s": len(latencies) / elapsed, "images": len(latencies), "seconds": elapsed,
            "concurrency": concurrency, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "backends": sorted(backends),
            "backend_detail": info.inference_detail}


# -- the embedded Milvus 2.3 server -------------------------------------------------------------
def start_milvus_server(base: Path, config: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """The embedded Milvus standalone server (PyPI package `milvus`) in a child process; its URI.
    config: milvus.yaml settings by dotted key over the package's defaults."""
    return start_embedded_milvus(base, config=config)


def stop_milvus_server(proc: subprocess.Popen) -> None:
    stop_embedded_milvus(proc)


@contextlib.contextmanager
def served_over_milvus_server(tmp: str, extra: list[str] = (), milvus_config: dict[str, str] | None = None):
    """A Milvus server and a revsearch server over it (trained models only), both stopped after:
    (milvus process, its URI, revsearch process, revsearch address)."""
    mproc, uri = start_milvus_server(Path(tmp) / "milvus-server", milvus_config)
    try:
        proc, address = start_server(["--milvus-uri", uri, *extra], f"{tmp}/server", allow_untrained=False)
        try:
            yield mproc, uri, proc, address
        finally:
            stop_server(proc)
    finally:
        stop_milvus_server(mproc)


class ServerControl:
    """Flush / index state of a Milvus server through pymilvus directly (not through MilvusIndex)."""

    def __init__(self, uri: str, collection: str):
        from pymilvus import MilvusClient, connections

        self.client = MilvusClient(uri=uri, timeout=600)
        self.alias = f"bench-{os.getpid()}"
        connections.connect(alias=self.alias, uri=uri)
        self.c = collection
        self.index_name = self.client.list_indexes(self.c)[0]

    def segments(self) -> list[dict]:
        from pymilvus import utility

        return [{"id": s.segmentID, "rows": s.num_rows, "state": s.state, "indexed": bool(s.indexID),
                 "index_name": s.index_name}
                for s in utility.get_query_segment_info(self.c, timeout=60, using=self.alias)]

    def describe_index(self) -> dict:
        return self.client.describe_index(self.c, self.index_name)

    def _served(self, expected_rows: int) -> tuple[bool, list[dict]]:
        """Whether the query node serves every row from sealed, indexed segments (and nothing else)."""
        sealed = 3
        segs = self.segments()
        served = sum(s["rows"] for s in segs if s["state"] == sealed and s["indexed"])
        other = sum(s["rows"] for s in segs if s["state"] != sealed or not s["indexed"])
        return served >= expected_rows and other == 0, segs

    def flush_and_wait(self, expected_rows: int, timeout_s: float = 1800) -> dict:
        """Flush; wait until the index covers every row and the query node serves only sealed,
        indexed segments; then compact (Milvus merges the small sealed segments on its own a little
        later anyway, and re-indexes the result) and wait until that is indexed, loaded and stable,
        so the measurement does not run into a compaction.
        (Milvus 2.3.5's describe_index pending_index_rows is not used: after compactions it kept
        reporting ~900k pending on a fully indexed and loaded 1M collection.)"""
        t0 = time.perf_counter()
        self.client.flush(self.c, timeout=600)
        t_flush = time.perf_counter() - t0
        t_index = None
        deadline = time.time() + timeout_s
        last_log = 0.0
        timed_out = False
        while True:
            d = self.describe_index()
            if t_index is None and d.get("state") == "Finished" and d.get("indexed_rows", 0) >= expected_rows:
                t_index = time.perf_counter() - t0
            ok, segs = self._served(expected_rows)
            if t_index is not None and ok:
                break
            if time.time() > deadline:
                timed_out = True
                log(f"  server: index not complete after {timeout_s} s; measuring as it is")
                break
            if time.time() - last_log > 30:
                last_log = time.time()
                log(f"  server: waiting for index: {d.get('indexed_rows')}/{d.get('total_rows')} indexed, "
                    f"segments (rows, state, indexed) {sorted((s['rows'], s['state'], s['indexed']) for s in segs)}")
            time.sleep(1.0)
        t_ready = time.perf_counter() - t0
        before_compaction = sorted(s["rows"] for s in segs)

        # Compaction, then indexed + loaded + unchanged for 15 s.
        t1 = time.perf_counter()
        job = self.client.compact(self.c, timeout=60)
        state = ""
        while time.time() < deadline:
            state = self.client.get_compaction_state(job, timeout=60)
            if state == "Completed":
                break
            time.sleep(2.0)
        t_compacted = time.perf_counter() - t1
        stable_since, last_key = None, None
        while time.time() < deadline:
            ok, segs = self._served(expected_rows)
            key = sorted((s["id"], s["rows"], s["indexed"]) for s in segs)
            if ok and key == last_key:
                if time.perf_counter() - stable_since >= 15:
                    break
            else:
                stable_since, last_key = time.perf_counter(), key
            if time.time() - last_log > 30:
                last_log = time.time()
                log(f"  server: after compaction ({state}): segments (rows, state, indexed) "
                    f"{sorted((s['rows'], s['state'], s['indexed']) for s in segs)}")
            time.sleep(1.0)
        else:
            timed_out = True
        return {"flush_s": round(t_flush, 2), "index_built_s": round(t_index, 2) if t_index else None,
                "indexed_and_loaded_s": round(t_ready, 2), "segments_before_compaction": before_compaction,
                "compaction_state": state, "compaction_s": round(t_compacted, 1),
                "compacted_reindexed_loaded_stable_s": round(time.perf_counter() - t1 - 15, 1),
                "timed_out": timed_out, "segments": sorted(s["rows"] for s in segs),
                "index": {k: d.get(k) for k in ("index_type", "metric_type", "indexed_rows", "total_rows",
                                                "pending_index_rows", "state")}}

    def close(self) -> None:
        from pymilvus import connections

        self.client.close()
        connections.disconnect(self.alias)


# -- the server's own code, in this process -------------------------------------------------------
@contextlib.asynccontextmanager
async def milvus_store(uri: str, timeout_s: float = 60.0) -> AsyncIterator[MilvusStore]:
    """The server's MilvusStore, started, as the server makes it by default: Session consistency and
    a pool of 4 threads for pymilvus's blocking calls (--store-workers); closed on exit."""
    pool = ThreadPoolExecutor(4, thread_name_prefix="store")
    store = MilvusStore(uri, token="", timeout_s=timeout_s, consistency="Session", pool=pool)
    try:
        await store.start()
        yield store
    finally:
        try:
            await store.close()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def local_embedder(models: dict[str, ModelSpec]) -> AsyncIterator[Embedder]:
    """The server's Embedder over its in-process ONNX Runtime backend (the server's local fallback):
    face models embed each chip and its mirror image, and every vector comes back L2-normalised.

    Its runner is one thread, as in the server (pools.py). Micro-batching is off (no wait for more
    requests): the benchmarks batch themselves, and each embed() is one backend run."""
    runner = ThreadPoolExecutor(1, thread_name_prefix="onnx-run")
    backend = LocalOnnxBackend(runner)
    embedder = Embedder(backend, models, batch_max_size=1, batch_max_wait_s=0.0)
    try:
        await backend.wait_ready(models, 0)  # loads a session per model
        yield embedder
    finally:
        try:
            await embedder.close()
        finally:
            runner.shutdown(wait=False, cancel_futures=True)


@dataclass
class TimedCrops:
    crops: list[list[FaceCrop] | RevsearchError]  # FaceCropper.crop_arrays's answer, per image
    faces: list[list[DetectedFace] | None]  # what the detector found per image (before the confidence filter)
    detect_s: float  # from the call until detection returned (the shrinking for detect_max_side included)
    crop_s: float  # from then to the end: the cropper's choice of faces and their chips or margin crops

    def count_faces(self, min_confidence: float) -> int:
        return sum(1 for fs in self.faces if fs for f in fs if f.confidence >= min_confidence)

    def pixels(self) -> list[np.ndarray]:
        """The model inputs of every crop, image by image."""
        return [c.pixels for r in self.crops if isinstance(r, list) for c in r]


class _ClockedDetector:
    """A detector that notes when each detect() returns and what it found."""

    def __init__(self, inner):
        self._inner = inner
        self.returned_at = 0.0
        self.found: list[list[DetectedFace] | None] = []

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace] | None]:
        self.found = self._inner.detect(images)
        self.returned_at = time.perf_counter()
        return self.found


class TimedCropper:
    """The server's FaceCropper with the server's MTCNN detector (wiring.mtcnn_detector), its
    crop_arrays split in two timed stages at the moment the detector returns (TimedCrops)."""

    def __init__(self, detector: str = "torch"):
        """detector: "torch" (facenet-pytorch's MTCNN) or "onnx" (faces/onnx_mtcnn.py over ONNX
        Runtime in this process, the nets from the model repository: what the server runs)."""
        self._kind = detector
        self._detectors: dict[int, _ClockedDetector] = {}
        # crop_arrays runs in the caller's thread and uses no pool; the cropper still wants them.
        self._idle = ThreadPoolExecutor(1)
        self.cropper = FaceCropper(self._idle, self._idle, self._detector_for, NO_LIMITS)

    def _detector_for(self, min_face_size: int) -> _ClockedDetector:
        if self._kind == "onnx":
            from revsearch_server.faces.detector import DetectorSettings
            from revsearch_server.faces.net_runners import LocalNets
            from revsearch_server.faces.onnx_mtcnn import OnnxMtcnnDetector
            from revsearch_server.models import detector_nets

            inner = OnnxMtcnnDetector(LocalNets(detector_nets(ROOT / "model_repository")),
                                      DetectorSettings(min_face_size=min_face_size, min_confidence=0.0))
        else:
            from revsearch_server.wiring import mtcnn_detector  # torch loads only for the face benchmarks

            inner = mtcnn_detector(min_face_size)
        # The cropper asks once per minimum face size and keeps what it gets.
        detector = self._detectors[min_face_size] = _ClockedDetector(inner)
        return detector

    def crop(self, images: list[np.ndarray], model: ModelSpec, options: FaceOptions, all_faces: bool = False,
             detect_max_side: int | None = None) -> TimedCrops:
        started = time.perf_counter()
        crops = self.cropper.crop_arrays(images, model, options, all_faces, detect_max_side)
        ended = time.perf_counter()
        detector = self._detectors[options.min_face_size]
        return TimedCrops(crops, detector.found, detector.returned_at - started, ended - detector.returned_at)

    def close(self) -> None:
        self._idle.shutdown(wait=False)

