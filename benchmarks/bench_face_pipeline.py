"""Face pipeline speed: each stage alone, then the whole pipeline through the server, in one run.

On the same LFW images it measures, in this process and one stage at a time, with the server's own
code (as the server runs it: detection batched 8 images at a time, the face model on chips and
their mirror images):
  decode   JPEG bytes -> RGB array (imaging.decode_image: PIL, EXIF applied)
  detect   MTCNN (the server's detector, min face 20 px) -> faces/s and images/s
  align    the most prominent face -> 150 px chip (faces/cropper.py: the part after detection)
  embed    the face model (embedding/embedder.py over the in-process ONNX Runtime backend:
           flip-averaged, L2-normalised) -> faces/s
  store    Milvus Lite upserts of the 128-d vectors, 8 per call (index/milvus.py)
Detect and align are one FaceCropper.crop_arrays call per batch, split where detection returns.
Then IndexImages over gRPC into a `largest`-face collection of a revsearch server process
(managed CPU Triton, Milvus Lite), the way users index. It writes each stage's seconds per image,
its share of the sum, and the served images/s against the sequential sum of the stages to
benchmarks/results/face_pipeline.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (NO_LIMITS, ROOT, TimedCropper, lfw_images, local_embedder, log, machine, milvus_store,
                    now_utc, start_server, stop_server, timed, write_results)
from revsearch.client import AsyncSearchClient, ImageInput
from revsearch.v1 import search_service_pb2 as pb
from revsearch_server.domain import FaceBox, FaceOptions
from revsearch_server.faces.net_runners import resolve_runtime
from revsearch_server.imaging import decode_image
from revsearch_server.index.base import Record
from revsearch_server.models import load_models

DETECT_BATCH = 8  # the server's micro-batch: detection runs on the images of one index batch
# A `largest`-face collection's defaults: min face 20 px, confidence >= 0.9, the most prominent face.
OPTIONS = FaceOptions()


def stage_decode(blobs: list[bytes]) -> tuple[list[np.ndarray], float]:
    return timed(lambda: [np.asarray(decode_image(b, NO_LIMITS), dtype=np.uint8) for b in blobs])


def stage_detect_and_align(images: list[np.ndarray], model, detector: str = "onnx"
                           ) -> tuple[np.ndarray, list[FaceBox], int, float, float]:
    """(chips, their boxes, faces detected, detect seconds, align seconds)."""
    cropper = TimedCropper(detector)
    try:
        cropper.crop(images[:DETECT_BATCH], model, OPTIONS)  # warm-up (first call builds the networks' kernels)
        chips, boxes, n_faces, t_detect, t_align = [], [], 0, 0.0, 0.0
        for i in range(0, len(images), DETECT_BATCH):
            part = cropper.crop(images[i:i + DETECT_BATCH], model, OPTIONS)
            chips += part.pixels()
            boxes += [c.box for r in part.crops if isinstance(r, list) for c in r]
            n_faces += part.count_faces(OPTIONS.min_confidence)
            t_detect += part.detect_s
            t_align += part.crop_s
    finally:
        cropper.close()
    return np.stack(chips), boxes, n_faces, t_detect, t_align


async def stage_embed(model, chips: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    async with local_embedder({model.name: model}) as embedder:
        await embedder.embed(model, chips[:batch])  # warm-up
        started = time.perf_counter()
        out = [await embedder.embed(model, chips[i:i + batch]) for i in range(0, len(chips), batch)]
        return np.concatenate(out), time.perf_counter() - started


async def stage_store(vectors: np.ndarray, boxes: list[FaceBox], workdir: str) -> float:
    async with milvus_store(f"{workdir}/store.db") as store:
        await store.create("bench", vectors.shape[1], "benchmark")
        index = store.index("bench", vectors.shape[1])
        # The vectors are the Embedder's: L2-normalised already, as the server stores them.
        records = [Record(id=f"r{i}", vector=v, uri=f"img{i}", sha256=f"{i:064x}", model="face_dlib",
                          model_version="1", created_at_ms=0, metadata={}, face_box=box)
                   for i, (v, box) in enumerate(zip(vectors, boxes))]
        await index.insert(records[:DETECT_BATCH])  # warm-up, then overwrite: upserts of the same ids
        started = time.perf_counter()
        for i in range(0, len(records), DETECT_BATCH):
            await index.insert(records[i:i + DETECT_BATCH])
        return time.perf_counter() - started


async def served(address: str, paths: list[Path], streams: int, model_name: str, tag: str = "") -> dict:
    """IndexImages over `streams` concurrent streams (the images split between them), into a new
    collection (bench_faces{tag}); the first call to a server warms it up on 16 images first."""
    async with AsyncSearchClient(address, timeout=600) as client:
        info = await client.info()
        await client.create_collection(f"bench_faces{tag}", model=model_name, crop_mode="largest")
        if not any(c.name == "bench_warmup" for c in await client.list_collections()):
            await client.create_collection("bench_warmup", model=model_name, crop_mode="largest")
            warm = [ImageInput.from_path(p) for p in paths[:16]]
            async for _ in client.index_images("bench_warmup", warm):
                pass
        items = [ImageInput.from_path(p) for p in paths]
        statuses: list[int] = []

        async def stream(part: list[ImageInput]):
            async for r in client.index_images(f"bench_faces{tag}", part):
                statuses.append(r.status)

        started = time.perf_counter()
        await asyncio.gather(*(stream(items[k::streams]) for k in range(streams)))
        elapsed = time.perf_counter() - started
    return {"images_per_s": len(items) / elapsed, "seconds": elapsed, "images": len(items), "streams": streams,
            "indexed": sum(1 for s in statuses if s == pb.ITEM_STATUS_INDEXED),
            "no_face": sum(1 for s in statuses if s == pb.ITEM_STATUS_NO_FACE),
            "backend": info.inference_detail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="LFW images (a few per person)")
    parser.add_argument("--embed-batch", type=int, default=16)
    parser.add_argument("--streams", type=int, default=4, help="concurrent IndexImages streams")
    parser.add_argument("--model", default="face_dlib", help="face model (face_dlib, face_dlib_int8)")
    parser.add_argument("--detector", choices=["onnx", "torch"], default="onnx",
                        help="detector of the stage timings (the server uses the ONNX MTCNN when it is built)")
    parser.add_argument("--name", default="face_pipeline", help="results file name (benchmarks/results/NAME.*)")
    parser.add_argument("--baseline", default=None, metavar="DETECTOR:MODEL",
                        help="also serve this pipeline (e.g. torch:face_dlib: facenet-pytorch's MTCNN and the fp32 "
                             "face model, the server before issue 12) from a second server, in interleaved rounds, "
                             "and report the served ratio measured in this run")
    parser.add_argument("--rounds", type=int, default=1, help="served rounds (interleaved with --baseline)")
    args = parser.parse_args()

    model = load_models(ROOT / "model_repository", allow_untrained=True)[args.model]
    paths = lfw_images(args.images, per_person_max=4)
    blobs = [p.read_bytes() for p in paths]
    n = len(blobs)
    print(f"face pipeline on {n} LFW images (250x250 JPEG), {machine()['cpus']} CPUs", flush=True)

    images, t_decode = stage_decode(blobs)
    chips, boxes, n_faces, t_detect, t_align = stage_detect_and_align(images, model, args.detector)
    vectors, t_embed = asyncio.run(stage_embed(model, chips, args.embed_batch))
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as workdir:
        t_store = asyncio.run(stage_store(vectors, boxes, workdir))
    stages = {"decode": t_decode, "detect": t_detect, "align": t_align, "embed": t_embed, "store": t_store}
    per_image = {k: v / n for k, v in stages.items()}
    total = sum(per_image.values())
    for k, v in per_image.items():
        print(f"  {k:7s} {v * 1000:7.2f} ms/image  {100 * v / total:5.1f}%", flush=True)

    baseline = None
    if args.baseline:
        base_detector, base_model = args.baseline.split(":")
        baseline = {"detector": base_detector, "model": base_model, "rounds": []}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-faces-srv-") as data_dir, \
            tempfile.TemporaryDirectory(prefix="bench-faces-base-") as base_dir:
        proc, address = start_server(["--face-detector", args.detector], data_dir, allow_untrained=True)
        base_proc = None
        try:
            if baseline:
                base_proc, base_address = start_server(["--face-detector", baseline["detector"]], base_dir,
                                                       allow_untrained=True)
            for r in range(args.rounds):
                # Alternate which server goes first, so neither always runs on a machine the other just left.
                order = ["new", "base"] if r % 2 == 0 else ["base", "new"]
                for which in order:
                    if which == "new":
                        rounds.append(asyncio.run(served(address, paths, args.streams, args.model, f"_{r}")))
                        log(f"round {r + 1}: {args.detector} + {args.model} {rounds[-1]['images_per_s']:.1f} images/s")
                    elif baseline:
                        got = asyncio.run(served(base_address, paths, args.streams, baseline["model"], f"_{r}"))
                        baseline["rounds"].append(got)
                        log(f"round {r + 1}: baseline {args.baseline} {got['images_per_s']:.1f} images/s")
        finally:
            stop_server(proc)
            if base_proc is not None:
                stop_server(base_proc)
    e2e = dict(rounds[0])
    e2e["images_per_s"] = sum(x["images_per_s"] for x in rounds) / len(rounds)
    e2e["rounds_images_per_s"] = [x["images_per_s"] for x in rounds]
    if baseline:
        baseline["images_per_s"] = sum(x["images_per_s"] for x in baseline["rounds"]) / len(baseline["rounds"])
        baseline["ratio"] = e2e["images_per_s"] / baseline["images_per_s"]
        baseline["ratio_per_round"] = [a["images_per_s"] / b["images_per_s"]
                                       for a, b in zip(rounds, baseline["rounds"])]
        print(f"  served ratio to the baseline ({args.baseline}): {baseline['ratio']:.2f}x "
              f"(per round {', '.join(f'{x:.2f}' for x in baseline['ratio_per_round'])})")
    ceiling = 1.0 / total
    print(f"  served: {e2e['images_per_s']:.1f} images/s ({e2e['indexed']} indexed, {e2e['no_face']} no face); "
          f"stage sum allows {ceiling:.1f} images/s sequentially -> ratio {e2e['images_per_s'] / ceiling:.2f}")

    result = {
        "benchmark": f"face pipeline (MTCNN {args.detector} + {args.model}) stages and served indexing",
        "model": args.model, "detector": args.detector,
        "date": now_utc(), "machine": machine(), "images": n, "faces_detected": n_faces, "chips": len(chips),
        "detection": {"faces_per_s": n_faces / t_detect, "images_per_s": n / t_detect, "batch": DETECT_BATCH,
                      "min_face_size": 20},
        "face_model": {"faces_per_s": len(chips) / t_embed, "batch": args.embed_batch, "flip_average": True,
                       "forward_passes_per_s": 2 * len(chips) / t_embed, "backend": "onnxruntime in-process"},
        "stages_ms_per_image": {k: 1000 * v for k, v in per_image.items()},
        "stage_share": {k: v / total for k, v in per_image.items()},
        "stage_sum_images_per_s": ceiling,
        "served": e2e,
        "served_over_stage_sum": e2e["images_per_s"] / ceiling,
        "baseline": baseline,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    rows = "\n".join(f"| {k} | {1000 * v:.2f} | {100 * v / total:.1f}% |" for k, v in per_image.items())
    write_results(args.name, result, (
        f"# Face pipeline speed ({result['date']}, {machine()['cpus']} CPUs, {n} LFW images)\n\n"
        f"| stage | ms per image | share |\n|---|---|---|\n{rows}\n| **sum** | {1000 * total:.2f} | 100% |\n\n"
        f"- Detection (MTCNN {'as ONNX, numpy + ' + resolve_runtime('auto') if args.detector == 'onnx' else 'facenet-pytorch'}, "
        f"batches of {DETECT_BATCH}, min face 20 px): "
        f"**{result['detection']['faces_per_s']:.1f} faces/s** ({result['detection']['images_per_s']:.1f} images/s, "
        f"{n_faces} faces in {n} images).\n"
        f"- Face model ({args.model} ONNX, in-process, batch {args.embed_batch}, chip + mirror image): "
        f"**{result['face_model']['faces_per_s']:.1f} faces/s** ({result['face_model']['forward_passes_per_s']:.0f} "
        f"forward passes/s).\n"
        f"- Whole pipeline through the server (IndexImages, {args.streams} concurrent streams, managed CPU Triton, "
        f"Milvus Lite): **{e2e['images_per_s']:.1f} images/s**; {e2e['images_per_s'] / ceiling:.2f} of the "
        f"{ceiling:.1f} images/s that the stages allow run one after another in one process"
        f"{f' (mean of {args.rounds} rounds)' if args.rounds > 1 else ''}.\n"
        + (f"- Baseline `{args.baseline}` served by a second server in the same run, rounds interleaved: "
           f"**{baseline['images_per_s']:.1f} images/s**; this pipeline **{baseline['ratio']:.2f}x** it (per round "
           f"{', '.join(f'{x:.2f}' for x in baseline['ratio_per_round'])}).\n" if baseline else "")
        + f"- Load average at the end: {result['load_average_end'][0]:.2f}.\n"))
    print(f"written to benchmarks/results/{args.name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
