"""The PCA-whitening of copy detection's regional descriptors, learned at build time.

efficientnet_lite0's graph gives, per image, GeM vectors of the whole feature map and of its four
quadrants ("regions", [N, 5, 1280]). A copy-detection collection stores them PCA-whitened to
DIMENSION dimensions (server/revsearch_server/copy_vectors.py applies the projection): 5 x 128
instead of 5 x 1280 numbers per item, and whitening makes distances fairer across directions the
training images vary in.

The images it is learned from, all from ../shared/data and all of the copy benchmark's development
half (revsearch.copy_edits.dev_split, by content hash; the report half is never seen):
  * photos/*.jpg of the development half,
  * every 2nd LFW image (sorted paths) of the development half,
  * every 10th frame of each clip in video/ (JPEG quality 92, as the benchmark's frames) of the
    development half,
each as the model's five region vectors, L2-normalised: about 6,000 vectors of about 1,250 images.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

DIMENSION = 128
# Eigenvalues are shrunk by this fraction of the DIMENSION-th before whitening (lambda + SHRINK *
# lambda_D)^-1/2: full whitening (0) amplifies the weakest kept directions, which are mostly noise.
SHRINK = 1.0
FORMAT = 1


def training_images(data: Path) -> tuple[list[np.ndarray], dict]:
    """The whole-image model inputs (224 x 224 uint8 RGB) of the documented set, and what it is."""
    import cv2
    from PIL import Image

    from revsearch.copy_edits import dev_split

    def whole(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=np.uint8)

    def dev(data_bytes: bytes) -> bool:
        return dev_split(hashlib.sha256(data_bytes).hexdigest())

    out, counts = [], {"photos": 0, "lfw": 0, "video_frames": 0}
    for p in sorted((data / "photos").glob("*.jpg")):
        raw = p.read_bytes()
        if dev(raw):
            out.append(whole(Image.open(p)))
            counts["photos"] += 1
    for p in sorted((data / "lfw").glob("*/*.jpg"))[::2]:
        raw = p.read_bytes()
        if dev(raw):
            out.append(whole(Image.open(p)))
            counts["lfw"] += 1
    for clip in sorted((data / "video").glob("*.mp4")):
        cap = cv2.VideoCapture(str(clip))
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % 10 == 0:
                raw = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
                if dev(raw):
                    out.append(whole(Image.fromarray(frame[:, :, ::-1])))
                    counts["video_frames"] += 1
            n += 1
        cap.release()
    return out, counts


def fit(vectors: np.ndarray, dimension: int = DIMENSION, shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D_in], projection [D_in, dimension]) of L2-normalised float vectors [N, D_in]."""
    x = vectors.astype(np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    values, vecs = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dimension]
    values, vecs = values[order], vecs[:, order]
    # eigh's signs are arbitrary: fix each axis so its largest loading is positive (a rebuild gives the same file).
    vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    scale = 1.0 / np.sqrt(values + shrink * values[-1])
    return mean.astype(np.float32), (vecs * scale).astype(np.float32)


def learn_whitening(onnx_path: Path, out_file: Path, data: Path, output: str, dimension: int = DIMENSION) -> dict | None:
    """Learns the projection from the model at onnx_path, writes out_file (npz: mean, projection) and
    returns the build record's "copy_descriptor"; None (with a notice) when the shared data is missing."""
    import onnxruntime as ort

    if not (data / "photos").is_dir() or not (data / "lfw").is_dir():
        print(f"  copy descriptor skipped: {data} has not the shared photos and LFW images "
              "(copy detection is then off for this model)")
        return None
    started = time.perf_counter()
    images, counts = training_images(data)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    parts = [session.run([output], {"images": np.stack(images[i:i + 16])})[0] for i in range(0, len(images), 16)]
    regions = np.concatenate(parts).reshape(-1, parts[0].shape[-1])
    regions /= np.linalg.norm(regions, axis=1, keepdims=True)
    mean, projection = fit(regions, dimension)
    np.savez(out_file, mean=mean, projection=projection)
    record = {"output": output, "regions": int(parts[0].shape[1]), "dimension": dimension,
              "whitening": out_file.name, "format": FORMAT, "shrink": SHRINK,
              "whitening_sha256": hashlib.sha256(out_file.read_bytes()).hexdigest(),
              "learned_from": {"images": counts, "vectors": int(len(regions)),
                               "set": "development half (copy_edits.dev_split) of the shared photos, every 2nd "
                                      "LFW image and every 10th clip frame (scripts/copy_whitening.py)"},
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"  copy descriptor: {len(regions)} region vectors of {sum(counts.values())} images ({counts}) "
          f"-> PCA-whitening to {dimension} dimensions in {record['seconds']}s")
    return record
