"""Seconds to index a 10 s 720p clip (5 sampled frames, face crops), per stage and end to end.

Two 10 s 1280x720 clips are generated into a temporary directory (MPEG-4 Part 2: this OpenCV build
has no H.264 encoder): a stage scene with several small faces (the shared Hamilton clip, looped
and upscaled) and a talking head (a shared clip letterboxed into 720p, looped). Per clip it measures,
in this process and one stage at a time, with the server's own code as the server runs it:
  sample  open the file, find the 5 uniform frames, decode them (video/sampling.py; frames decoded/s
          also reported)
  detect  MTCNN (the server's ONNX detector, its nets in this process in the runtime the server
          picks by default: OpenVINO when installed) on the frames shrunk to the server's 640 px
          long side (--video-frame-max-side)
  align   every face (up to 16 a frame) to a 150 px chip from the full-resolution frame
  embed   the face model (embedding/embedder.py over the in-process ONNX Runtime backend: chip +
          mirror image, L2-normalised)
  store   Milvus Lite upserts (index/milvus.py): a row per face plus the mean vector
(detect and align are one FaceCropper.crop_arrays call of faces/cropper.py, split where detection
returns), and then IndexVideo over gRPC into a revsearch server process (managed CPU Triton, Milvus Lite),
median of --repeats uploads (the video is deleted between them), into a collection bound to --model
(face_dlib_int8 by default). Target: under 0.3 s end to end.
Writes benchmarks/results/video_index.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import (ROOT, VIDEO, TimedCropper, local_embedder, machine, milvus_store, now_utc, start_server,
                    stop_server, timed, write_results)
from revsearch.client import SearchClient
from revsearch.video_dataset import read_video
from revsearch_server.config import Settings
from revsearch_server.domain import FaceOptions, l2_normalize
from revsearch_server.faces.net_runners import resolve_runtime
from revsearch_server.index.base import Record
from revsearch_server.models import load_models
from revsearch_server.video.sampling import SamplingOptions, VideoLimits, sample_frames

FRAME_MAX_SIDE = Settings().video_frame_max_side  # the server's default --video-frame-max-side (640)
SIZE = (1280, 720)
# A video collection's defaults: every face (crop mode "all", up to 16 a frame), min 20 px, confidence >= 0.9.
OPTIONS = FaceOptions()
TARGET_S = 0.3


def make_clip(source: Path, out: Path, seconds: float = 10.0, fps: float = 30.0) -> Path:
    """source looped to `seconds`, fitted into 1280x720 (letterboxed), as an mp4."""
    frames, _ = read_video(source)
    h, w = frames[0].shape[:2]
    scale = min(SIZE[0] / w, SIZE[1] / h)
    nw, nh = round(w * scale), round(h * scale)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    for i in range(int(seconds * fps)):
        canvas = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        x, y = (SIZE[0] - nw) // 2, (SIZE[1] - nh) // 2
        canvas[y:y + nh, x:x + nw] = cv2.resize(frames[i % len(frames)], (nw, nh), interpolation=cv2.INTER_LINEAR)
        writer.write(canvas)
    writer.release()
    return out


async def stages(path: Path, cropper: TimedCropper, embedder, model, workdir: str, repeats: int) -> dict:
    limits = VideoLimits()
    runs = []
    for r in range(repeats):
        (info, frames), t_sample = timed(lambda: sample_frames(str(path), SamplingOptions(frames=5), limits))
        found = cropper.crop([f.image for f in frames], model, OPTIONS, all_faces=True,
                             detect_max_side=FRAME_MAX_SIDE)
        crops = [c if isinstance(c, list) else [] for c in found.crops]  # a frame without a face has none
        started = time.perf_counter()
        vectors = await embedder.embed(model, np.stack(found.pixels()))
        t_embed = time.perf_counter() - started
        t_store = await store(frames, crops, vectors, workdir, r)
        runs.append({"sample": t_sample, "detect": found.detect_s, "align": found.crop_s, "embed": t_embed,
                     "store": t_store, "faces": len(vectors)})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    frames_all, fps = read_video(path)
    return {"info": {"duration_s": info.duration_s, "width": info.width, "height": info.height, "fps": fps,
                     "codec": info.codec}, "stages_s": {k: v for k, v in med.items() if k != "faces"},
            "faces": int(med["faces"]), "runs": runs}


async def store(frames, crops, vectors: np.ndarray, workdir: str, run: int) -> float:
    """Rows and the mean vector as IndexVideo stores them (usecases/videos.py), timed from the first insert."""
    async with milvus_store(f"{workdir}/store.db") as db:
        await db.create(f"v{run}", vectors.shape[1], "benchmark")
        await db.create(f"v{run}__means", vectors.shape[1], "benchmark")
        rows, means = db.index(f"v{run}", vectors.shape[1]), db.index(f"v{run}__means", vectors.shape[1])
        common = dict(uri="clip.mp4", sha256="0" * 64, model="face_dlib", model_version="1", created_at_ms=0,
                      metadata={})
        flat = [(f, x) for f, cs in zip(frames, crops) for x in cs]
        records = [Record(id=f"clip~{k}", vector=v, face_box=x.box, face_count=len(flat), timestamp_s=f.timestamp_s,
                          **common) for k, ((f, x), v) in enumerate(zip(flat, vectors))]
        # The video's mean: of each frame's first (most prominent) face, as the server computes it.
        firsts, n = [], 0
        for cs in crops:
            if cs:
                firsts.append(n)
            n += len(cs)
        mean = l2_normalize(vectors[firsts].mean(0, keepdims=True))[0]
        started = time.perf_counter()
        await rows.insert(records)
        await means.insert([Record(id="clip", vector=mean, face_count=len(firsts), **common)])
        return time.perf_counter() - started


async def all_stages(clips: dict[str, Path], model, workdir: str, repeats: int) -> dict:
    """Per clip: its stages (stages()) and its decode rate, printed as they come."""
    cropper = TimedCropper("onnx")
    try:
        cropper.crop([np.zeros((360, 640, 3), np.uint8)], model, OPTIONS)  # warm-up (loads MTCNN)
        report = {}
        async with local_embedder({model.name: model}) as embedder:
            for label, path in clips.items():
                report[label] = await stages(path, cropper, embedder, model, workdir, repeats)
                report[label]["decode_fps"] = decode_rate(path)
                s = report[label]["stages_s"]
                print(f"{label}: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in s.items())
                      + f"; sum {sum(s.values()):.3f} s; {report[label]['faces']} faces; "
                      f"decode {report[label]['decode_fps']:.0f} frames/s", flush=True)
        return report
    finally:
        cropper.close()


def decode_rate(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    n, started = 0, time.perf_counter()
    while cap.grab():
        cap.retrieve()
        n += 1
    cap.release()
    return n / (time.perf_counter() - started)


def served(address: str, clips: dict[str, Path], repeats: int, model: str) -> dict:
    out = {}
    with SearchClient(address, timeout=300) as client:
        client.create_collection("bench_videos", media_type="video", model=model)
        client.index_video("bench_videos", VIDEO / "video-retalking_face_5.mp4", id="warmup")  # loads models
        for n, (label, path) in enumerate(clips.items()):
            times, resp = [], None
            for _ in range(repeats):
                started = time.perf_counter()
                resp = client.index_video("bench_videos", path, id=f"clip{n}")
                times.append(time.perf_counter() - started)
                client.delete("bench_videos", [resp.id])
            out[label] = {"seconds_median": statistics.median(times), "seconds": times, "vectors": resp.vector_count,
                          "faces": sum(len(f.face_boxes) for f in resp.frames)}
        out["backend"] = client.info().inference_detail
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="face_dlib_int8", help="face model of the collection")
    args = parser.parse_args()
    model = load_models(ROOT / "model_repository", allow_untrained=True)[args.model]
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        clips = {"stage (several small faces)": make_clip(VIDEO / "face_recognition_short_hamilton_clip.mp4",
                                                          Path(tmp) / "stage_720p.mp4"),
                 "talking head (one face)": make_clip(VIDEO / "video-retalking_face_2.mp4",
                                                      Path(tmp) / "head_720p.mp4")}
        report = asyncio.run(all_stages(clips, model, tmp, args.repeats))
        data_dir = Path(tmp) / "server"
        data_dir.mkdir()
        proc, address = start_server([], str(data_dir), allow_untrained=True)
        try:
            e2e = served(address, clips, args.repeats, args.model)
        finally:
            stop_server(proc)
    for label in clips:
        print(f"{label}: IndexVideo {e2e[label]['seconds_median']:.3f} s end to end (median of {args.repeats}); "
              f"target < {TARGET_S} s", flush=True)
    result = {"benchmark": "index a 10 s 720p clip, 5 frames, face crops", "date": now_utc(), "machine": machine(),
              "frame_max_side": FRAME_MAX_SIDE, "model": args.model, "clips": report, "served": e2e,
              "target_s": TARGET_S, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    lines = [f"# Indexing a 10 s 1280x720 clip, 5 frames, face crops, {args.model} ({result['date']}, "
             f"{machine()['cpus']} CPUs)", "",
             "| clip | faces | sample | detect | align | embed | store | stage sum | **IndexVideo end to end** | "
             "decode frames/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label in clips:
        s = report[label]["stages_s"]
        lines.append(f"| {label} | {report[label]['faces']} | " + " | ".join(f"{1000 * s[k]:.0f} ms" for k in
                     ("sample", "detect", "align", "embed", "store")) + f" | {sum(s.values()):.3f} s | "
                     f"**{e2e[label]['seconds_median']:.3f} s** | {report[label]['decode_fps']:.0f} |")
    lines += ["", f"Stages: medians of {args.repeats} runs in one process (detection on frames shrunk to "
              f"{FRAME_MAX_SIDE} px by the ONNX MTCNN with its nets in {resolve_runtime('auto')}, {args.model} in-process "
              f"ONNX Runtime with flip averaging, Milvus Lite). End to end: "
              f"IndexVideo over gRPC with 1 MiB chunks into a server process ({e2e['backend']}, Milvus Lite), median "
              f"of {args.repeats} uploads. Target: < {TARGET_S} s. Load average at the end: "
              f"{result['load_average_end'][0]:.2f}.", ""]
    write_results("video_index", result, "\n".join(lines))
    print("written to benchmarks/results/video_index.{json,md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
