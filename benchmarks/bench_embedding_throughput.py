"""ResNet50 embedding throughput: raw ONNX Runtime vs the full gRPC path, in one run.

Measures, on the same LFW images:
  (a) ONNX Runtime called directly in-process on preprocessed batches (the model's ceiling here),
  (b) EmbedImage over gRPC through the revsearch server with the managed CPU Triton,
  (c) EmbedImage over gRPC through the revsearch server with the local ONNX Runtime fallback,
and writes images/s and the ratios b/a and c/a to benchmarks/results/. The servers run as
separate processes, as users run them; the client sends encoded JPEG bytes, so (b) and (c)
include decoding, preprocessing, gRPC and (for b) the hop to Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np

from common import (NO_LIMITS, RESULTS, ROOT, embed_at_saturation, lfw_images, machine, now_utc, start_server,
                    stop_server, write_results)
from revsearch_server.embedding.local_onnx import make_session
from revsearch_server.imaging import preprocess
from revsearch_server.models import load_models


def bench_onnxruntime(model, images: list[bytes], batch: int, seconds: float, spinning: bool) -> dict:
    pixels = np.stack([preprocess(b, NO_LIMITS, model.input_size, model.resize_to) for b in images])
    # The bare session on purpose (no Embedder, no batcher): this path is the model's ceiling.
    session = make_session(model.onnx_path, spinning=spinning)
    session.run(None, {model.input_name: pixels[:batch]})  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(0, len(pixels), batch):
            session.run(None, {model.input_name: pixels[i:i + batch]})
            done += len(pixels[i:i + batch])
    elapsed = time.perf_counter() - started
    return {"images_per_s": done / elapsed, "images": done, "seconds": elapsed, "batch": batch,
            "intra_op_spinning": spinning}


class Servers:
    """Both servers started up front, so that rounds can interleave (a), (b) and (c)."""

    def __init__(self, allow_untrained: bool):
        self._dirs = [tempfile.TemporaryDirectory(prefix="bench-") for _ in range(2)]
        self.procs = {}
        self.addresses = {}
        # EmbedImage names no model: the server's default must be the ResNet50 that (a) runs (the
        # default is "auto", which picks efficientnet_lite0 while ResNet50 is untrained).
        model = ["--default-model", "resnet50"]
        for label, extra, d in (("b", model, self._dirs[0]), ("c", [*model, "--triton-url", "off"], self._dirs[1])):
            self.procs[label], self.addresses[label] = start_server(extra, d.name, allow_untrained)

    def close(self) -> None:
        for proc in self.procs.values():
            stop_server(proc)
        for d in self._dirs:
            d.cleanup()


def median_of(runs: list[dict], key: str = "images_per_s") -> float:
    return float(np.median([r[key] for r in runs]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent EmbedImage calls")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the direct ONNX Runtime run")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--allow-untrained", action="store_true")
    args = parser.parse_args()

    model = load_models(ROOT / "model_repository", allow_untrained=True)["resnet50"]
    images = [p.read_bytes() for p in lfw_images(args.images)]
    print(f"ResNet50 ({'trained' if model.trained else 'UNTRAINED'}), {len(images)} LFW images, "
          f"{os.cpu_count()} CPUs; {args.rounds} interleaved rounds of {args.seconds:.0f} s per path", flush=True)
    servers = Servers(args.allow_untrained)
    rounds = []
    try:
        for n in range(args.rounds):
            # This machine's speed drifts by +-10% over minutes; interleaving the three paths and
            # taking ratios within each round keeps that drift out of the ratios.
            raw = bench_onnxruntime(model, images, args.batch, args.seconds, spinning=True)
            triton = asyncio.run(embed_at_saturation(servers.addresses["b"], images, args.concurrency, args.seconds))
            local = asyncio.run(embed_at_saturation(servers.addresses["c"], images, args.concurrency, args.seconds))
            rounds.append({"a": raw, "b": triton, "c": local,
                           "b_over_a": triton["images_per_s"] / raw["images_per_s"],
                           "c_over_a": local["images_per_s"] / raw["images_per_s"]})
            print(f"  round {n + 1}: (a) {raw['images_per_s']:.1f}  (b) {triton['images_per_s']:.1f}  "
                  f"(c) {local['images_per_s']:.1f} images/s;  b/a {rounds[-1]['b_over_a']:.3f}  "
                  f"c/a {rounds[-1]['c_over_a']:.3f}", flush=True)
    finally:
        servers.close()
    raw = {"images_per_s": median_of([r["a"] for r in rounds]), "batch": args.batch}
    triton, local = ({"images_per_s": median_of([r[p] for r in rounds]),
                      "p50_ms": median_of([r[p] for r in rounds], "p50_ms"),
                      "p99_ms": median_of([r[p] for r in rounds], "p99_ms"),
                      "backend_detail": rounds[0][p]["backend_detail"]} for p in ("b", "c"))
    result = {
        "benchmark": "resnet50 embedding throughput",
        "date": now_utc(),
        "machine": machine(),
        "model": {"name": model.name, "trained": model.trained, "input": "uint8 224x224x3"},
        "images": len(images),
        "a_onnxruntime_direct": raw,
        "b_grpc_triton": triton,
        "c_grpc_local": local,
        "rounds": rounds,
        "ratio_b_over_a": float(np.median([r["b_over_a"] for r in rounds])),
        "ratio_c_over_a": float(np.median([r["c_over_a"] for r in rounds])),
        "target_b_over_a": 0.9,
    }
    weights = ("with pretrained weights" if model.trained
               else "UNTRAINED (no pretrained weights here; same graph, so the same compute per image)")
    write_results("embedding_throughput", result, (
        f"# ResNet50 embedding throughput ({result['date']}, {os.cpu_count()} CPUs)\n\n"
        f"Model: ResNet50 {weights}.\n\n"
        f"| path | images/s | setting | ratio to (a) |\n|---|---|---|---|\n"
        f"| (a) ONNX Runtime in-process | {raw['images_per_s']:.1f} | batch {args.batch} | 1.00 |\n"
        f"| (b) gRPC EmbedImage, Triton (CPU, Python backend) | {triton['images_per_s']:.1f} | "
        f"concurrency {args.concurrency}, p99 {triton['p99_ms']:.0f} ms | {result['ratio_b_over_a']:.2f} |\n"
        f"| (c) gRPC EmbedImage, local ONNX Runtime fallback | {local['images_per_s']:.1f} | "
        f"concurrency {args.concurrency}, p99 {local['p99_ms']:.0f} ms | {result['ratio_c_over_a']:.2f} |\n\n"
        f"Medians of {args.rounds} interleaved rounds of {args.seconds:.0f} s per path (ratios taken within "
        f"each round). Target b/a >= 0.9. Server micro-batching: up to 8 images, 2 ms wait; Triton dynamic "
        f"batching, preferred batch 8. All three use ONNX Runtime with all cores and thread spinning on.\n"))
    print(f"ratios: b/a = {result['ratio_b_over_a']:.3f}, c/a = {result['ratio_c_over_a']:.3f} "
          f"(target b/a >= 0.9); written to {RESULTS.relative_to(ROOT)}/embedding_throughput.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
