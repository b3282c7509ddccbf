"""Search under load against a large collection, then a soak at the knee, with the real tools.

1. Starts a revsearch server process (managed CPU Triton, Milvus Lite), creates a ResNet50
   collection, indexes --images real LFW images through the server, stops it, and tops the
   collection up to --vectors rows with synthetic L2-normalised vectors written straight into the
   Milvus Lite file with the server's own MilvusIndex (no RPC inserts raw vectors; the file is the
   server's, so the server is stopped while seeding).
2. Restarts the server and runs `revsearch loadtest --workload search --sweep ...` (a separate
   process, as users run it) with LFW query images: throughput, p50/p95/p99 and errors per
   concurrency, the knee.
3. Soaks: `revsearch loadtest` at the knee's concurrency for --soak-seconds, sampling the RSS of
   the server process and its Triton processes every 10 s: start and end are reported.
Writes benchmarks/results/load_search.{json,md} (+ loadtest.json/png under load_search/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, machine, now_utc, start_server, stop_server, write_results  # noqa: E402
from revsearch.client import ImageInput, SearchClient  # noqa: E402
from tests.helpers import LFW, lfw_images  # noqa: E402

COLLECTION = "load"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (Triton and its Python-backend stubs), MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        todo += _children(p)
    return total / 2 ** 20


def seed(data_dir: Path, dimension: int, target: int, have: int) -> float:
    """Plain inserts (the server upserts, which costs a delete per row; these ids are all new)."""
    from pymilvus import MilvusClient

    from revsearch_server.index.milvus import milvus_name

    client = MilvusClient(uri=str(data_dir / "milvus.db"))
    rng = np.random.default_rng(0)
    started, batch = time.perf_counter(), 5000
    for start in range(have, target, batch):
        n = min(batch, target - start)
        vectors = rng.standard_normal((n, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        client.insert(milvus_name(COLLECTION), [
            {"id": f"synthetic{start + i}", "vector": v.tolist(), "uri": f"synthetic://{start + i}",
             "sha256": f"{start + i:064x}", "model": "resnet50", "model_version": "1", "created_at_ms": 0,
             "metadata": {}, "face_box": {}} for i, v in enumerate(vectors)])
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def loadtest(address: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "revsearch", "--server", address, "loadtest", "--workload", "search",
                           "--images", str(LFW), "--max-images", "300", "--collection", COLLECTION, "--json", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"loadtest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=300, help="real LFW images indexed through the server")
    parser.add_argument("--sweep", default="1,2,4,8,16,32,64")
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    args = parser.parse_args()
    out_dir = RESULTS / "load_search"

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        data_dir = Path(tmp)
        proc, address = start_server([], str(data_dir), allow_untrained=True)
        try:
            with SearchClient(address, timeout=600) as client:
                dim = client.create_collection(COLLECTION, model="resnet50").collection.dimension
                items = [ImageInput.from_path(p) for p in lfw_images(args.images, per_person_max=2)]
                indexed = sum(1 for r in client.index_images(COLLECTION, items) if r.status == 1)
        finally:
            stop_server(proc)
        seed_s = seed(data_dir, dim, args.vectors, indexed)
        print(f"collection: {indexed} LFW images + {args.vectors - indexed} synthetic = {args.vectors} vectors of "
              f"{dim}-d (seeded in {seed_s:.0f} s)", flush=True)

        proc, address = start_server([], str(data_dir), allow_untrained=True)
        try:
            with SearchClient(address, timeout=600) as client:
                count = client.describe_collection(COLLECTION).item_count
            sweep = loadtest(address, "--sweep", args.sweep, "--duration", str(args.step_seconds), "--warmup", "5",
                             "--out", str(out_dir))
            for s in sweep["steps"]:
                print(f"  c={s['concurrency']:3d} {s['throughput']:6.1f} req/s p50 {s['p50_ms']:7.0f} "
                      f"p99 {s['p99_ms']:7.0f} ms errors {s['errors']}", flush=True)
            knee = sweep["knee"]
            print(f"knee: concurrency {knee['concurrency']}, {knee['throughput']:.1f} req/s, p99 {knee['p99_ms']:.0f} ms",
                  flush=True)

            samples: list[tuple[float, float]] = []
            stop = threading.Event()

            def sample():
                t0 = time.time()
                while not stop.is_set():
                    samples.append((time.time() - t0, rss_mb(proc.pid)))
                    stop.wait(10)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            soak = loadtest(address, "--concurrency", str(knee["concurrency"]), "--duration", str(args.soak_seconds),
                            "--warmup", "0")
            stop.set()
            sampler.join()
            samples.append((samples[-1][0] + 10 if samples else 0.0, rss_mb(proc.pid)))
        finally:
            stop_server(proc)

    soak_step = soak["steps"][0]
    rss_start, rss_end = samples[0][1], samples[-1][1]
    result = {"benchmark": "search under load against a large collection; soak at the knee", "date": now_utc(),
              "machine": machine(), "vectors": count, "dimension": dim, "real_images": indexed,
              "seed_seconds": seed_s, "sweep": sweep, "knee": knee,
              "soak": {"concurrency": knee["concurrency"], "seconds": soak_step["seconds"], "step": soak_step,
                       "rss_mb_start": rss_start, "rss_mb_end": rss_end, "rss_samples": samples}}
    rows = "\n".join(f"| {s['concurrency']} | {s['throughput']:.1f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {s['max_ms']:.0f} | {sum(s['errors'].values())} |" for s in sweep["steps"])
    write_results("load_search", result, (
        f"# `search` under load: {count} vectors ({dim}-d, ResNet50 collection, Milvus Lite), {result['date']}, "
        f"{machine()['cpus']} CPUs\n\n"
        f"`revsearch loadtest --workload search --sweep {args.sweep} --duration {args.step_seconds:.0f}` with LFW "
        f"query images (one image per request), server with managed CPU Triton.\n\n"
        "| concurrency | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n\nKnee (fewest callers within 5% of the best throughput): concurrency {knee['concurrency']}, "
        f"{knee['throughput']:.1f} req/s, p99 {knee['p99_ms']:.0f} ms.\n\n"
        f"Soak at the knee for {soak_step['seconds']:.0f} s: {soak_step['requests']} requests, "
        f"{soak_step['throughput']:.1f} req/s, p99 {soak_step['p99_ms']:.0f} ms, errors "
        f"{soak_step['errors'] or 'none'}; server + Triton RSS {rss_start:.0f} MB at the start, {rss_end:.0f} MB at "
        f"the end.\n"))
    print(f"soak: {soak_step['throughput']:.1f} req/s, errors {soak_step['errors']}, RSS {rss_start:.0f} -> "
          f"{rss_end:.0f} MB; written to benchmarks/results/load_search.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
