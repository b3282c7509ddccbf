"""INT8 against fp32 (and BF16): raw ONNX Runtime speed and quality, and EmbedImage through the
server with the INT8 models, in one run.

Per round, interleaved (this machine's speed drifts, so ratios are taken within each round):

  ResNet50, 96 LFW images preprocessed as the server does (short side 256, centre 224):
    raw_fp32    ONNX Runtime in-process, fp32 model.onnx, batch 8, 2 threads
    raw_int8    the same with resnet50_int8                               target raw_int8 / raw_fp32 >= 2.5
    raw_bf16    PyTorch (oneDNN) with the same network in bfloat16, batch 8, 2 threads (ONNX Runtime
                has no BF16 CPU kernels for Conv or MatMul: probed, recorded in the results)
    triton      EmbedImage(model=resnet50_int8), managed CPU Triton, 16 concurrent calls
    local       the same through the local ONNX Runtime fallback      target triton, local / raw_int8 >= 0.85
  face_dlib, aligned chips of the same LFW images (MTCNN, faces/align.py):
    raw_fp32, raw_int8 as above at batch 16
    triton, local: EmbedImage(model=face_dlib_int8); and triton_fp32, local_fp32 with face_dlib. A
                face embed is decode + MTCNN + the chip and its mirror image, so its ceiling is set by
                MTCNN, not by the model; the ratio is taken against raw_int8 / 2 (two passes per image).

Quality on the same images: the cosine of each image's INT8 (and BF16) output with fp32's.
Writes benchmarks/results/int8.{json,md}. The servers run as separate processes, as users run them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

from common import (NO_LIMITS, RESULTS, ROOT, embed_at_saturation, lfw_images, machine, now_utc, start_server,
                    stop_server, write_results)
from revsearch_server.embedding.local_onnx import make_session
from revsearch_server.imaging import decode_image, preprocess
from revsearch_server.models import load_models

THREADS = 2


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def quality(c: np.ndarray) -> dict:
    return {"cosine_median": round(float(np.median(c)), 6), "cosine_p1": round(float(np.percentile(c, 1)), 6),
            "cosine_min": round(float(c.min()), 6), "images": int(len(c))}


# -- raw paths ------------------------------------------------------------------------------------
class OrtRunner:
    def __init__(self, spec, batch: int):
        self.spec, self.batch = spec, batch
        self.session = make_session(spec.onnx_path, threads=THREADS, spinning=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.spec.output_name], {self.spec.input_name: pixels})[0]


class TorchBf16Runner:
    """ResNet50 as scripts/build_models.py builds it (seeded init, or torchvision's weights from
    torch's cache when the build was trained), in bfloat16 with channels-last (oneDNN)."""

    def __init__(self, spec, batch: int):
        import torch
        from torch import nn
        from torchvision.models import resnet50

        torch.set_num_threads(THREADS)
        self.torch, self.batch = torch, batch
        torch.manual_seed(0)
        backbone = resnet50(weights=None)
        if spec.trained:
            from torchvision.models import ResNet50_Weights

            backbone.load_state_dict(ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False))
        backbone.fc = nn.Identity()
        self.fp32 = backbone.eval()
        self.bf16 = copy.deepcopy(backbone).to(memory_format=torch.channels_last).to(torch.bfloat16).eval()
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - self.mean) / self.std
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            return self.bf16(x).float().numpy()


def outputs(run, pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def bench_raw(run, pixels: np.ndarray, batch: int, seconds: float) -> dict:
    run(pixels[:batch])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(0, len(pixels) - batch + 1, batch):
            run(pixels[i:i + batch])
            done += batch
    elapsed = time.perf_counter() - started
    return {"images_per_s": done / elapsed, "images": done, "seconds": elapsed, "batch": batch}


def ort_bf16_probe() -> str:
    """Whether ONNX Runtime's CPU provider runs a BF16 Conv at all: "ok" or its error."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w32")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w32"], ["w"], to=TensorProto.BFLOAT16),
         helper.make_node("Conv", ["x", "w"], ["y"])],
        "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return "ok"
    except Exception as exc:
        return f"onnxruntime {ort.__version__}: {str(exc).strip()[:200]}"


def face_chips(paths, spec) -> np.ndarray:
    """The most prominent face of each image as the server aligns it (facenet-pytorch's MTCNN)."""
    from concurrent.futures import ThreadPoolExecutor

    from revsearch_server.domain import FaceOptions
    from revsearch_server.faces.cropper import FaceCropper
    from revsearch_server.faces.detector import DetectorSettings, MtcnnDetector

    idle = ThreadPoolExecutor(1)
    cropper = FaceCropper(idle, idle, lambda size: MtcnnDetector(DetectorSettings(size, min_confidence=0.0)),
                          NO_LIMITS)
    arrays = [np.asarray(decode_image(p.read_bytes(), NO_LIMITS), dtype=np.uint8) for p in paths]
    crops = [r[0].pixels for i in range(0, len(arrays), 16)
             for r in cropper.crop_arrays(arrays[i:i + 16], spec, FaceOptions()) if isinstance(r, list)]
    idle.shutdown()
    return np.stack(crops)


# -- through the server ---------------------------------------------------------------------------
def median_of(rounds: list[dict], path: str, key: str = "images_per_s") -> float:
    return float(np.median([r[path][key] for r in rounds]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent EmbedImage calls")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-faces", action="store_true", help="ResNet50 only")
    parser.add_argument("--name", default="int8", help="results file name (benchmarks/results/NAME.{json,md})")
    args = parser.parse_args()

    load_start = loadavg()
    print(f"load average at start: {load_start}", flush=True)
    models = load_models(ROOT / "model_repository", allow_untrained=True)
    missing = [m for m in ("resnet50", "resnet50_int8", "face_dlib", "face_dlib_int8") if m not in models]
    if missing:
        sys.exit(f"not built: {', '.join(missing)}; run python scripts/build_models.py --allow-untrained")
    untrained = not all(models[m].trained for m in ("resnet50", "face_dlib"))
    paths = lfw_images(args.images)
    encoded = [p.read_bytes() for p in paths]
    r32, r8 = models["resnet50"], models["resnet50_int8"]
    pixels = np.stack([preprocess(b, NO_LIMITS, r32.input_size, r32.resize_to) for b in encoded])
    runs = {"raw_fp32": OrtRunner(r32, 8), "raw_int8": OrtRunner(r8, 8)}
    bf16_skipped = ""
    try:
        runs["raw_bf16"] = TorchBf16Runner(r32, 8)
    except Exception as exc:  # e.g. a trained build whose weights are not in torch's cache
        bf16_skipped = f"{type(exc).__name__}: {exc}"
    reference = outputs(runs["raw_fp32"], pixels, 8)
    resnet_quality = {"int8": quality(cosines(outputs(runs["raw_int8"], pixels, 8), reference))}
    if "raw_bf16" in runs:
        with runs["raw_bf16"].torch.inference_mode():
            t32 = runs["raw_bf16"].fp32(
                (runs["raw_bf16"].torch.from_numpy(pixels[:8]).permute(0, 3, 1, 2).float() - runs["raw_bf16"].mean)
                / runs["raw_bf16"].std).numpy()
        same = cosines(t32, reference[:8]).min()
        if same < 0.9999:  # not the network that was built: no BF16 comparison
            bf16_skipped = f"the PyTorch network differs from model.onnx (cosine {same:.4f})"
            del runs["raw_bf16"]
        else:
            resnet_quality["bf16"] = quality(cosines(outputs(runs["raw_bf16"], pixels, 8), reference))
    face = {}
    if not args.no_faces:
        f32, f8 = models["face_dlib"], models["face_dlib_int8"]
        chips = face_chips(paths, f32)
        face = {"chips": chips, "runs": {"raw_fp32": OrtRunner(f32, 16), "raw_int8": OrtRunner(f8, 16)}}
        face["quality"] = {"int8": quality(cosines(outputs(face["runs"]["raw_int8"], chips, 16),
                                                   outputs(face["runs"]["raw_fp32"], chips, 16)))}
    print(f"ResNet50 ({'trained' if r32.trained else 'UNTRAINED'}), {len(paths)} LFW images, {os.cpu_count()} CPUs; "
          f"quality {json.dumps(resnet_quality)}; face {json.dumps(face.get('quality', {}))}; "
          f"BF16 in ONNX Runtime: {ort_bf16_probe()}", flush=True)

    dirs = [tempfile.TemporaryDirectory(prefix="bench-int8-") for _ in range(2)]
    servers, addresses = {}, {}
    try:
        for label, extra, d in (("triton", [], dirs[0]), ("local", ["--triton-url", "off"], dirs[1])):
            servers[label], addresses[label] = start_server(extra, d.name, untrained)
        rounds = []
        for n in range(args.rounds):
            r: dict = {"resnet50": {}, "face_dlib": {}}
            for path, run in runs.items():
                r["resnet50"][path] = bench_raw(run, pixels, 8, args.seconds)
            for label in ("triton", "local"):
                r["resnet50"][label] = asyncio.run(embed_at_saturation(addresses[label], encoded, args.concurrency,
                                                                       args.seconds, model="resnet50_int8"))
            if face:
                for path, run in face["runs"].items():
                    r["face_dlib"][path] = bench_raw(run, face["chips"], 16, args.seconds)
                for label in ("triton", "local"):
                    for model, suffix in (("face_dlib_int8", ""), ("face_dlib", "_fp32")):
                        r["face_dlib"][label + suffix] = asyncio.run(embed_at_saturation(
                            addresses[label], encoded, args.concurrency, args.seconds, model=model))
            res = {path: v["images_per_s"] for path, v in r["resnet50"].items()}
            r["ratios"] = {"resnet50_int8_over_fp32": res["raw_int8"] / res["raw_fp32"],
                           "resnet50_triton_over_raw_int8": res["triton"] / res["raw_int8"],
                           "resnet50_local_over_raw_int8": res["local"] / res["raw_int8"]}
            if "raw_bf16" in res:
                r["ratios"]["resnet50_bf16_over_fp32"] = res["raw_bf16"] / res["raw_fp32"]
            if face:
                fr = {path: v["images_per_s"] for path, v in r["face_dlib"].items()}
                per_image = fr["raw_int8"] / 2  # the chip and its mirror image
                r["ratios"].update({
                    "face_int8_over_fp32": fr["raw_int8"] / fr["raw_fp32"],
                    "face_triton_over_raw_int8": fr["triton"] / per_image,
                    "face_local_over_raw_int8": fr["local"] / per_image,
                    "face_triton_int8_over_fp32": fr["triton"] / fr["triton_fp32"],
                    "face_local_int8_over_fp32": fr["local"] / fr["local_fp32"]})
            rounds.append(r)
            print(f"  round {n + 1}: " + "  ".join(
                f"{model}/{path} {v['images_per_s']:.1f}" for model in ("resnet50", "face_dlib")
                for path, v in r[model].items()) + "  |  " + "  ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()),
                flush=True)
    finally:
        for proc in servers.values():
            stop_server(proc)
        for d in dirs:
            d.cleanup()
    load_end = loadavg()
    print(f"load average at end: {load_end}", flush=True)

    medians = {model: {path: {"images_per_s": median_of([r[model] for r in rounds], path),
                              **({"p99_ms": median_of([r[model] for r in rounds], path, "p99_ms")}
                                 if "p99_ms" in rounds[0][model][path] else {})}
                       for path in rounds[0][model]} for model in ("resnet50", "face_dlib") if rounds[0][model]}
    ratios = {k: float(np.median([r["ratios"][k] for r in rounds])) for k in rounds[0]["ratios"]}
    targets = {"resnet50_int8_over_fp32": 2.5, "resnet50_triton_over_raw_int8": 0.85,
               "resnet50_local_over_raw_int8": 0.85}
    result = {
        "benchmark": "int8 vs fp32 (and bf16)", "date": now_utc(), "machine": machine(),
        "load_average_start": load_start, "load_average_end": load_end,
        "settings": {"images": len(paths), "threads": THREADS, "resnet50_batch": 8, "face_batch": 16,
                     "concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds},
        "trained": {m: models[m].trained for m in ("resnet50", "face_dlib")},
        "quality": {"resnet50": resnet_quality, **({"face_dlib": face["quality"]} if face else {})},
        "bf16": {"onnxruntime_cpu": ort_bf16_probe(), "pytorch_skipped": bf16_skipped},
        "medians": medians, "ratios": ratios, "targets": targets,
        "met": {k: ratios[k] >= v for k, v in targets.items() if k in ratios}, "rounds": rounds,
    }
    write_results(args.name, result, markdown(result, untrained))
    print(f"ratios: {json.dumps({k: round(v, 3) for k, v in ratios.items()})}; "
          f"written to {RESULTS.relative_to(ROOT)}/{args.name}.{{json,md}}")
    return 0


def markdown(result: dict, untrained: bool) -> str:
    s, m, q, ratios = result["settings"], result["medians"], result["quality"], result["ratios"]

    def cos(which: dict) -> str:
        return f"median {which['cosine_median']:.4f}, p1 {which['cosine_p1']:.4f}"

    def row(path: str, ips: float, setting: str, ratio: str, cosine: str = "") -> str:
        return f"| {path} | {ips:.1f} | {setting} | {ratio} | {cosine} |"

    res, calls = m["resnet50"], f"concurrency {s['concurrency']}"
    raw = "batch 8, 2 threads"
    rows = [row("ResNet50 fp32, ONNX Runtime in-process", res["raw_fp32"]["images_per_s"], raw, "1.00"),
            row("ResNet50 INT8, ONNX Runtime in-process", res["raw_int8"]["images_per_s"], raw,
                f"**{ratios['resnet50_int8_over_fp32']:.2f}** (target 2.5)", cos(q["resnet50"]["int8"]))]
    if "raw_bf16" in res:
        rows.append(row("ResNet50 BF16, PyTorch (oneDNN) in-process", res["raw_bf16"]["images_per_s"], raw,
                        f"{ratios['resnet50_bf16_over_fp32']:.2f}", cos(q["resnet50"]["bf16"])))
    for label, what in (("triton", "managed Triton"), ("local", "local fallback")):
        rows.append(row(f"EmbedImage resnet50_int8, {what}", res[label]["images_per_s"],
                        f"{calls}, p99 {res[label]['p99_ms']:.0f} ms",
                        f"**{ratios[f'resnet50_{label}_over_raw_int8']:.2f}** of raw INT8 (target 0.85)"))
    if "face_dlib" in m:
        f = m["face_dlib"]
        rows += [row("face_dlib fp32, ONNX Runtime in-process (chips/s)", f["raw_fp32"]["images_per_s"], "batch 16",
                     "1.00"),
                 row("face_dlib INT8, ONNX Runtime in-process (chips/s)", f["raw_int8"]["images_per_s"], "batch 16",
                     f"**{ratios['face_int8_over_fp32']:.2f}**", cos(q["face_dlib"]["int8"]))]
        for label, what in (("triton", "managed Triton"), ("local", "local fallback")):
            rows.append(row(f"EmbedImage face_dlib_int8 (MTCNN, chip and mirror), {what}", f[label]["images_per_s"],
                            calls, f"{ratios[f'face_{label}_over_raw_int8']:.2f} of raw INT8 / 2; "
                            f"{ratios[f'face_{label}_int8_over_fp32']:.2f} x face_dlib's "
                            f"{f[label + '_fp32']['images_per_s']:.1f}"))
    weights = ("UNTRAINED ResNet50 (no pretrained weights here; same graph and cost as a trained one, but its INT8 "
               "quality says little about a trained network's)" if not result["trained"]["resnet50"]
               else "trained ResNet50")
    short = s["seconds"] < 15 or s["rounds"] < 3
    return (f"# INT8 (and BF16) against fp32 ({result['date']}, {result['machine']['cpus']} CPUs)\n\n"
            + ("**Short run** (fewer or shorter rounds than the defaults): a check that the benchmark works, not "
               "the numbers to quote.\n\n" if short else "")
            + f"Load average at start {result['load_average_start']}, at end {result['load_average_end']}. "
            f"{weights}; face_dlib with dlib's real weights. {s['images']} LFW images; medians of {s['rounds']} "
            f"interleaved rounds of {s['seconds']:.0f} s per path (ratios taken within each round).\n\n"
            "| path | images/s | setting | ratio | cosine to fp32 |\n|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nBF16 in ONNX Runtime (CPU): {result['bf16']['onnxruntime_cpu']}. "
            + (f"PyTorch BF16 skipped: {result['bf16']['pytorch_skipped']}. " if result["bf16"]["pytorch_skipped"]
               else "")
            + "A face EmbedImage is decode, MTCNN, and the face model on the chip and its mirror image: its "
              "ceiling is MTCNN's, so its ratio to the raw model is far below 1 and not a target.\n")


if __name__ == "__main__":
    sys.exit(main())
