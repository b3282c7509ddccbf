"""ImportVectors into the Milvus 2.3 server: this checkout's server against the server of another git
revision (--baseline, default HEAD), the same vectors into the same Milvus, interleaved rounds.

A git worktree of the baseline is made in a temporary folder; each round starts the embedded Milvus
2.3 standalone's revsearch servers in turn (ONNX Runtime in the server process, no Triton: imports
embed nothing), each imports --rows vectors with metadata through one client stream (1,000 items a
message, the client's default) into a new copy-detection collection of efficientnet_lite0, and the
collection is dropped. The vectors are bench_scale.py's real-structured 128-d rows (its cache). Per
import: rows/s and the CPU each process spent per row (/proc; Milvus's CPU includes the index builds
of the collections before it, so compare the servers' CPU, not Milvus's). The order alternates from
round to round. Writes benchmarks/results/import.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import _id, build_items, real_vectors
from common import (ROOT, log, machine, now_utc, process_tree, start_milvus_server, start_server,
                    stop_milvus_server, stop_server, write_results)
from revsearch.client import AsyncSearchClient, VectorInput


def cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def serve(server_dir: Path, milvus_uri: str, data_dir: str) -> tuple[subprocess.Popen, str]:
    """A revsearch server from server_dir's code (its package first on the path) over the Milvus."""
    return start_server(["--milvus-uri", milvus_uri, "--triton-url", "off",
                         "--model-repository", str(ROOT / "model_repository")], data_dir, allow_untrained=False,
                        env={**os.environ, "PYTHONPATH": str(server_dir)})


async def import_once(address: str, name: str, items) -> float:
    async with AsyncSearchClient(address, timeout=600) as client:
        c = (await client.create_collection(name, model="efficientnet_lite0")).collection
        started = time.perf_counter()
        resp = await client.import_vectors(
            name, (VectorInput(id=_id(n), vector=v, uri=f"archive://{n}", metadata={"tenant": f"t{n % 7}"})
                   for n, v in enumerate(items)), model=c.model, model_version=c.model_version)
        elapsed = time.perf_counter() - started
        assert resp.imported == len(items) and resp.failed == 0, (resp.imported, resp.failed)
        await client.drop_collection(name)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT, check=True)
        try:
            servers = {"baseline": tree / "server", "this checkout": ROOT / "server"}
            mproc, uri = start_milvus_server(Path(tmp) / "milvus")
            try:
                items, _ = build_items(real_vectors("(cached)"), args.rows)
                for r in range(args.rounds):
                    order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                    for which in order:
                        proc, address = serve(servers[which], uri, f"{tmp}/server-{r}-{which[:4]}")
                        try:
                            milvus_pids = process_tree(mproc.pid)
                            s0, m0 = cpu_s([proc.pid]), cpu_s(milvus_pids)
                            elapsed = asyncio.run(import_once(address, f"import_{r}_{which[:4]}", items))
                            row = {"round": r + 1, "server": which, "rows": args.rows,
                                   "rows_per_s": round(args.rows / elapsed),
                                   "server_cpu_us_per_row": round(1e6 * (cpu_s([proc.pid]) - s0) / args.rows, 1),
                                   "milvus_cpu_us_per_row": round(1e6 * (cpu_s(milvus_pids) - m0) / args.rows, 1),
                                   "load_avg": os.getloadavg()[0]}
                        finally:
                            stop_server(proc)
                        log(str(row))
                        rounds.append(row)
            finally:
                stop_milvus_server(mproc)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    med = {w: statistics.median(r["rows_per_s"] for r in rounds if r["server"] == w) for w in servers}
    cpu = {w: round(statistics.median(r["server_cpu_us_per_row"] for r in rounds if r["server"] == w), 1) for w in servers}
    result = {"date": now_utc(), "machine": machine(), "load_avg_before": load_before,
              "load_avg_after": os.getloadavg(), "baseline": rev, "rows": args.rows, "rounds": rounds,
              "median_rows_per_s": med, "median_server_cpu_us_per_row": cpu,
              "ratio": round(med["this checkout"] / med["baseline"], 2), "target_rows_per_s": 20_000}
    md = [f"# ImportVectors into the Milvus 2.3 server: this checkout against {rev}", "",
          f"{result['date']}; {args.rows:,} rows a run, {args.rounds} interleaved rounds; load average "
          f"{load_before[0]:.2f} before, {result['load_avg_after'][0]:.2f} after; method: the script's docstring.", "",
          "| server | rows/s (median) | server CPU µs a row (median) | target |", "| --- | --- | --- | --- |"]
    md += [f"| {w} | {med[w]:,.0f} | {cpu[w]} | {'>= 20,000' if w == 'this checkout' else ''} |" for w in servers]
    md += ["", f"Ratio this checkout / {rev}: {result['ratio']}", "", "| round | server | rows/s | server µs a row | "
           "Milvus µs a row | load |", "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['round']} | {r['server']} | {r['rows_per_s']:,} | {r['server_cpu_us_per_row']} | "
           f"{r['milvus_cpu_us_per_row']} | {r['load_avg']:.2f} |" for r in rounds]
    write_results("import", result, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
