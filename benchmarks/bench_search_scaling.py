"""Search latency against collection size: Milvus Lite, a real Milvus server and the exact KNN baseline.

Each store is grown 0 -> 10k -> 100k -> 1M rows (default; `--runs` changes dimensions and sizes) of
synthetic vectors through the server's own index classes (MilvusStore/MilvusIndex, ExactKnnIndex),
so the numbers are what the revsearch server gets, including its row conversion, upserts,
Session consistency, thread-pool hop and Hit construction:

  data      seeded Gaussian vectors, L2-normalised, in batches of --batch rows (default 10k, fewer
            for wide vectors so one upsert stays around 16 MB); each row is a full Record as the
            server writes it (64-hex id and sha256, uri, model, face box).
  queries   200 held-out vectors (no near neighbour: the hard case for an approximate index) plus
            100 perturbed copies of stored vectors (cosine ~0.9 to their source: a near duplicate).
  insert    rows/s of the inserts that grow the store to each size (MilvusIndex.insert = upsert).
  server    Milvus 2.3.5 standalone (common.start_milvus_server), AUTOINDEX (HNSW there).
            Measured twice per size: right after the inserts (rows in growing segments, searched
            through Milvus's interim IVF index: what the service sees until Milvus seals them),
            then after flush + index build + load of the indexed segments (build time reported).
  search    single queries, sequential, top_k 20, after a warm-up: p50/p95/p99 ms; and the first
            256 queries as 4 calls of 64 (ms per query).
  recall    @20 against ground truth computed independently here (streamed numpy over the same
            seeded data); a returned hit counts when its id is in the true top 20 or its score
            ties the 20th (within 1e-5). Exact KNN and Lite (FLAT) should be 1.0.
  exact     also: the first search after an insert (ExactKnnIndex restacks its matrix then), the
            bare numpy floor on the same matrix (matmul + argpartition: the lower bound for a
            brute-force search), and the dedup lookup ids_for_sha256 (every index request runs it).
  ef        the server's recall/latency again with an explicit HNSW ef of 64/128/256
            (MilvusIndex.search with the store's search_ef set to each, as --milvus-search-ef does).
  memory    RSS: the Milvus server's process tree, the Milvus Lite process; exact KNN lives in the
            caller's process, so it is grown once more alone in a child process (Records, then
            + its search matrix, and the peak during a 64-query search); this process's own RSS
            growth is in the JSON too (inflated by the Milvus-side row conversion's garbage).

Writes benchmarks/results/search_scaling.{json,md}. Needs ~6 GB RAM and ~5 GB of /tmp for the
default run; takes 15-30 min on 2 cores. Only one embedded Milvus server can run per host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (RESULTS, ServerControl, log, machine, milvus_store, now_utc, process_tree, rss_kb, start_milvus_server,
                    stop_milvus_server, tree_rss_mb, write_results)
from revsearch_server.domain import FaceBox, l2_normalize
from revsearch_server.index.base import Record
from revsearch_server.index.exact_knn import ExactKnnIndex
from revsearch_server.index.milvus import MilvusIndex, MilvusStore, milvus_name

SEED = 20261124
TOP_K = 20
N_HELD_OUT, N_NEAR = 200, 100
BATCH_Q = 64
WARMUP = 10
TIE_EPS = 1e-5
BACKENDS = ("lite", "server", "exact")
LABELS = {"lite": "Milvus Lite (FLAT)", "server": "Milvus server (AUTOINDEX=HNSW)", "exact": "exact KNN (numpy)"}
MODELS = {128: "face_dlib", 2048: "resnet50"}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# -- processes and memory ---------------------------------------------------------------------
def self_rss_mb() -> float:
    return rss_kb(os.getpid()) / 1024


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def lite_pid(db_path: str) -> int | None:
    """The milvus_lite server process this process started for db_path."""
    for pid in process_tree(os.getpid())[1:]:
        cmd = _cmdline(pid)
        if "milvus_lite" in cmd and db_path in cmd:
            return pid
    return None


def running_milvus_servers() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and "milvus run standalone" in _cmdline(int(p.name))]


# -- data ---------------------------------------------------------------------------------------
def batch_vectors(dim: int, batch: int, b: int) -> np.ndarray:
    rng = np.random.default_rng([SEED, dim, b])
    return l2_normalize(rng.standard_normal((batch, dim), dtype=np.float32))


def row_id(dim: int, n: int) -> str:
    # 64 hex like the server's content ids; the row number is readable from the last 12 digits.
    return hashlib.sha256(f"{SEED}:{dim}:{n}".encode()).hexdigest()[:52] + f"{n:012x}"


def row_of(id_: str) -> int:
    return int(id_[-12:], 16)


def batch_records(dim: int, batch: int, b: int, model: str) -> list[Record]:
    vecs = batch_vectors(dim, batch, b)
    now = int(time.time() * 1000)
    out = []
    for i in range(batch):
        n = b * batch + i
        out.append(Record(id=row_id(dim, n), vector=vecs[i], uri=f"/photos/person_{n // 7:07d}/img_{n:08d}.jpg",
                          sha256=hashlib.sha256(f"sha:{dim}:{n}".encode()).hexdigest(), model=model,
                          model_version="bench", created_at_ms=now, metadata={},
                          face_box=FaceBox(12.0, 20.0, 112.0, 150.0, 0.99), face_count=1))
    return out


def make_queries(dim: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries [300, D], source row of each near-duplicate query or -1)."""
    rng = np.random.default_rng([SEED, dim, 999_999])
    held = rng.standard_normal((N_HELD_OUT, dim), dtype=np.float32)
    first = batch_vectors(dim, batch, 0)  # sources from the first batch: stored at every size
    src = rng.choice(min(batch, len(first)), N_NEAR, replace=False)
    noise = rng.standard_normal((N_NEAR, dim), dtype=np.float32) * (0.5 / np.sqrt(dim))
    near = first[src] + noise  # |noise| ~ 0.5: cosine ~ 0.89 to the source
    q = l2_normalize(np.concatenate([held, near]))
    return q, np.concatenate([np.full(N_HELD_OUT, -1), src])


def ground_truth(queries: np.ndarray, dim: int, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers [Q, K] and cosines [Q, K]) of the true top K, streamed over the stored batches."""
    best_s = np.full((len(queries), TOP_K), -np.inf, np.float32)
    best_i = np.full((len(queries), TOP_K), -1, np.int64)
    for b in range(size // batch):
        s = queries @ batch_vectors(dim, batch, b).T
        idx = np.argpartition(-s, TOP_K - 1, axis=1)[:, :TOP_K]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + b * batch], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :TOP_K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i, best_s


def recall(results, gt_rows: np.ndarray, gt_scores: np.ndarray, which: np.ndarray) -> dict:
    tol, strict, top1 = [], [], []
    for q in np.flatnonzero(which):
        hits = results[q]
        truth = set(gt_rows[q].tolist())
        kth = gt_scores[q, -1]
        rows = [row_of(h.id) for h in hits]
        strict.append(len(truth.intersection(rows)) / TOP_K)
        tol.append(sum(1 for r, h in zip(rows, hits) if r in truth or h.score >= kth - TIE_EPS) / TOP_K)
        top1.append(bool(rows) and rows[0] == gt_rows[q, 0])
    return {"recall": round(float(np.mean(tol)), 4), "recall_strict_ids": round(float(np.mean(strict)), 4),
            "top1": round(float(np.mean(top1)), 4)}


# -- measuring ---------------------------------------------------------------------------------
def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


async def measure_search(index, queries: np.ndarray, gt, near_src: np.ndarray) -> dict:
    for q in queries[:WARMUP]:
        await index.search(q[None], TOP_K)
    single, results = [], []
    for q in queries:
        t = time.perf_counter()
        res = await index.search(q[None], TOP_K)
        single.append((time.perf_counter() - t) * 1000)
        results.append(res[0])
    await index.search(queries[:BATCH_Q], TOP_K)  # warm-up of the batched path
    per_query = []
    for start in range(0, (len(queries) // BATCH_Q) * BATCH_Q, BATCH_Q):
        t = time.perf_counter()
        res = await index.search(queries[start:start + BATCH_Q], TOP_K)
        per_query.append((time.perf_counter() - t) * 1000 / BATCH_Q)
        assert len(res) == BATCH_Q and all(len(r) == TOP_K for r in res)
    gt_rows, gt_scores = gt
    out = {"single_ms": pct(single), "batch64_ms_per_query": round(float(np.median(per_query)), 3),
           "batch64_ms_per_query_all": [round(x, 3) for x in per_query],
           "recall_at_20": {"held_out": recall(results, gt_rows, gt_scores, near_src < 0),
                            "near_duplicate": recall(results, gt_rows, gt_scores, near_src >= 0)}}
    out["recall_at_20"]["all"] = round((out["recall_at_20"]["held_out"]["recall"] * N_HELD_OUT
                                        + out["recall_at_20"]["near_duplicate"]["recall"] * N_NEAR)
                                       / (N_HELD_OUT + N_NEAR), 4)
    return out


async def measure_dedup(index, dim: int, size: int) -> float:
    """ms of ids_for_sha256 for one digest that is stored (the pipeline's dedup check), median of 10."""
    digests = [hashlib.sha256(f"sha:{dim}:{n}".encode()).hexdigest() for n in np.linspace(0, size - 1, 10).astype(int)]
    ms = []
    for d in digests:
        t = time.perf_counter()
        found = await index.ids_for_sha256([d])
        ms.append((time.perf_counter() - t) * 1000)
        assert len(found) == 1, found
    return round(float(np.median(ms)), 3)


def numpy_floor(matrix: np.ndarray, queries: np.ndarray) -> dict:
    """Brute force with nothing around it: scores by one matmul, top K by argpartition + sort."""
    def topk(s):
        idx = np.argpartition(-s, TOP_K - 1, axis=-1)[..., :TOP_K]
        return np.take_along_axis(idx, np.argsort(-np.take_along_axis(s, idx, -1), axis=-1), -1)

    for q in queries[:WARMUP]:
        topk(matrix @ q)
    single = []
    for q in queries:
        t = time.perf_counter()
        topk(matrix @ q)
        single.append((time.perf_counter() - t) * 1000)
    per_query = []
    for start in range(0, (len(queries) // BATCH_Q) * BATCH_Q, BATCH_Q):
        t = time.perf_counter()
        topk(queries[start:start + BATCH_Q] @ matrix.T)
        per_query.append((time.perf_counter() - t) * 1000 / BATCH_Q)
    return {"single_ms": pct(single), "batch64_ms_per_query": round(float(np.median(per_query)), 3)}


async def ef_sweep(store: MilvusStore, index: MilvusIndex, queries: np.ndarray, gt, near_src: np.ndarray,
                   efs=(64, 128, 256)) -> dict:
    """Recall and latency with an explicit HNSW ef: MilvusIndex.search as the server runs it with
    --milvus-search-ef set to each (the store's search_ef), the same request otherwise."""
    kept = store.search_ef
    out = {}
    try:
        for ef in efs:
            store.search_ef = ef
            for q in queries[:WARMUP]:
                await index.search(q[None], TOP_K)
            ms, results = [], []
            for q in queries:
                t = time.perf_counter()
                hits = (await index.search(q[None], TOP_K))[0]
                ms.append((time.perf_counter() - t) * 1000)
                results.append(hits)
            out[str(ef)] = {"single_ms": pct(ms),
                            "recall_at_20": {"held_out": recall(results, gt[0], gt[1], near_src < 0),
                                             "near_duplicate": recall(results, gt[0], gt[1], near_src >= 0)}}
    finally:
        store.search_ef = kept
    return out


# -- one run (one dimension) --------------------------------------------------------------------
async def run(dim: int, sizes: list[int], batch: int, server_uri: str, server_proc: subprocess.Popen,
              tmp: Path) -> dict:
    model = MODELS.get(dim, f"synthetic{dim}")
    name = f"bench_scaling_{dim}"
    lite_dir = Path(tempfile.mkdtemp(prefix="lite-", dir=tmp))
    lite_db = str(lite_dir / "milvus.db")
    exact_dir = tmp / f"exact-{dim}"
    exact_dir.mkdir()

    # Each store as the server makes it (its own pool of 4 threads); closed by `stores` at the end.
    stores = contextlib.AsyncExitStack()
    lite = await stores.enter_async_context(milvus_store(lite_db, timeout_s=600))
    server = await stores.enter_async_context(milvus_store(server_uri, timeout_s=600))
    for store in (lite, server):
        if store is server and await server.description(name) is not None:
            await server.drop(name)
        await store.create(name, dim, "search scaling benchmark")
    indexes = {"lite": lite.index(name, dim), "server": server.index(name, dim),
               "exact": ExactKnnIndex(exact_dir, dim)}
    control = ServerControl(server_uri, milvus_name(name))
    lpid = lite_pid(lite_db)
    queries, near_src = make_queries(dim, batch)
    gc.collect()
    base_rss = self_rss_mb()
    log(f"dim {dim}: batch {batch} rows, lite pid {lpid}, base RSS {base_rss:.0f} MB")

    out = {"dimension": dim, "model": model, "batch_rows": batch, "sizes": []}
    have = 0
    try:
        for size in sizes:
            t_size = time.perf_counter()
            entry: dict = {"size": size, "load_avg_start": loadavg(), "insert": {}, "backends": {}}
            gt = ground_truth(queries, dim, batch, size)
            added = size - have
            todo = range(have // batch, size // batch)
            ins_s = {b: 0.0 for b in BACKENDS}
            srv = indexes["server"]

            # Milvus server first, alone: its background sealing/indexing overlaps only its own
            # inserts. Measured as inserted (growing segments, interim index), then flushed + indexed.
            t_srv = time.perf_counter()
            for b in todo:
                recs = batch_records(dim, batch, b, model)
                t = time.perf_counter()
                await srv.insert(recs)
                ins_s["server"] += time.perf_counter() - t
            assert await srv.count() == size
            t = time.perf_counter()
            before = await measure_search(srv, queries, gt, near_src)
            before["measuring_s"] = round(time.perf_counter() - t, 1)
            before["segments"] = sorted((s["rows"], s["state"], s["indexed"]) for s in control.segments())
            log(f"dim {dim} size {size}: server inserted {added} rows in {ins_s['server']:.1f} s; before flush: "
                f"p50 {before['single_ms']['p50']} ms, recall {before['recall_at_20']['all']}")
            build = control.flush_and_wait(size)
            build["insert_start_to_ready_s"] = round(time.perf_counter() - t_srv, 1)
            log(f"  server: flush {build['flush_s']} s, index built {build['index_built_s']} s, "
                f"loaded {build['indexed_and_loaded_s']} s after the flush, "
                f"segments {build['segments_before_compaction']}; compaction + re-index + load "
                f"{build['compacted_reindexed_loaded_stable_s']} s, segments {build['segments']}")

            # Then Lite and exact KNN, by the same batches (the Records are shared: exact keeps them).
            for b in todo:
                recs = batch_records(dim, batch, b, model)
                for name_b in ("lite", "exact"):
                    t = time.perf_counter()
                    await indexes[name_b].insert(recs)
                    ins_s[name_b] += time.perf_counter() - t
                del recs
            have = size
            for name_b in BACKENDS:
                entry["insert"][name_b] = {"rows": added, "s": round(ins_s[name_b], 2),
                                           "rows_per_s": round(added / ins_s[name_b])}
            log(f"  inserted {added} rows: " + ", ".join(f"{b} {ins_s[b]:.1f} s" for b in BACKENDS))
            counts = {b: await indexes[b].count() for b in BACKENDS}
            assert all(c == size for c in counts.values()), counts

            # exact KNN: first search pays the matrix restack, then steady state, then the numpy floor.
            ex = indexes["exact"]
            t = time.perf_counter()
            await ex.search(queries[:1], TOP_K)
            first_ms = (time.perf_counter() - t) * 1000
            res = await measure_search(ex, queries, gt, near_src)
            res["first_search_after_insert_ms"] = round(first_ms, 1)
            res["numpy_floor"] = numpy_floor(ex._snapshot()[0], queries)  # same matrix the index searches
            res["ids_for_sha256_ms"] = await measure_dedup(ex, dim, size)
            gc.collect()
            res["rss_mb"] = round(self_rss_mb() - base_rss)
            res["rss_note"] = "this process's RSS growth since before the first insert (Records + matrix)"
            entry["backends"]["exact"] = res
            log(f"  exact: p50 {res['single_ms']['p50']} ms, batch {res['batch64_ms_per_query']} ms/q, "
                f"recall {res['recall_at_20']['all']}, first search {first_ms:.0f} ms, rss +{res['rss_mb']} MB")

            # Milvus Lite.
            res = await measure_search(indexes["lite"], queries, gt, near_src)
            res["ids_for_sha256_ms"] = await measure_dedup(indexes["lite"], dim, size)
            res["rss_mb"] = round(tree_rss_mb(lpid)) if lpid else None
            entry["backends"]["lite"] = res
            log(f"  lite: p50 {res['single_ms']['p50']} ms, batch {res['batch64_ms_per_query']} ms/q, "
                f"recall {res['recall_at_20']['all']}, rss {res['rss_mb']} MB")

            # Milvus server, flushed and indexed (Lite and exact inserts ran meanwhile).
            res = await measure_search(srv, queries, gt, near_src)
            res["ids_for_sha256_ms"] = await measure_dedup(srv, dim, size)
            res["build"] = build
            res["ef_sweep"] = await ef_sweep(server, srv, queries, gt, near_src)
            log("  server ef sweep: " + ", ".join(
                f"ef {ef}: p50 {v['single_ms']['p50']} ms recall {v['recall_at_20']['held_out']['recall']}"
                for ef, v in res["ef_sweep"].items()))
            res["segments_after_measuring"] = sorted(s["rows"] for s in control.segments())
            res["rss_mb"] = round(tree_rss_mb(server_proc.pid))
            res["before_flush"] = {k: before[k] for k in ("single_ms", "batch64_ms_per_query", "recall_at_20",
                                                          "segments", "measuring_s")}
            entry["backends"]["server"] = res
            log(f"  server: p50 {res['single_ms']['p50']} ms, batch {res['batch64_ms_per_query']} ms/q, "
                f"recall {res['recall_at_20']['all']}, rss {res['rss_mb']} MB")
            entry["load_avg_end"] = loadavg()
            entry["phase_s"] = round(time.perf_counter() - t_size, 1)
            out["sizes"].append(entry)
    finally:
        for store in (lite, server):
            try:
                await store.drop(name)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                log(f"drop failed: {exc}")
        await stores.aclose()
        # Last: pymilvus's MilvusClient.close() disconnects the connection that every client on the
        # same URI shares (the store's too).
        control.close()
        del indexes
        gc.collect()
        if lpid and Path(f"/proc/{lpid}").exists():  # Milvus Lite normally exits with its client
            time.sleep(2)
            if Path(f"/proc/{lpid}").exists():
                os.kill(lpid, signal.SIGTERM)
        shutil.rmtree(lite_dir, ignore_errors=True)
        shutil.rmtree(exact_dir, ignore_errors=True)
    return out


# -- exact KNN memory, measured alone in a child process ------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def exact_memory_child(dim: int, sizes: list[int], batch: int) -> None:
    """Grows an ExactKnnIndex alone (nothing else in the process) and prints its memory per size."""
    import json

    async def go():
        tmp = Path(tempfile.mkdtemp(prefix="revsearch-exact-mem-"))
        try:
            idx = ExactKnnIndex(tmp, dim)
            queries, _ = make_queries(dim, batch)
            model = MODELS.get(dim, f"synthetic{dim}")
            await idx.search(queries[:1], TOP_K)  # numpy / thread pool warmed before the baseline
            gc.collect()
            base = self_rss_mb()
            have = 0
            for size in sizes:
                for b in range(have // batch, size // batch):
                    await idx.insert(batch_records(dim, batch, b, model))
                have = size
                gc.collect()
                records = self_rss_mb() - base
                t = time.perf_counter()
                await idx.search(queries[:1], TOP_K)  # builds the matrix snapshot
                restack_ms = (time.perf_counter() - t) * 1000
                with_matrix = self_rss_mb() - base
                try:  # reset the peak (VmHWM) so it shows the searches' transient memory
                    Path("/proc/self/clear_refs").write_text("5")
                except OSError:
                    pass
                await idx.search(queries[0:1], TOP_K)
                single_peak = _status_mb("VmHWM") - base
                await idx.search(queries[:BATCH_Q], TOP_K)
                batch_peak = _status_mb("VmHWM") - base
                print("EXACTMEM " + json.dumps({
                    "size": size, "records_mb": round(records), "records_and_matrix_mb": round(with_matrix),
                    "peak_single_search_mb": round(single_peak), "peak_batch64_search_mb": round(batch_peak),
                    "restack_ms": round(restack_ms, 1)}), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    asyncio.run(go())


def measure_exact_memory(dim: int, sizes: list[int], batch: int) -> list[dict]:
    import json

    cmd = [sys.executable, str(Path(__file__).resolve()), "--exact-memory-child",
           f"{dim}:{','.join(map(str, sizes))}", "--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    rows = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("EXACTMEM ")]
    if proc.returncode != 0:
        log(f"exact memory child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return rows


# -- report -------------------------------------------------------------------------------------
def _k(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Search latency against collection size ({result['started_at']}, {m['cpus']} CPUs)", ""]
    lines.append(f"Machine: {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, "
                 f"{result['memory_gb']} GB RAM, shared with other work: load average "
                 f"{' / '.join(str(x) for x in result['load_avg_start'])} at start, "
                 f"{' / '.join(str(x) for x in result['load_avg_end'])} at end (1/5/15 min). "
                 f"Milvus Lite {result['versions']['milvus_lite']}, Milvus server {result['versions']['milvus']} "
                 f"(embedded standalone), pymilvus {result['versions']['pymilvus']}, "
                 f"numpy {result['versions']['numpy']}.")
    lines.append("")
    for r in result["runs"]:
        lines.append(f"## Dimension {r['dimension']} ({r['model']}), synthetic L2-normalised Gaussian vectors")
        lines.append("")
        if "load_avg_start" in r:
            lines.append(f"Run started {r['started_at']}, took {r['phase_s']:.0f} s (exact-KNN memory child included); "
                         f"load average {r['load_avg_start'][0]} at start, {r['load_avg_end'][0]} at end.")
            lines.append("")
        lines.append(f"Through the server's own index classes; top_k {TOP_K}; {N_HELD_OUT} held-out + {N_NEAR} "
                     f"near-duplicate queries; inserts in upserts of {r['batch_rows']} rows. Single = one query per "
                     f"call, sequential; batch = {BATCH_Q} queries per call. Per size the server is grown first "
                     "(alone), measured, flushed and waited for (HNSW built and loaded), then Lite and exact KNN "
                     "are grown, then all three are measured. Milvus seals segments by size during the inserts "
                     "and indexes them in the background, so the build time after the flush is only what was "
                     "left; \"insert start to ready\" is the whole wall time. Then a compaction (which Milvus "
                     "would run on its own a little later) is triggered and waited for (merged segments re-indexed "
                     "and loaded), so that no compaction runs into the measurement.")
        lines.append("")
        lines.append("| size | | " + " | ".join(LABELS[b] for b in BACKENDS) + " |")
        lines.append("|---|---|" + "---|" * len(BACKENDS))
        for e in r["sizes"]:
            B = e["backends"]

            def cell(b, f):
                try:
                    return f(B[b])
                except (KeyError, TypeError):
                    return "n/a"

            def build_cell(x):
                b = x["build"]
                return (f"{b['index_built_s']:.1f} (+load {b['indexed_and_loaded_s'] - b['index_built_s']:.1f}); "
                        f"insert start to ready {b['insert_start_to_ready_s']:.0f}; "
                        f"compaction + re-index {b['compacted_reindexed_loaded_stable_s']:.0f}")

            rows = [
                ("single query p50 / p99 ms", lambda x: f"{x['single_ms']['p50']:.2f} / {x['single_ms']['p99']:.2f}"),
                ("batch of 64, ms/query", lambda x: f"{x['batch64_ms_per_query']:.2f}"),
                ("insert rows/s", None),
                ("recall@20 held-out / near-dup (near-dup top-1)",
                 lambda x: f"{x['recall_at_20']['held_out']['recall']:.3f} / "
                           f"{x['recall_at_20']['near_duplicate']['recall']:.3f} "
                           f"({x['recall_at_20']['near_duplicate']['top1']:.2f})"),
                ("index build s: flush to indexed (+ to loaded)", None),
                ("RSS MB", None),
            ]
            for i, (label, f) in enumerate(rows):
                if label == "insert rows/s":
                    cells = [f"{e['insert'][b]['rows_per_s']:,}" for b in BACKENDS]
                elif label.startswith("index build s"):
                    cells = ["none (FLAT)", cell("server", build_cell), "none"]
                elif label == "RSS MB":
                    cells = [cell("lite", lambda x: f"{x['rss_mb']:,}"), cell("server", lambda x: f"{x['rss_mb']:,}"),
                             cell("exact", lambda x: f"{x['memory_alone']['records_and_matrix_mb']:,} "
                                                     f"(peak {x['memory_alone']['peak_batch64_search_mb']:,})")]
                else:
                    cells = [cell(b, f) for b in BACKENDS]
                lines.append(f"| {'**' + _k(e['size']) + '**' if i == 0 else ''} | {label} | "
                             + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Around it (ms):")
        lines.append("")
        lines.append("| size | exact: first search after an insert | exact: numpy floor single / batch ms/q "
                     "| server before flush: p50 ms, recall@20 held-out / near-dup "
                     "| server with explicit ef 64 / 128 / 256: held-out recall@20 (p50 ms) "
                     "| ids_for_sha256 lite / server / exact | server segments (rows) | load avg at start | phase s |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for e in r["sizes"]:
            B = e["backends"]
            ex, sv = B["exact"], B["server"]
            bf = sv["before_flush"]
            lines.append(
                f"| {_k(e['size'])} | {ex['first_search_after_insert_ms']:.0f} | "
                f"{ex['numpy_floor']['single_ms']['p50']:.2f} / {ex['numpy_floor']['batch64_ms_per_query']:.2f} | "
                f"{bf['single_ms']['p50']:.2f}, {bf['recall_at_20']['held_out']['recall']:.3f} / "
                f"{bf['recall_at_20']['near_duplicate']['recall']:.3f} | "
                + " / ".join(f"{v['recall_at_20']['held_out']['recall']:.3f} ({v['single_ms']['p50']:.2f})"
                             for v in sv.get("ef_sweep", {}).values()) + " | "
                f"{B['lite']['ids_for_sha256_ms']:.1f} / {sv['ids_for_sha256_ms']:.1f} / "
                f"{ex['ids_for_sha256_ms']:.1f} | "
                f"{', '.join(str(x) for x in sv['build']['segments'])} | {e['load_avg_start'][0]} | {e['phase_s']} |")
        lines.append("")
    lines.append("Recall@20 is against ground truth computed separately in numpy; a hit counts when it is in the "
                 "true top 20 or ties the 20th score within 1e-5. Held-out queries have no near neighbour (random "
                 "Gaussian data: the hardest case for HNSW); near-duplicate queries are stored vectors plus noise "
                 "(cosine ~0.9). RSS: Milvus server = its whole process tree; Lite = its server process; exact KNN = "
                 "an ExactKnnIndex grown alone in a child process: Records + the search matrix, and in brackets the "
                 "peak during a 64-query search. \"Before flush\": rows still in growing "
                 "segments, searched through Milvus's interim index (what the service sees until Milvus seals "
                 "segments by size or after 10 idle minutes). \"Explicit ef\": the same search sent with "
                 "search_params ef. The main columns search as the service does, through MilvusIndex.search (ef "
                 "from --milvus-search-ef, 256; runs from before that flag, the 128-d run of 2026-11-24 07:10Z, used "
                 "Milvus's default breadth). Check each run's load average: on a shared machine latencies are noisy.")
    lines.append("")
    return "\n".join(lines)


def _parse_runs(specs: list[str]) -> list[tuple[int, list[int]]]:
    out = []
    for spec in specs:
        dim, sizes = spec.split(":")
        out.append((int(dim), [int(float(s)) for s in sizes.split(",")]))
    return out


async def amain(args) -> None:
    from importlib.metadata import version

    runs = _parse_runs(args.runs)
    batches = []
    for dim, sizes in runs:  # rows per upsert: 10k, or fewer so one call stays near 16 MB; divides every size
        cap = args.batch or max(1000, min(10_000, (16 << 20) // (dim * 4)))
        fits = [b for b in range(min([cap] + sizes), 0, -1) if all(s % b == 0 for s in sizes)]
        batches.append(fits[0])
    if running_milvus_servers():
        raise SystemExit(f"a Milvus server already runs on this host (pids {running_milvus_servers()}); "
                         "only one embedded server can run at a time")
    result = {"benchmark": "search_scaling", "started_at": now_utc(), "machine": machine(),
              "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "load_avg_start": loadavg(),
              "versions": {p: version(p) for p in ("milvus", "milvus-lite", "pymilvus", "numpy")},
              "top_k": TOP_K, "queries": {"held_out": N_HELD_OUT, "near_duplicate": N_NEAR},
              "runs": [], "phases_s": {}}
    result["versions"]["milvus_lite"] = result["versions"].pop("milvus-lite")
    tmp = Path(tempfile.mkdtemp(prefix="revsearch-scaling-"))
    proc = None
    t0 = time.perf_counter()
    try:
        log(f"load average {result['load_avg_start']}; temp dir {tmp}")
        proc, uri = start_milvus_server(tmp / "milvus-server")
        result["phases_s"]["server_start"] = round(time.perf_counter() - t0, 1)
        log(f"Milvus server at {uri} (pid {proc.pid}) after {result['phases_s']['server_start']} s")
        for (dim, sizes), batch in zip(runs, batches):
            t = time.perf_counter()
            run_start, run_load = now_utc(), loadavg()
            try:
                result["runs"].append(await run(dim, sizes, batch, uri, proc, tmp))
            except Exception as exc:  # noqa: BLE001 - keep the other runs' results
                log(f"dim {dim} failed: {exc!r}")
                result.setdefault("failed_runs", []).append({"dimension": dim, "sizes": sizes, "error": repr(exc)})
                continue
            t_mem = time.perf_counter()
            log(f"dim {dim}: exact KNN memory alone in a child process")
            mem = {m["size"]: m for m in measure_exact_memory(dim, sizes, batch)}
            for e in result["runs"][-1]["sizes"]:
                e["backends"]["exact"]["memory_alone"] = mem.get(e["size"])
            log(f"  {list(mem.values())}")
            result["phases_s"][f"dim_{dim}_exact_memory"] = round(time.perf_counter() - t_mem, 1)
            result["phases_s"][f"dim_{dim}"] = round(time.perf_counter() - t, 1)
            result["runs"][-1].update(started_at=run_start, load_avg_start=run_load, load_avg_end=loadavg(),
                                      phase_s=result["phases_s"][f"dim_{dim}"])
            partial = dict(result, load_avg_end=loadavg(), finished_at=now_utc(), partial=True)
            partial = merged(args.name, partial) if args.merge else partial
            write_results(args.name, partial, markdown(partial))
    finally:
        if proc is not None:
            stop_milvus_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_avg_end"] = loadavg()
    result["finished_at"] = now_utc()
    result["phases_s"]["total"] = round(time.perf_counter() - t0, 1)
    if args.merge:
        result = merged(args.name, result)
    write_results(args.name, result, markdown(result))
    log(f"wrote benchmarks/results/{args.name}.json and .md")
    print(markdown(result))


def merged(name: str, new: dict) -> dict:
    """new plus the runs of other dimensions from the existing results file (each run keeps its own
    start time, load averages and duration; the file's header takes the earliest start)."""
    import json

    path = RESULTS / f"{name}.json"
    if not path.exists():
        return new
    old = json.loads(path.read_text())
    dims = {r["dimension"] for r in new["runs"]}
    kept = []
    for r in old.get("runs", []):
        if r["dimension"] in dims:
            continue
        if "load_avg_start" not in r:  # a file from a single-run invocation: its header is the run's
            r.update(started_at=old["started_at"], load_avg_start=old["load_avg_start"],
                     load_avg_end=old["load_avg_end"], phase_s=old["phases_s"].get(f"dim_{r['dimension']}", 0.0))
        kept.append(r)
    out = dict(new)
    out["runs"] = sorted(kept + new["runs"], key=lambda r: r["dimension"])
    out["started_at"] = min(r["started_at"] for r in out["runs"])
    out["load_avg_start"] = min(out["runs"], key=lambda r: r["started_at"])["load_avg_start"]
    out["phases_s"] = {**old.get("phases_s", {}), **{k: v for k, v in new["phases_s"].items() if k != "total"}}
    out["phases_s"]["total"] = round(sum(v for k, v in out["phases_s"].items() if k.startswith("dim_")
                                         and not k.endswith("_exact_memory")), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=["128:10000,100000,1000000"],
                    help="DIM:SIZE,SIZE,... per run (e.g. 128:10000,100000,1000000 2048:10000,100000)")
    ap.add_argument("--dimension", type=int, help="shorthand for --runs DIM:10000,100000,1000000")
    ap.add_argument("--batch", type=int, default=0, help="rows per insert call (default: 10k, ~16 MB max)")
    ap.add_argument("--exact-memory-child", metavar="DIM:SIZES", help=argparse.SUPPRESS)
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of other dimensions already in the results file")
    ap.add_argument("--name", default="search_scaling", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    if args.exact_memory_child:
        (dim, sizes), = _parse_runs([args.exact_memory_child])
        exact_memory_child(dim, sizes, args.batch)
        return
    if args.dimension:
        args.runs = [f"{args.dimension}:10000,100000,1000000"]
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
