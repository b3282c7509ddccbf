"""Video frame sampling cost: sequential decode rate, seek vs grab, uniform vs scene sampling.

Clips:
  * a 10 s (and a --long-seconds, default 60 s) 1280x720 clip generated into a temporary directory
    by looping and upscaling the shared Hamilton clip (which has hard cuts) with cv2.VideoWriter
    (MPEG-4 Part 2 "mp4v" in mp4: this OpenCV build has no H.264 encoder; its writer puts a
    keyframe every 12 frames),
  * the shared clips as they are (H.264, one keyframe per clip or a few).
Measures per clip: frames/s decoding every frame with read() (decode + BGR conversion) and
with grab() (decode only); ms to sample 5 frames uniformly when each target is reached by the
sampler's plan ("auto"), by decoding forward only ("grab") and by seeking to each ("seek"),
checking that all three give identical pixels; ms for sample_frames() end to end in uniform and
scene mode. Times are medians of --repeats runs, files warm in the page cache.
Writes benchmarks/results/video_decode.{json,md}. Nothing is written into the repository besides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import VIDEO, write_results
from revsearch_server.domain import SamplingMode
from revsearch_server.video import sampling as S

SOURCE = VIDEO / "face_recognition_short_hamilton_clip.mp4"
LIMITS = S.VideoLimits()


def make_720p_clip(out: Path, seconds: float = 10.0, fps: float = 30.0) -> Path:
    src = cv2.VideoCapture(str(SOURCE))
    frames = []
    while True:
        ok, img = src.read()
        if not ok:
            break
        frames.append(cv2.resize(img, (1280, 720), interpolation=cv2.INTER_LINEAR))
    src.release()
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    if not writer.isOpened():
        raise SystemExit("cv2.VideoWriter cannot write mp4v/mp4 here")
    for i in range(int(seconds * fps)):
        writer.write(frames[i % len(frames)])
    writer.release()
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def decode_rate(path: Path, retrieve: bool) -> float:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n, t = 0, time.perf_counter()
    while (cap.read()[0] if retrieve else cap.grab()):
        n += 1
    elapsed = time.perf_counter() - t
    cap.release()
    return n / elapsed


def sample_with(path: Path, strategy: str) -> list[tuple[int, np.ndarray]]:
    opened = S._open(str(path), LIMITS, None)
    try:
        targets = S.uniform_targets(opened.info.frame_count, 5)
        return S._read_targets(opened, targets, LIMITS, strategy=strategy)
    finally:
        opened.cap.release()


def bench_clip(path: Path, label: str, repeats: int) -> dict:
    opened = S._open(str(path), LIMITS, None)
    opened.cap.release()
    info, keyframes = opened.info, opened.keyframes or []
    targets = S.uniform_targets(info.frame_count, 5)
    plan = S.plan_reads(targets, opened.keyframes, 1)
    row = {"clip": label, "file": path.name, "width": info.width, "height": info.height, "fps": round(info.fps, 3),
           "frames": info.frame_count, "codec": info.codec, "keyframes": len(keyframes),
           "targets": targets, "auto_plan": [a for a, _ in plan]}
    row["read_fps"] = statistics.median(decode_rate(path, True) for _ in range(max(1, repeats // 2)))
    row["grab_fps"] = statistics.median(decode_rate(path, False) for _ in range(max(1, repeats // 2)))
    results = {s: sample_with(path, s) for s in ("auto", "grab", "seek")}
    reference = results["grab"]
    row["seek_frames_identical"] = all(
        a[0] == b[0] and np.array_equal(a[1], b[1]) for s in ("auto", "seek")
        for a, b in zip(results[s], reference)) and all(len(results[s]) == len(reference) for s in results)
    for s in ("auto", "grab", "seek"):
        row[f"uniform5_{s}_ms"] = median_ms(lambda s=s: sample_with(path, s), repeats)
    row["probe_ms"] = median_ms(lambda: S.probe(str(path), LIMITS), repeats)
    for mode in (SamplingMode.UNIFORM, SamplingMode.SCENE):
        opts = S.SamplingOptions(frames=5, mode=mode)
        row[f"sample_frames_{mode.value}_ms"] = median_ms(lambda o=opts: S.sample_frames(str(path), o, LIMITS),
                                                          repeats)
    _, scene = S.sample_frames(str(path), S.SamplingOptions(frames=5, mode=SamplingMode.SCENE), LIMITS)
    row["scene_frame_indices"] = [f.frame_index for f in scene]
    return row


def markdown(report: dict) -> str:
    lines = [
        "# Video frame sampling cost",
        "",
        f"`{report['command']}` on {report['cpu']} ({report['cpu_count']} cores), OpenCV {report['opencv']}, "
        f"load average before/after {report['loadavg_before']} / {report['loadavg_after']} "
        "(other processes share these 2 cores: treat small differences as noise). Medians of "
        f"{report['repeats']} runs, files in the page cache.",
        "",
        "| clip | size | codec | frames (keyframes) | read fps | grab fps | 5 uniform: auto / grab / seek ms | "
        "auto plan | sample_frames uniform ms | scene ms | seek pixels = grab pixels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["clips"]:
        lines.append(
            f"| {r['clip']} | {r['width']}x{r['height']} | {r['codec']} | {r['frames']} ({r['keyframes']}) | "
            f"{r['read_fps']:.0f} | {r['grab_fps']:.0f} | {r['uniform5_auto_ms']:.0f} / {r['uniform5_grab_ms']:.0f} / "
            f"{r['uniform5_seek_ms']:.0f} | {''.join('S' if a == 'seek' else 'g' for a in r['auto_plan'])} | "
            f"{r['sample_frames_uniform_ms']:.0f} | {r['sample_frames_scene_ms']:.0f} | {r['seek_frames_identical']} |")
    lines += [
        "",
        "* read fps: decode + conversion to BGR of every frame; grab fps: decode only (what the sampler does",
        "  for frames it skips). auto plan: per target, S = seek, g = decode forward (grab).",
        "* \"5 uniform\" starts from an opened, probed video (first frame decoded); sample_frames includes",
        "  opening, the raw-packet pass, the first frame and the RGB conversion.",
        "* Seeking in OpenCV decodes from the keyframe at or before target-16, so it only pays off when keyframes",
        "  lie between the targets; the sampler decides per target from the keyframe positions.",
        "* scene decodes every frame (grab) and converts about 6 frames/s at full size for the comparison.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--all-shared", action="store_true", help="also every shared clip, not just two")
    parser.add_argument("--long-seconds", type=float, default=60.0,
                        help="also a clip this long, same making, to show seek vs grab on longer video (0: skip)")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    clips = []
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        clip = make_720p_clip(Path(tmp) / "clip_10s_720p.mp4")
        clips.append(bench_clip(clip, "generated 10 s 720p", args.repeats))
        print(json.dumps(clips[-1]), flush=True)
        if args.long_seconds > 0:
            long_clip = make_720p_clip(Path(tmp) / "clip_long_720p.mp4", seconds=args.long_seconds)
            clips.append(bench_clip(long_clip, f"generated {args.long_seconds:g} s 720p", args.repeats))
            print(json.dumps(clips[-1]), flush=True)
        shared = sorted(VIDEO.glob("*.mp4")) if args.all_shared else [
            SOURCE, VIDEO / "facenet-pytorch_examples_video.mp4"]
        for path in shared:
            clips.append(bench_clip(path, f"shared {path.stem}", args.repeats))
            print(json.dumps(clips[-1]), flush=True)
    report = {
        "command": "python benchmarks/bench_video_decode.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "opencv": cv2.__version__,
        "repeats": args.repeats, "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "clips": clips,
    }
    write_results("video_decode", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
