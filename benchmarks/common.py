"""What the benchmarks share: starting a revsearch server process, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def start_server(extra: list[str], data_dir: str, allow_untrained: bool) -> tuple[subprocess.Popen, str]:
    """A server as users run it (its own process, managed Triton unless extra says otherwise)."""
    cmd = [sys.executable, "-m", "revsearch_server", "--host", "127.0.0.1", "--port", "0", "--data-dir", data_dir,
           "--log-level", "WARNING", "--metrics-port", "0", *extra] + (["--allow-untrained"] if allow_untrained else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited: rc={proc.poll()}")
        m = re.search(r"revsearch listening on [^:]+:(\d+)", line)
        if m:
            return proc, f"127.0.0.1:{m.group(1)}"
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_results(name: str, result: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
