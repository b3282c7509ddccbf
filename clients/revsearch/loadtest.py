"""`revsearch loadtest`: throughput and latency of a running server under N concurrent callers.

Closed loop: at each concurrency step, N workers each send one request, wait for its answer and
send the next, for a duration or a number of requests. Every request carries one image (encoded
bytes, as users send them). Per step it reports requests/s, latency percentiles and errors by
status code; across a sweep, a plot of latency against throughput.

Workloads: `search` (SearchImages by image), `embed` (EmbedImage), `index` (IndexImages, one
image per request over a unary-like stream; every request is a distinct image, so nothing is a
duplicate: images are made distinct by a per-request JPEG comment), `mix` (80% search, 15% embed,
5% index), and `noop` (GetServerInfo: no image work) which measures this tool's own ceiling.

The tool's own cost is measured, not assumed: every step records the CPU seconds this process
spent per request (resource.getrusage). `noop` shows how many requests/s the tool can drive at all.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from .client import AsyncSearchClient, ImageInput, Security
from .errors import NotFoundError, RevsearchClientError

WORKLOADS = ("search", "embed", "index", "mix", "noop")
MIX = (("search", 0.80), ("embed", 0.15), ("index", 0.05))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def load_images(directory: Path, limit: int = 500) -> list[tuple[str, bytes]]:
    """(path, bytes) of up to `limit` images under directory, sorted by path (deterministic)."""
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise FileNotFoundError(f"no images (jpg, png, webp, bmp) under {directory}")
    return [(str(p), p.read_bytes()) for p in paths]


def distinct_jpeg(data: bytes, n: int) -> bytes:
    """The same picture with a JPEG comment naming n, so its bytes (and content id) are new."""
    if data[:2] != b"\xff\xd8":
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=92)
        data = buf.getvalue()
    comment = f"revsearch-loadtest {n} {random.random()}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


@dataclass
class StepResult:
    concurrency: int
    requests: int
    seconds: float
    codes: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    client_cpu_s: float = 0.0

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        ok = self.codes.get("OK", 0)
        return {
            "concurrency": self.concurrency, "requests": self.requests, "seconds": round(self.seconds, 3),
            "throughput": ok / self.seconds if self.seconds else 0.0,  # successful requests (images) per second
            "offered_per_s": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "errors": {code: n for code, n in sorted(self.codes.items()) if code != "OK"},
            "client_cpu_ms_per_request": 1000 * self.client_cpu_s / max(1, self.requests),
        }


class LoadTest:
    def __init__(self, target: str, workload: str, collection: str, images: list[tuple[str, bytes]],
                 timeout_s: float = 30.0, seed: int = 0, model: str = "", filter: str = ""):
        """model: of the collection when this creates it (server default: ""); filter: every search's."""
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; use one of {', '.join(WORKLOADS)}")
        self.target, self.workload, self.collection = target, workload, collection
        self.images, self.timeout_s = images, timeout_s
        self.model, self.filter = model, filter
        self._rng = random.Random(seed)
        self._counter = 0

    async def prepare(self, client: AsyncSearchClient, index_first: int = 100) -> dict:
        """Makes sure the collection exists and (for search) holds something to find."""
        if self.workload == "noop":
            return {}
        try:
            info = await client.describe_collection(self.collection)
        except NotFoundError:
            await client.create_collection(self.collection, model=self.model)
            info = await client.describe_collection(self.collection)
        if info.item_count == 0 and self.workload in ("search", "mix"):
            items = [ImageInput(image=b, uri=p) for p, b in self.images[:index_first]]
            async for _ in client.index_images(self.collection, items):
                pass
            info = await client.describe_collection(self.collection)
        return {"collection": self.collection, "items": info.item_count, "model": info.model,
                "model_trained": info.model_trained, "filter": self.filter}

    def _pick(self) -> tuple[str, bytes]:
        self._counter += 1
        return self.images[self._counter % len(self.images)]

    async def _one(self, client: AsyncSearchClient, kind: str) -> None:
        timeout = self.timeout_s
        if kind == "noop":
            await client.info(timeout=timeout)
            return
        _, data = self._pick()
        if kind == "search":
            await client.search(self.collection, image=data, top_k=10, timeout=timeout, filter=self.filter)
        elif kind == "embed":
            await client.embed(data, collection=self.collection, timeout=timeout)
        elif kind == "index":
            item = ImageInput(image=distinct_jpeg(data, self._counter), uri=f"loadtest://{self._counter}")
            async for resp in client.index_images(self.collection, [item], timeout=timeout):
                if resp.HasField("error"):
                    raise _ItemFailed(resp.error.code_name)

    def _kind(self) -> str:
        if self.workload != "mix":
            return self.workload
        r, acc = self._rng.random(), 0.0
        for kind, share in MIX:
            acc += share
            if r < acc:
                return kind
        return MIX[-1][0]

    async def step(self, client: AsyncSearchClient, concurrency: int, duration_s: float | None,
                   requests: int | None) -> StepResult:
        result = StepResult(concurrency, 0, 0.0)
        started = time.perf_counter()
        stop_at = started + duration_s if duration_s else None
        budget = [requests] if requests else None
        cpu0 = _cpu_seconds()

        async def worker():
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                if budget is not None:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                t = time.perf_counter()
                try:
                    await self._one(client, self._kind())
                    code = "OK"
                except RevsearchClientError as exc:
                    code = exc.code.name
                except _ItemFailed as exc:
                    code = str(exc)
                except grpc.RpcError as exc:  # pragma: no cover - the client maps these
                    code = exc.code().name
                result.requests += 1
                result.codes[code] += 1
                if code == "OK":
                    result.latencies_ms.append(1000 * (time.perf_counter() - t))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
        result.client_cpu_s = _cpu_seconds() - cpu0
        return result


class _ItemFailed(Exception):
    pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(target: str, workload: str, collection: str, images: list[tuple[str, bytes]],
              concurrencies: list[int], duration_s: float | None, requests: int | None,
              warmup_s: float = 2.0, timeout_s: float = 30.0, progress=None,
              security: Security | None = None, model: str = "", filter: str = "") -> dict:
    """Runs the sweep; returns the report (JSON-ready). `security`: TLS and API key (None: plaintext);
    model: of a collection this creates; filter: every search's (AIP-160)."""
    test = LoadTest(target, workload, collection, images, timeout_s, model=model, filter=filter)
    async with AsyncSearchClient(target, timeout=max(60.0, timeout_s), security=security) as client:
        info = await client.info()
        setup = await test.prepare(client)
        if warmup_s > 0:
            await test.step(client, max(concurrencies), warmup_s, None)
        steps = []
        for n in concurrencies:
            r = (await test.step(client, n, duration_s, requests)).summary()
            steps.append(r)
            if progress:
                progress(r)
    return {"target": target, "workload": workload, "server_version": info.version,
            "inference_backend": info.inference_detail, "setup": setup, "images": len(images),
            "duration_s": duration_s, "requests_per_step": requests, "steps": steps,
            "knee": knee(steps), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def knee(steps: list[dict]) -> dict | None:
    """The lowest concurrency whose throughput is within 5% of the sweep's best: past it, more
    callers only add latency."""
    ok = [s for s in steps if s["throughput"] > 0]
    if not ok:
        return None
    best = max(s["throughput"] for s in ok)
    first = min((s for s in ok if s["throughput"] >= 0.95 * best), key=lambda s: s["concurrency"])
    return {"concurrency": first["concurrency"], "throughput": first["throughput"], "p99_ms": first["p99_ms"]}


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "loadtest.json", out_dir / "loadtest.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    plot(report, paths[1])
    return paths


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = [s["throughput"] for s in steps]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^-")):
        ax.plot(x, [s[key] for s in steps], style, label=key.removesuffix("_ms"))
    for s in steps:
        ax.annotate(str(s["concurrency"]), (s["throughput"], s["p99_ms"]), textcoords="offset points",
                    xytext=(3, 4), fontsize=7)
    ax.set_xlabel("throughput (successful requests/s, one image each)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"revsearch loadtest: {report['workload']} (labels: concurrency)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
