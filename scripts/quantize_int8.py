"""INT8 models: static quantization of a built fp32 model, with a quality gate.

Used by scripts/build_models.py for its `<model>_int8` entries (resnet50_int8, face_dlib_int8). The
fp32 model must be built first; its model.onnx is quantized with ONNX Runtime's quantize_static:

* QDQ format, weights QInt8 per channel, activations QUInt8 (U8S8: ONNX Runtime's fast path on
  x86 with VNNI; S8S8 activations ran ResNet50 at a third of the speed here), MinMax calibration
  (Percentile and Entropy were no better on these models and 3-4x slower to calibrate).
* The graph is first run through ONNX Runtime's quantization pre-processing (quant_pre_process):
  the PyTorch exporter passes weights through Identity nodes, which the quantizer cannot see as
  weights (unprocessed, the INT8 ResNet50 ran at a quarter of fp32's speed).
* Not quantized: the uint8 -> float preprocessing at the graph's start (every node before the
  first Conv/MatMul: transpose, cast, mean, scale). Neither graph ends in a normalisation (the
  server L2-normalises), so there is no final normalisation to exclude.

Images (fixed, deterministic, from ../shared/data; each model's calibration set is disjoint from
its quality set, and the two sets use disjoint LFW identities). LFW identities are the folders of
lfw/ in sorted order, position k counted from 0; "first image" is an identity's first file in
sorted order.

  resnet50_int8 (whole images, imaging.resize_center_crop as in imaging.preprocess: short side to
  256, centre 224):
    calibration (128): photos/ at sorted positions i % 5 == 0 (60), the first image of LFW
      identities with k % 8 == 0 (the first 54 of them), and 2 frames of every video/*.mp4 (sorted,
      7 clips: the frames at 1/4 and 3/4 of the clip; 14)
    quality (500): the other 240 photos, the first image of LFW identities with k % 8 != 0 (the
      first 260 of them)
  face_dlib_int8 (aligned 150 px face chips, made as the server makes them: imaging.decode_image,
  facenet-pytorch's MTCNN, faces/cropper.py's choice of the most prominent face with the default
  FaceOptions (min confidence 0.9, min face 20 px), faces/align.py's chip):
    calibration (128): the first image of LFW identities with k % 8 == 0, the first 128 in which a
      face is found
    quality (500): the first image of LFW identities with k % 8 != 0, the first 500 with a face

Quality gate: on the quality set, the cosine between each input's INT8 and fp32 output (the raw
model output, before the server's normalisation and, for face models, before flip averaging).
Median >= 0.98 and 1st percentile >= 0.95 (GATE), else the build stops with the numbers and writes
nothing: the model is written to a temporary file and moved into place only after the check.
The numbers go into build_info.json ("quality") and are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REVSEARCH_CALIBRATION_DATA", ROOT.parent / "shared" / "data"))
INT8_OF = {"resnet50_int8": "resnet50", "face_dlib_int8": "face_dlib"}  # int8 model -> its fp32 model
CALIBRATION_IMAGES = 128
QUALITY_IMAGES = 500
GATE = {"min_median": 0.98, "min_p1": 0.95}
# Nodes from the first of these on are quantized; the ones before are the input preprocessing.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


class CalibrationDataMissing(Exception):
    """The shared images are not there; the message says where they were looked for."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- the quantization and its gate ----------------------------------------------------------------
def _session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _outputs(session, input_name: str, output_name: str, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([session.run([output_name], {input_name: images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)]).astype(np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def preprocessing_nodes(model) -> list[str]:
    """Names of the nodes before the first Conv/MatMul/Gemm (the uint8 -> float input preprocessing)."""
    names = []
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            return names
        names.append(node.name)
    return []


def head_nodes(model) -> list[str]:
    """Names of the nodes after the last Conv/MatMul/Gemm (a pooling head, e.g. GeM's cube, means and
    cube root: with efficientnet_lite0's dynamic-size graph, quantizing them took the median cosine
    to fp32 from 0.99 to 0.979, under the gate)."""
    last = max((n for n, node in enumerate(model.graph.node) if node.op_type in COMPUTE_OPS), default=None)
    return [] if last is None else [node.name for node in model.graph.node[last + 1:]]


def quantize_checked(fp32_onnx: Path, out_onnx: Path, calibration: np.ndarray, quality: np.ndarray,
                     input_name: str = "images", output_name: str = "embeddings", batch: int = 8,
                     gate: dict = GATE, keep_head_fp32: bool = False) -> dict:
    """Quantizes fp32_onnx with calibration, measures it against fp32 on quality, and writes it to
    out_onnx only when it passes the gate (SystemExit with the numbers otherwise; nothing written).
    Returns the record's "quantization" and "quality" entries."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self._batches, None)

    if len(calibration) == 0 or len(quality) == 0:
        raise SystemExit(f"INT8 calibration of {fp32_onnx} failed: {len(calibration)} calibration and "
                         f"{len(quality)} quality images")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared))
            excluded = preprocessing_nodes(graph) + (head_nodes(graph) if keep_head_fp32 else [])
            quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
        except Exception as exc:
            raise SystemExit(f"INT8 calibration of {fp32_onnx} failed: {type(exc).__name__}: {exc}; "
                             f"no INT8 model written") from None
        calibrated_s = time.perf_counter() - started
        checked = time.perf_counter()
        reference = _outputs(_session(fp32_onnx), input_name, output_name, quality, batch)
        got = _outputs(_session(quantized), input_name, output_name, quality, batch)
        cos = cosines(got, reference)
        quality_record = {
            "images": int(len(quality)), "cosine_median": round(float(np.median(cos)), 6),
            "cosine_p1": round(float(np.percentile(cos, 1)), 6), "cosine_min": round(float(cos.min()), 6),
            "cosine_mean": round(float(cos.mean()), 6), "gate": dict(gate),
            "measured": "cosine of each quality image's INT8 and fp32 model output",
            "seconds": round(time.perf_counter() - checked, 1)}
        numbers = (f"cosine INT8 vs fp32 on {len(quality)} images: median {quality_record['cosine_median']:.4f}, "
                   f"1st percentile {quality_record['cosine_p1']:.4f}, min {quality_record['cosine_min']:.4f}")
        if not np.isfinite(cos).all() or (quality_record["cosine_median"] < gate["min_median"]
                                          or quality_record["cosine_p1"] < gate["min_p1"]):
            raise SystemExit(f"INT8 quality gate failed for {out_onnx}: {numbers} (needed: median >= "
                             f"{gate['min_median']}, 1st percentile >= {gate['min_p1']}); no INT8 model written")
        print(f"  INT8 quality gate passed: {numbers}")
        out_onnx.parent.mkdir(parents=True, exist_ok=True)
        staged = out_onnx.with_name(f".{out_onnx.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(quantized, staged)  # beside out_onnx, so that the move into place is atomic
            os.replace(staged, out_onnx)
        finally:
            staged.unlink(missing_ok=True)
    return {
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
                         "weights": "QInt8", "activations": "QUInt8", "calibration_method": "MinMax",
                         "preprocessed": "quant_pre_process (skip_symbolic_shape)", "not_quantized": excluded,
                         "calibration_images": int(len(calibration)), "calibration_batch": batch,
                         "calibration_sha256": hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest(),
                         "seconds": round(calibrated_s, 1)},
        "quality": quality_record,
    }


# -- the images -----------------------------------------------------------------------------------
def _require(data: Path, *parts: str) -> Path:
    path = data.joinpath(*parts)
    if not path.is_dir():
        raise CalibrationDataMissing(f"no calibration images at {path} (the shared data, ../shared/data; "
                                     f"REVSEARCH_CALIBRATION_DATA=DIR points elsewhere)")
    return path


def lfw_first_images(data: Path) -> list[tuple[int, Path]]:
    """(k, first image) of every LFW identity, identities in sorted order."""
    persons = sorted(p for p in _require(data, "lfw").iterdir() if p.is_dir())
    out = []
    for k, person in enumerate(persons):
        images = sorted(person.glob("*.jpg"))
        if images:
            out.append((k, images[0]))
    return out


def _video_frames(data: Path) -> list[np.ndarray]:
    """RGB frames at 1/4 and 3/4 of every video/*.mp4, sorted by name."""
    import cv2

    frames = []
    for clip in sorted(_require(data, "video").glob("*.mp4")):
        cap = cv2.VideoCapture(str(clip))
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            for index in (count // 4, 3 * count // 4):
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                ok, bgr = cap.read()
                if not ok:
                    raise SystemExit(f"INT8 calibration failed: cannot read frame {index} of {clip}")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
    return frames


def imagenet_sets(data: Path, input_size: int, resize_to: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """resnet50's calibration (128) and quality (500) inputs; the selection rule is in the module doc."""
    from PIL import Image

    from revsearch_server.imaging import ImageLimits, decode_image, resize_center_crop

    limits = ImageLimits(1 << 30, 1 << 30)

    def load(path: Path) -> np.ndarray:
        return resize_center_crop(decode_image(path.read_bytes(), limits, draft_size=resize_to), input_size, resize_to)

    photos = sorted(_require(data, "photos").glob("*.jpg"))
    firsts = lfw_first_images(data)
    cal_photos = [p for i, p in enumerate(photos) if i % 5 == 0]
    cal_lfw = [p for k, p in firsts if k % 8 == 0][:54]
    frames = [resize_center_crop(Image.fromarray(f), input_size, resize_to) for f in _video_frames(data)]
    calibration = [load(p) for p in cal_photos + cal_lfw] + frames
    quality_paths = [p for i, p in enumerate(photos) if i % 5 != 0] + [p for k, p in firsts if k % 8 != 0][:260]
    if len(calibration) != CALIBRATION_IMAGES or len(quality_paths) != QUALITY_IMAGES:
        raise SystemExit(f"INT8 calibration failed: {data} gave {len(calibration)} calibration images "
                         f"(expected {CALIBRATION_IMAGES}) and {len(quality_paths)} quality images (expected "
                         f"{QUALITY_IMAGES}): not the shared data this build was made for")
    quality = np.stack([load(p) for p in quality_paths])
    sets = {"calibration": f"photos/ at sorted positions i % 5 == 0 ({len(cal_photos)}); the first image of LFW "
                           f"identities k % 8 == 0, first 54 ({len(cal_lfw)}); frames at 1/4 and 3/4 of each "
                           f"video/*.mp4 ({len(frames)})",
            "quality": "the other 240 photos; the first image of LFW identities k % 8 != 0, first 260",
            "preprocess": f"imaging.resize_center_crop({input_size}, {resize_to})"}
    return np.stack(calibration), quality, sets


def face_chip_sets(data: Path, fp32_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """face_dlib's calibration (128) and quality (500) chips; the selection rule is in the module doc."""
    from concurrent.futures import ThreadPoolExecutor

    from revsearch_server.domain import FaceOptions
    from revsearch_server.faces.cropper import FaceCropper
    from revsearch_server.faces.detector import DetectorSettings, MtcnnDetector
    from revsearch_server.imaging import ImageLimits, decode_image
    from revsearch_server.models import ModelSpec

    spec = ModelSpec.from_build_info(fp32_dir)
    limits = ImageLimits(1 << 30, 1 << 30)
    # crop_arrays runs in the caller's thread; the cropper still wants its pools.
    idle = ThreadPoolExecutor(1)
    cropper = FaceCropper(idle, idle, lambda size: MtcnnDetector(DetectorSettings(min_face_size=size,
                                                                                  min_confidence=0.0)), limits)
    options = FaceOptions()
    skipped = {"calibration": 0, "quality": 0}

    def chips(paths: list[Path], wanted: int, which: str) -> np.ndarray:
        out: list[np.ndarray] = []
        for i in range(0, len(paths), 16):
            arrays = [np.asarray(decode_image(p.read_bytes(), limits), dtype=np.uint8) for p in paths[i:i + 16]]
            for result in cropper.crop_arrays(arrays, spec, options):
                if isinstance(result, list) and len(out) < wanted:
                    out.append(result[0].pixels)
                elif len(out) < wanted:
                    skipped[which] += 1
            if len(out) >= wanted:
                break
        if len(out) < wanted:
            raise SystemExit(f"INT8 calibration failed: only {len(out)} of {wanted} {which} face chips found")
        return np.stack(out)

    try:
        firsts = lfw_first_images(data)
        calibration = chips([p for k, p in firsts if k % 8 == 0], CALIBRATION_IMAGES, "calibration")
        quality = chips([p for k, p in firsts if k % 8 != 0], QUALITY_IMAGES, "quality")
    finally:
        idle.shutdown()
    sets = {"calibration": "the first image of LFW identities k % 8 == 0, the first 128 with a face",
            "quality": "the first image of LFW identities k % 8 != 0, the first 500 with a face",
            "preprocess": "MTCNN (facenet-pytorch), most prominent face, default FaceOptions, aligned "
                          f"{spec.input_size} px chip (faces/cropper.py, faces/align.py)",
            "no_face_skipped": skipped}
    return calibration, quality, sets


# -- the build entry ------------------------------------------------------------------------------
def build(out_dir: Path, data: Path | None = None) -> dict:
    """Builds out_dir (e.g. model_repository/resnet50_int8) from its fp32 model beside it; returns
    its build record (without built_at). CalibrationDataMissing when the shared images are absent."""
    data = data or SHARED_DATA
    name = out_dir.name
    fp32_name = INT8_OF[name]
    fp32_dir = out_dir.parent / fp32_name
    info_file = fp32_dir / "build_info.json"
    if not info_file.is_file():
        raise SystemExit(f"{name} is made from {fp32_name}'s model.onnx, which is not built: build it first "
                         f"(python scripts/build_models.py --models {fp32_name},{name})")
    fp32 = json.loads(info_file.read_text())
    fp32_onnx = fp32_dir / str(fp32["version"]) / "model.onnx"
    if fp32.get("onnx_sha256") != _sha256(fp32_onnx):
        raise SystemExit(f"{fp32_onnx} is not the file its build record describes; rebuild {fp32_name} (--force)")
    started = time.perf_counter()
    if fp32["preprocess"] == "imagenet":
        calibration, quality, sets = imagenet_sets(data, int(fp32["input_size"]), int(fp32["resize_to"]))
        batch = 8
    elif fp32["preprocess"] == "face_chip":
        calibration, quality, sets = face_chip_sets(data, fp32_dir)
        batch = 16
    else:
        raise SystemExit(f"no INT8 calibration set for {fp32['preprocess']!r} inputs")
    prepared_s = time.perf_counter() - started
    print(f"  {len(calibration)} calibration and {len(quality)} quality inputs prepared in {prepared_s:.1f}s")
    version = str(fp32["version"])
    out_onnx = out_dir / version / "model.onnx"
    record = quantize_checked(fp32_onnx, out_onnx, calibration, quality, fp32["input_name"], fp32["output_name"],
                              batch)
    record["quantization"]["images"] = sets
    record["quantization"]["inputs_prepared_s"] = round(prepared_s, 1)
    info = {key: fp32[key] for key in ("dimension", "input_size", "resize_to", "preprocess", "input_name",
                                       "output_name", "trained", "weights_source", "weights_sha256")}
    return {"name": name, "version": version, **info, "precision": "int8", "fp32_model": fp32_name,
            "fp32_onnx_sha256": fp32["onnx_sha256"], "onnx_sha256": _sha256(out_onnx), **record}


def stale(repository: Path, info: dict) -> str:
    """Why an int8 model's build record no longer matches its fp32 model ("" when it does, or for
    any other model)."""
    fp32_name = info.get("fp32_model")
    if not fp32_name:
        return ""
    try:
        fp32 = json.loads((repository / fp32_name / "build_info.json").read_text())
    except (OSError, ValueError):
        return f"{fp32_name} is not built"
    if fp32.get("onnx_sha256") != info.get("fp32_onnx_sha256"):
        return f"{fp32_name} was rebuilt since"
    return ""
