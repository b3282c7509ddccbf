"""Copy detection at scale: query latency with re-ranking on and off at N gallery images, indexing
throughput of efficientnet_lite0 (fp32 and INT8), and the bytes stored per item.

A server process (in-process ONNX Runtime by default: `--triton` for the managed Triton) indexes
the shared photos, LFW and video frames (every frame, until --images) into a copy-detection
collection of --model, then runs --queries sequential searches with edited copies of the photos
(copy_edits: crop50, rotate, caption, mirror+crop70, in turn), once with copy detection on and once
off. Indexing throughput of both models is measured on the first --throughput-images photos into
collections of their own. Writes benchmarks/results/copies_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from common import LFW, SHARED_DATA, VIDEO, log, machine, now_utc, start_server, stop_server, write_results
from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.copy_edits import edited_bytes
from revsearch_server import copies

EDITS = ("crop50", "rotate", "caption", "mirror+crop70")


def gallery(limit: int) -> list[ImageInput]:
    import cv2

    items = [ImageInput.from_path(p) for p in sorted((SHARED_DATA / "photos").glob("*.jpg"))]
    items += [ImageInput.from_path(p) for p in sorted(LFW.glob("*/*.jpg"))]
    for clip in sorted(VIDEO.glob("*.mp4")):
        cap = cv2.VideoCapture(str(clip))
        n = 0
        while len(items) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            # Every frame: consecutive frames are the hardest distractors there are.
            data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
            items.append(ImageInput(image=data, uri=f"{clip.name}#{n}"))
            n += 1
        cap.release()
    return items[:limit]


def raw_throughput(rounds: int = 3, seconds: float = 5.0) -> dict:
    """Images/s of the two ONNX graphs alone (ONNX Runtime, batch 8, 2 threads), interleaved per round
    (this machine's speed drifts): what the model costs, without decoding, crops or the store."""
    import onnxruntime as ort

    from common import ROOT

    batch = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    sessions = {}
    for model in ("efficientnet_lite0", "efficientnet_lite0_int8"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        sessions[model] = ort.InferenceSession(str(ROOT / "model_repository" / model / "1" / "model.onnx"),
                                               sess_options=opts, providers=["CPUExecutionProvider"])
        sessions[model].run(None, {"images": batch})
    rates: dict[str, list[float]] = {m: [] for m in sessions}
    for _ in range(rounds):
        for model, session in sessions.items():
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                session.run(None, {"images": batch})
                n += len(batch)
            rates[model].append(n / (time.perf_counter() - started))
    return {m: round(statistics.median(r), 1) for m, r in rates.items()}


def index(client: SearchClient, name: str, model: str, items: list[ImageInput], reuse: bool = False) -> float:
    """Images/s; 0 when reuse and the collection holds these items already (a --data-dir of an earlier run)."""
    if name in {c.name for c in client.list_collections()}:
        if reuse and client.describe_collection(name).item_count == len({hashlib.sha256(i.image).digest()
                                                                         for i in items}):
            return 0.0
        client.drop_collection(name)
    client.create_collection(name, model=model)
    started = time.perf_counter()
    statuses = [r.status for r in client.index_images(name, items, timeout=7200)]
    seconds = time.perf_counter() - started
    assert len(statuses) == len(items)
    return len(items) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--model", default="efficientnet_lite0_int8",
                        help="the model of the big collection (INT8: the gallery indexes 3x faster)")
    parser.add_argument("--throughput-images", type=int, default=120)
    parser.add_argument("--triton", action="store_true", help="managed Triton instead of in-process ONNX Runtime")
    parser.add_argument("--raw-only", action="store_true", help="only the models' raw ONNX Runtime throughput")
    parser.add_argument("--data-dir", help="keep the server's data here and reuse collections of an earlier run "
                                           "(default: a temporary folder)")
    args = parser.parse_args()
    if args.raw_only:
        raw = raw_throughput()
        write_results("copies_raw_throughput", {"date": now_utc(), "machine": machine(), "images_per_s": raw},
                      f"# efficientnet_lite0 raw ONNX Runtime throughput (batch 8, 2 threads)\n\n{raw}\n")
        print(raw)
        return 0
    photos = sorted((SHARED_DATA / "photos").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="bench-copies-") as tmp:
        tmp = args.data_dir or tmp
        proc, address = start_server([] if args.triton else ["--triton-url", "off"], tmp, allow_untrained=False)
        try:
            with SearchClient(address, timeout=600) as client:
                throughput = {}
                sample = [ImageInput.from_path(p) for p in photos[:args.throughput_images]]
                for model in ("efficientnet_lite0", "efficientnet_lite0_int8"):
                    throughput[model] = index(client, f"tp_{model}", model, sample)
                    log(f"{model}: {throughput[model]:.1f} images/s indexed (copy detection: 5 vectors from one forward pass + local features)")
                items = gallery(args.images)
                log(f"indexing {len(items)} images into {args.model} ...")
                big_rate = index(client, "big", args.model, items, reuse=True)
                log(f"  {big_rate:.1f} images/s")
                described = client.describe_collection("big")
                latencies: dict[str, list[float]] = {"on": [], "off": []}
                found = {"on": 0, "off": 0}
                for n in range(args.queries):
                    photo = photos[(n * 7) % len(photos)]
                    query = edited_bytes(photo.read_bytes(), EDITS[n % len(EDITS)])
                    for mode in ("on", "off"):
                        t = time.perf_counter()
                        resp = client.search("big", image=query, top_k=10, copy_detection=mode == "on")
                        latencies[mode].append((time.perf_counter() - t) * 1000)
                        found[mode] += resp.hits[0].uri == str(photo)
        finally:
            stop_server(proc)
    stored = [copies.extract_stored(copies.feature_image(Image.open(p))) for p in photos[:50]]
    result = {
        "date": now_utc(), "machine": machine(), "gallery_images": described.item_count, "model": args.model,
        "inference": "managed Triton" if args.triton else "ONNX Runtime in the server process",
        "queries": args.queries, "edits": EDITS,
        "latency_ms": {mode: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                              "mean": float(np.mean(v))} for mode, v in latencies.items()},
        "p_at_1": {mode: found[mode] / args.queries for mode in found},
        "index_images_per_s": {**throughput, f"{args.model} ({len(items)} images)": big_rate},
        # The stored bytes per item, read back from the store, are in bench_copy_throughput's results.
        "local_features_stored_chars": round(statistics.mean(len(f.encode()) for f in stored)),
        "keypoints_mean": round(statistics.mean(len(f) for f in stored), 1),
        "candidates": copies.CANDIDATES, "views_per_item": 1 + len(copies.VIEWS),
    }
    lat = result["latency_ms"]
    md = (f"# Copy detection at {result['gallery_images']} images ({args.model}, {result['inference']})\n\n"
          f"{now_utc()}, {args.queries} sequential queries ({', '.join(EDITS)} in turn)\n\n"
          "| copy detection | p50 ms | p95 ms | mean ms | P@1 |\n| --- | --- | --- | --- | --- |\n"
          + "".join(f"| {m} | {lat[m]['p50']:.0f} | {lat[m]['p95']:.0f} | {lat[m]['mean']:.0f} | "
                    f"{result['p_at_1'][m]:.2f} |\n" for m in ("on", "off"))
          + "\n| indexing | images/s |\n| --- | --- |\n"
          + "".join(f"| {k} | {v:.1f} |\n" for k, v in result["index_images_per_s"].items())
          + f"\nLocal features: {result['keypoints_mean']} keypoints, {result['local_features_stored_chars']} characters "
          "stored per item (bytes per item: copy_throughput.md)\n")
    write_results("copies_latency", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
