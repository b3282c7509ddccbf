"""Face collections and large JPEGs: decoding at reduced size by the JPEG decoder's DCT scaling
(imaging.decode_reduced, --face-image-max-side) against decoding at full size, in one run.

Phone-sized photos are made in memory from the shared data (nothing is written): an LFW face
enlarged to 1,200 px pasted onto a BSDS photo enlarged to 4032x3024 (a portrait-distance face), and
the 1080p crowd clip's frames enlarged to 3840x2160 (many small faces), each saved as a quality-90
JPEG. For each image, interleaved full / reduced: decode, detect (the server's ONNX MTCNN over
ONNX Runtime in this process, min face 20 px) and align (the chips of every face); the faces found
(confidence >= 0.9) and, for each face found at full size, the IoU of the reduced-size face (its
box scaled back to the sent image's pixels) that overlaps it most. Writes
benchmarks/results/face_decode.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image

from common import (NO_LIMITS, ROOT, SHARED_DATA, VIDEO, TimedCropper, iou, lfw_images, machine, now_utc,
                    write_results)
from revsearch_server.domain import FaceOptions
from revsearch_server.faces.cropper import in_original_pixels
from revsearch_server.imaging import decode_reduced
from revsearch_server.models import load_models

OPTIONS = FaceOptions(max_faces=64)  # min face 20 px, confidence >= 0.9, all faces up to 64


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def portraits(count: int) -> list[bytes]:
    photos = sorted((SHARED_DATA / "photos").rglob("*.jpg"))
    faces = lfw_images(count, per_person_max=1)
    out = []
    for n, face_path in enumerate(faces):
        background = Image.open(photos[(n * 7) % len(photos)]).convert("RGB").resize((4032, 3024), Image.BICUBIC)
        face = Image.open(face_path).convert("RGB").resize((1200, 1200), Image.BICUBIC)
        background.paste(face, (400 + (n * 331) % 2000, 300 + (n * 173) % 1400))
        out.append(_jpeg(background))
    return out


def crowd_frames(count: int) -> list[bytes]:
    import cv2

    cap = cv2.VideoCapture(str(VIDEO / "facenet-pytorch_examples_video.mp4"))
    out, index = [], 0
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if index % 12 == 0:
            rgb = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).resize((3840, 2160), Image.BICUBIC)
            out.append(_jpeg(rgb))
        index += 1
    cap.release()
    return out


def run_one(data: bytes, max_side: int, cropper: TimedCropper, model) -> dict:
    started = time.perf_counter()
    decoded = decode_reduced(data, NO_LIMITS, max_side)
    array = np.asarray(decoded.image, dtype=np.uint8)
    decode_s = time.perf_counter() - started
    timed = cropper.crop([array], model, OPTIONS, all_faces=True)
    crops = in_original_pixels(timed.crops[0], decoded)
    boxes = [c.box.to_list()[:4] for c in crops] if isinstance(crops, list) else []
    chips = [c.pixels for c in crops] if isinstance(crops, list) else []
    return {"decode_s": decode_s, "detect_s": timed.detect_s, "align_s": timed.crop_s, "boxes": boxes,
            "chips": chips, "decoded": list(decoded.image.size)}


def chip_cosines(pairs: list[tuple[np.ndarray, np.ndarray]], model) -> np.ndarray:
    """Cosine of the face model's vectors (face_dlib, flip-averaged, as the server embeds) of each
    full-size chip and its reduced-size counterpart."""
    import asyncio

    from common import local_embedder

    async def go():
        async with local_embedder({model.name: model}) as embedder:
            a = await embedder.embed(model, np.stack([p[0] for p in pairs]))
            b = await embedder.embed(model, np.stack([p[1] for p in pairs]))
            return np.sum(a * b, axis=1)

    return asyncio.run(go()) if pairs else np.zeros(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portraits", type=int, default=12)
    parser.add_argument("--crowd", type=int, default=6)
    parser.add_argument("--max-side", type=int, default=1600, help="--face-image-max-side to compare")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = load_models(ROOT / "model_repository", allow_untrained=True)["face_dlib"]
    sets = {"portrait 4032x3024": portraits(args.portraits), "crowd 3840x2160": crowd_frames(args.crowd)}
    cropper = TimedCropper("onnx")
    run_one(sets["portrait 4032x3024"][0], args.max_side, cropper, model)  # warm-up
    results: dict[str, dict] = {}
    for name, blobs in sets.items():
        acc = {mode: {"decode_s": 0.0, "detect_s": 0.0, "align_s": 0.0, "faces": 0} for mode in ("full", "reduced")}
        ious, found_full_only, decoded_size, pairs = [], 0, None, []
        for rnd in range(args.rounds):
            for data in blobs:
                order = ("full", "reduced") if rnd % 2 == 0 else ("reduced", "full")
                got = {}
                for mode in order:
                    got[mode] = run_one(data, 0 if mode == "full" else args.max_side, cropper, model)
                    for k in ("decode_s", "detect_s", "align_s"):
                        acc[mode][k] += got[mode][k]
                if rnd == 0:
                    decoded_size = got["reduced"]["decoded"]
                    for mode in ("full", "reduced"):
                        acc[mode]["faces"] += len(got[mode]["boxes"])
                    for box, chip in zip(got["full"]["boxes"], got["full"]["chips"]):
                        scored = [(iou(box, b), c) for b, c in zip(got["reduced"]["boxes"], got["reduced"]["chips"])]
                        best, twin = max(scored, key=lambda t: t[0], default=(0.0, None))
                        ious.append(best)
                        found_full_only += best < 0.5
                        if best >= 0.5:
                            pairs.append((chip, twin))
        n = len(blobs) * args.rounds
        row = {}
        for mode, a in acc.items():
            stages = {k[:-2]: a[k] / n * 1000 for k in ("decode_s", "detect_s", "align_s")}
            row[mode] = {"ms_per_image": stages, "sum_ms": sum(stages.values()), "faces": a["faces"]}
        ious_arr = np.array(ious) if ious else np.zeros(0)
        row["reduced_size"] = decoded_size
        row["images"] = len(blobs)
        row["speedup"] = row["full"]["sum_ms"] / row["reduced"]["sum_ms"]
        row["decode_speedup"] = row["full"]["ms_per_image"]["decode"] / row["reduced"]["ms_per_image"]["decode"]
        row["iou_vs_full"] = {"faces_at_full_size": len(ious), "iou_ge_0_9": float((ious_arr >= 0.9).mean()) if len(ious) else None,
                              "median": float(np.median(ious_arr)) if len(ious) else None,
                              "iou_ge_0_8": float((ious_arr >= 0.8).mean()) if len(ious) else None,
                              "found_at_full_size_only": int(found_full_only)}
        cos = chip_cosines(pairs, model)
        row["chip_cosine"] = {"pairs": len(pairs), "median": float(np.median(cos)) if len(cos) else None,
                              "min": float(cos.min()) if len(cos) else None}
        results[name] = row
        print(f"{name}: full {row['full']['sum_ms']:.0f} ms/image, reduced {row['reduced']['sum_ms']:.0f} "
              f"-> {row['speedup']:.2f}x; faces {row['full']['faces']} / {row['reduced']['faces']}; "
              f"IoU>=0.9 {row['iou_vs_full']['iou_ge_0_9']}; chip cosine {row['chip_cosine']}", flush=True)
    cropper.close()
    load = os.getloadavg()
    result = {"when": now_utc(), "machine": machine(), "max_side": args.max_side, "rounds": args.rounds,
              "load_average_end": [round(x, 2) for x in load], "sets": results}
    lines = [f"# Large JPEGs in face collections: reduced-size decode ({result['when']}, "
             f"{machine()['cpus']} CPUs)", "",
             f"`--face-image-max-side {args.max_side}`: a JPEG at least twice that on its long side is decoded at "
             "1/2, 1/4 or 1/8 by libjpeg (the smallest keeping that long side), faces found and aligned at "
             "that size, boxes scaled back. Images made in memory from the shared data (see the script). "
             f"Interleaved full / reduced, {args.rounds} rounds; ONNX MTCNN in-process, all faces (up to 64), "
             f"confidence >= 0.9; load average at the end {load[0]:.2f}.", "",
             "| images | decoded at | mode | decode ms | detect ms | align ms | sum ms | decode share | faces |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        for mode in ("full", "reduced"):
            st = row[mode]["ms_per_image"]
            size = "full" if mode == "full" else "x".join(map(str, row["reduced_size"]))
            lines.append(f"| {name} ({row['images']}) | {size} | {mode} | {st['decode']:.1f} | {st['detect']:.1f} | "
                         f"{st['align']:.1f} | {row[mode]['sum_ms']:.1f} | "
                         f"{st['decode'] / row[mode]['sum_ms']:.0%} | {row[mode]['faces']} |")
    lines.append("")
    for name, row in results.items():
        q = row["iou_vs_full"]
        lines.append(f"- {name}: reduced decode **{row['speedup']:.2f}x** faster over decode + detect + align "
                     f"(decode alone {row['decode_speedup']:.2f}x); of {q['faces_at_full_size']} faces found at full "
                     f"size, {q['iou_ge_0_9']:.1%} found at reduced size with IoU >= 0.9 and {q['iou_ge_0_8']:.1%} "
                     f"with IoU >= 0.8 (median {q['median']:.3f}), {q['found_at_full_size_only']} found at full "
                     f"size only; cosine of the face model's vectors of the two chips (face_dlib): median "
                     f"{row['chip_cosine']['median']:.4f}, min {row['chip_cosine']['min']:.4f} over "
                     f"{row['chip_cosine']['pairs']} faces.")
    write_results("face_decode", result, "\n".join(lines) + "\n")
    print("written to benchmarks/results/face_decode.{json,md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
