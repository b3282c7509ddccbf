"""Search under load against a large collection, then a soak at the knee, with the real tools.

1. Starts a revsearch server process (managed CPU Triton, Milvus Lite), creates a ResNet50
   collection, indexes --images real LFW images through the server, stops it, and tops the
   collection up to --vectors rows with synthetic L2-normalised vectors written straight into the
   store (the Milvus Lite file, or the Milvus server) as pymilvus inserts of rows in the server's
   layout (no RPC inserts raw vectors; a Lite file is the server's, so the server is stopped while
   seeding).
2. Restarts the server and runs `revsearch loadtest --workload search --sweep ...` (a separate
   process, as users run it) with LFW query images: throughput, p50/p95/p99 and errors per
   concurrency, the knee.
3. Soaks: `revsearch loadtest` at the knee's concurrency for --soak-seconds, sampling the RSS of
   the server process and its Triton processes every 10 s: start and end are reported.
Then the tool's own ceiling: `revsearch loadtest --workload noop` (no image work) at 64 callers.
Writes benchmarks/results/load_search.{json,md} (+ loadtest.json/png under load_search/);
with --store server (the embedded Milvus 2.3 server, HNSW) load_search_milvus_server.*.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common import (LFW, RESULTS, ROOT, ServerControl, lfw_images, machine, now_utc, process_tree, rss_kb,
                    start_milvus_server, start_server, stop_milvus_server, stop_server, write_results)
from revsearch.client import ImageInput, SearchClient
from revsearch.v1 import search_service_pb2 as pb
from revsearch_server.domain import l2_normalize
from revsearch_server.index.milvus import CURRENT_LAYOUT, LAYOUT_LOCAL_FEATURES, milvus_name

COLLECTION = "load"


def rss_by_process(pid: int) -> dict[str, float]:
    """Resident memory, MB, of a process ("server") and its descendants (Triton, its Python-backend
    stubs, Milvus Lite), summed per process name."""
    out: dict[str, float] = {}
    for p in process_tree(pid):
        try:
            name = "server" if p == pid else Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:  # gone meanwhile
            continue
        out[name] = out.get(name, 0.0) + rss_kb(p) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def seed(uri: str, dimension: int, target: int, have: int) -> float:
    """Plain inserts (the server upserts, which costs a delete per row; these ids are all new)."""
    from pymilvus import MilvusClient

    # The rows below are in the layout the server gives new collections (index/milvus.py): face_box
    # JSON, face_count, timestamp_s and local_features columns with their "none" values (synthetic rows have
    # no crop vectors or local features: copy detection leaves them at their vector rank). A new layout
    # must be added here.
    assert CURRENT_LAYOUT == LAYOUT_LOCAL_FEATURES, f"seed() writes layout {LAYOUT_LOCAL_FEATURES}, not {CURRENT_LAYOUT}"
    client = MilvusClient(uri=uri)
    rng = np.random.default_rng(0)
    # 500 rows a call: Milvus Lite took 2,300 rows/s of 2048-d vectors at 500 a call but 43 rows/s at 5,000
    # (measured here; 40 MB messages are slow to take in), so big calls were the slow seeding seen before.
    started, batch = time.perf_counter(), 500
    for start in range(have, target, batch):
        n = min(batch, target - start)
        vectors = l2_normalize(rng.standard_normal((n, dimension)).astype(np.float32))
        client.insert(milvus_name(COLLECTION), [
            {"id": f"synthetic{start + i}", "vector": v.tolist(), "uri": f"synthetic://{start + i}",
             "sha256": f"{start + i:064x}", "model": "resnet50", "model_version": "1", "created_at_ms": 0,
             "metadata": {}, "face_box": {}, "face_count": 0, "timestamp_s": -1.0, "local_features": ""}
            for i, v in enumerate(vectors)])
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def loadtest(address: str, *args: str, workload: str = "search") -> dict:
    proc = subprocess.run([sys.executable, "-m", "revsearch", "--server", address, "loadtest", "--workload", workload,
                           "--images", str(LFW), "--max-images", "300", "--collection", COLLECTION, "--json", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"loadtest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("lite", "server"), default="lite",
                        help="Milvus Lite file (default) or the embedded Milvus 2.3 standalone server (HNSW)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=300, help="real LFW images indexed through the server")
    parser.add_argument("--sweep", default="1,2,4,8,16,32,64")
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0 skips the soak")
    parser.add_argument("--name", help="results name under benchmarks/results/ (default: by --store)")
    args = parser.parse_args()
    name = args.name or ("load_search" if args.store == "lite" else "load_search_milvus_server")
    out_dir = RESULTS / name

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        data_dir = Path(tmp)
        milvus_proc, extra = None, []
        if args.store == "server":
            milvus_proc, uri = start_milvus_server(data_dir / "milvus-server")
            extra = ["--milvus-uri", uri]
        else:
            uri = str(data_dir / "milvus.db")
        try:
            return run(args, data_dir, uri, extra, milvus_proc, name, out_dir)
        finally:
            if milvus_proc is not None:
                stop_milvus_server(milvus_proc)


def run(args, data_dir: Path, uri: str, extra: list[str], milvus_proc, name: str, out_dir: Path) -> int:
    store = ("Milvus Lite 2.5.1 (FLAT, exact)" if milvus_proc is None
             else "embedded Milvus server 2.3.5 (AUTOINDEX = HNSW, searched with ef 256)")
    proc, address = start_server(extra, str(data_dir), allow_untrained=True)
    try:
        with SearchClient(address, timeout=600) as client:
            dim = client.create_collection(COLLECTION, model="resnet50").collection.dimension
            items = [ImageInput.from_path(p) for p in lfw_images(args.images, per_person_max=2)]
            indexed = sum(1 for r in client.index_images(COLLECTION, items) if r.status == pb.ITEM_STATUS_INDEXED)
    finally:
        stop_server(proc)
    # In a child process: Milvus Lite keeps a file's server, and its lock on the file, for as long as
    # the process that opened it lives (client.close() does not release it), and the server must
    # open the file again next.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        seed_s = child.submit(seed, uri, dim, args.vectors, indexed).result()
    ready = {}
    if milvus_proc is not None:
        # Searched only once the HNSW index covers every row and is loaded, as a collection that
        # has been standing a while would be (growing segments are searched by brute force).
        ready = ServerControl(uri, milvus_name(COLLECTION)).flush_and_wait(args.vectors)
        print(f"index built and loaded: {ready}", flush=True)
    print(f"collection: {indexed} LFW images + {args.vectors - indexed} synthetic = {args.vectors} vectors of "
          f"{dim}-d in {store} (seeded in {seed_s:.0f} s)", flush=True)

    proc, address = start_server(extra, str(data_dir), allow_untrained=True)
    samples: list[tuple[float, float]] = []
    by_process: list[dict[str, float]] = []
    soak = None
    try:
        with SearchClient(address, timeout=600) as client:
            count = client.describe_collection(COLLECTION).item_count
        sweep = loadtest(address, "--sweep", args.sweep, "--duration", str(args.step_seconds), "--warmup", "5",
                         "--out", str(out_dir))
        for s in sweep["steps"]:
            print(f"  c={s['concurrency']:3d} {s['throughput']:6.1f} req/s p50 {s['p50_ms']:7.0f} "
                  f"p99 {s['p99_ms']:7.0f} ms errors {s['errors']} client CPU {s['client_cpu_ms_per_request']:.1f} "
                  "ms/request", flush=True)
        knee = sweep["knee"]
        print(f"knee: concurrency {knee['concurrency']}, {knee['throughput']:.1f} req/s, p99 {knee['p99_ms']:.0f} ms",
              flush=True)
        # The tool's own ceiling against the same server: GetServerInfo does no image work, so
        # this is what the tool and gRPC can drive when the server is not the limit.
        noop = loadtest(address, "--concurrency", "64", "--duration", "10", "--warmup", "2", workload="noop")
        noop_step = noop["steps"][0]
        print(f"tool ceiling (noop, 64 callers): {noop_step['throughput']:.0f} req/s, client CPU "
              f"{noop_step['client_cpu_ms_per_request']:.2f} ms/request", flush=True)

        if args.soak_seconds > 0:
            stop = threading.Event()

            def sample():
                t0 = time.time()
                while not stop.is_set():
                    parts = rss_by_process(proc.pid)
                    samples.append((time.time() - t0, sum(parts.values())))
                    by_process.append(parts)
                    stop.wait(10)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            soak = loadtest(address, "--concurrency", str(knee["concurrency"]), "--duration", str(args.soak_seconds),
                            "--warmup", "0")
            stop.set()
            sampler.join()
            by_process.append(rss_by_process(proc.pid))
            samples.append((samples[-1][0] + 10 if samples else 0.0, sum(by_process[-1].values())))
    finally:
        stop_server(proc)

    best = max(sweep["steps"], key=lambda s: s["throughput"])
    overhead = {"noop_throughput": noop_step["throughput"],
                "noop_client_cpu_ms_per_request": noop_step["client_cpu_ms_per_request"],
                "search_best_throughput": best["throughput"],
                "client_cores_used_at_best": best["throughput"] * best["client_cpu_ms_per_request"] / 1000}
    result = {"benchmark": "search under load against a large collection; soak at the knee", "date": now_utc(),
              "machine": machine(), "store": store, "vectors": count, "dimension": dim, "real_images": indexed,
              "seed_seconds": seed_s, "index_ready": ready, "sweep": sweep, "knee": knee, "tool_overhead": overhead}
    rows = "\n".join(f"| {s['concurrency']} | {s['throughput']:.1f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {s['max_ms']:.0f} | {sum(s['errors'].values())} | "
                     f"{s['client_cpu_ms_per_request']:.1f} |" for s in sweep["steps"])
    md = (f"# `search` under load: {count} vectors ({dim}-d, ResNet50 collection), {store}, {result['date']}, "
          f"{machine()['cpus']} CPUs\n\n"
          f"`revsearch loadtest --workload search --sweep {args.sweep} --duration {args.step_seconds:.0f}` with LFW "
          f"query images (one image per request; {indexed} of the stored vectors are real LFW images, the rest "
          f"synthetic unit vectors), server with the managed CPU Triton, loadtest in its own process on the same "
          f"machine.\n\n"
          "| concurrency | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | loadtest CPU ms/request |\n"
          "|---|---|---|---|---|---|---|---|\n"
          f"{rows}\n\nKnee (fewest callers within 5% of the best throughput): concurrency {knee['concurrency']}, "
          f"{knee['throughput']:.1f} req/s, p99 {knee['p99_ms']:.0f} ms.\n\n"
          f"The tool's own ceiling against this server (`--workload noop`, GetServerInfo, 64 callers): "
          f"{noop_step['throughput']:.0f} req/s at {noop_step['client_cpu_ms_per_request']:.2f} ms of client CPU per "
          f"request; at the sweep's best ({best['throughput']:.1f} req/s) the tool used "
          f"{overhead['client_cores_used_at_best']:.3f} of a core.\n")
    if soak is not None:
        soak_step = soak["steps"][0]
        tree = "server + Triton + Milvus Lite" if milvus_proc is None else "server + Triton (Milvus server not counted)"
        rss_start, rss_end = samples[0][1], samples[-1][1]
        after_1min = np.array([s for s in samples if s[0] >= 60])
        slope = float(np.polyfit(after_1min[:, 0] / 60, after_1min[:, 1], 1)[0]) if len(after_1min) > 2 else 0.0
        result["soak"] = {"concurrency": knee["concurrency"], "seconds": soak_step["seconds"], "step": soak_step,
                          "rss_mb_start": rss_start, "rss_mb_end": rss_end, "rss_samples": samples,
                          "rss_mb_per_minute_after_first_minute": slope,
                          "rss_by_process_start": by_process[0], "rss_by_process_end": by_process[-1],
                          "rss_by_process_samples": by_process}
        md += (f"\nSoak at the knee for {soak_step['seconds']:.0f} s: {soak_step['requests']} requests, "
               f"{soak_step['throughput']:.1f} req/s, p99 {soak_step['p99_ms']:.0f} ms, errors "
               f"{soak_step['errors'] or 'none'}; {tree} RSS {rss_start:.0f} MB at the start, "
               f"{rss_end:.0f} MB at the end (samples every 10 s in the JSON); after the first minute a "
               f"least-squares slope of {slope:+.2f} MB/min. Per process, start -> end: "
               + ", ".join(f"{k} {by_process[0].get(k, 0):.0f} -> {v:.0f} MB" for k, v in by_process[-1].items())
               + ".\n")
        print(f"soak: {soak_step['throughput']:.1f} req/s, errors {soak_step['errors']}, RSS {rss_start:.0f} -> "
              f"{rss_end:.0f} MB", flush=True)
    write_results(name, result, md)
    print(f"written to benchmarks/results/{name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
