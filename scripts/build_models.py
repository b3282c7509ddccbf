"""Builds the model repository's ONNX models (run by `make models`).

Each model is a build entry in BUILDERS plus its folder in model_repository/ (its Triton
configs); the build writes <model>/1/model.onnx, copies the one Python-backend runner
(model_repository/onnx_runner.py) to <model>/1/model.py, and records build_info.json. The ONNX graph takes uint8 RGB images [N, S, S, 3] and does the
normalisation itself, so every backend (Triton CPU or GPU, local ONNX Runtime) runs exactly the
same preprocessing.

Weights: the standard torchvision download/cache, or --weights PATH (sha256-checked). When none
can be had the build stops, unless --allow-untrained: then a deterministically seeded, untrained
network is built and recorded as untrained in build_info.json, which the server, the info RPC
and the CLI report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED_BANNER = """
================================================================================
  UNTRAINED MODEL: {name} was built WITHOUT pretrained weights ({why}).
  Its embeddings are deterministic but meaningless for search. It is recorded as
  untrained; the server serves it only with --allow-untrained (tests, CI).
  For real results: python scripts/build_models.py --weights /path/to/{filename}
================================================================================
"""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class WeightsUnavailable(RuntimeError):
    pass


def _resnet50_weights(weights_path: Path | None):
    """(state_dict, source, sha256) from --weights or torchvision's cache/download."""
    import torch
    from torch.hub import get_dir
    from torchvision.models import ResNet50_Weights

    known = {w.url.rsplit("-", 1)[-1].split(".")[0]: w for w in ResNet50_Weights}  # hash prefix -> enum
    if weights_path is not None:
        digest = sha256_file(weights_path)
        match = next((w for prefix, w in known.items() if digest.startswith(prefix)), None)
        if match is None:
            raise SystemExit(f"{weights_path}: sha256 {digest} matches none of torchvision's ResNet50 weights "
                             f"(expected a hash starting with {' or '.join(known)}); refusing to build")
        return torch.load(weights_path, map_location="cpu", weights_only=True), f"torchvision {match}", digest
    weights = ResNet50_Weights.IMAGENET1K_V2
    filename = weights.url.rsplit("/", 1)[-1]
    cached = Path(get_dir()) / "checkpoints" / filename
    try:
        socket.setdefaulttimeout(20)
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # no network, blocked host, bad hash
        raise WeightsUnavailable(f"could not download {weights.url}: {type(exc).__name__}: {exc}") from None
    return state, f"torchvision {weights}", sha256_file(cached) if cached.exists() else ""


def build_resnet50(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    import torch
    from torch import nn
    from torchvision.models import resnet50

    filename = "resnet50-11ad3fa6.pth"
    try:
        state, source, digest = _resnet50_weights(weights_path)
        trained = True
    except WeightsUnavailable as exc:
        if not allow_untrained:
            raise SystemExit(
                f"No ResNet50 weights: {exc}.\n"
                f"Give them with --weights /path/to/{filename} (torchvision's IMAGENET1K_V2 file), or put "
                f"that file in torch's hub cache, or build an UNTRAINED model for tests with "
                f"--allow-untrained (make serve UNTRAINED=1).")
        print(UNTRAINED_BANNER.format(name="resnet50", why="no weights file given and the download failed", filename=filename),
              file=sys.stderr)
        state, source, digest, trained = None, "untrained: torch.manual_seed(0), torchvision init", "", False

    torch.manual_seed(0)
    backbone = resnet50(weights=None)
    if state is not None:
        backbone.load_state_dict(state)
    backbone.fc = nn.Identity()  # 2048-d global-average-pooled features
    model = _UInt8ImageNetInput(backbone).eval()

    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter is what works here
    example = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["images"], output_names=["embeddings"],
                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    _check_onnx(model, onnx_path, example)
    return {"name": "resnet50", "version": "1", "dimension": 2048, "input_size": 224, "resize_to": 256,
            "preprocess": "imagenet", "input_name": "images", "output_name": "embeddings", "trained": trained,
            "weights_source": source, "weights_sha256": digest, "onnx_sha256": sha256_file(onnx_path)}


def _UInt8ImageNetInput(backbone):
    import torch
    from torch import nn

    class UInt8ImageNetInput(nn.Module):
        """uint8 NHWC RGB in, ImageNet-normalised float NCHW into the backbone."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float()
            return self.backbone((x - self.mean) / self.std)

    return UInt8ImageNetInput()


def _check_onnx(model, onnx_path: Path, example) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = model(example).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"images": example.numpy()})[0]
    cos = np.sum(expected * got, 1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    if cos.min() < 0.9999:
        raise SystemExit(f"ONNX export of {onnx_path} disagrees with PyTorch (cosine {cos.min():.6f})")
    print(f"  ONNX matches PyTorch: min cosine {cos.min():.6f}, max abs diff {np.abs(expected - got).max():.2e}")


def _package_file(package: str, *parts: str) -> Path:
    """A data file of an installed package, found without importing it (face_recognition_models'
    __init__ imports pkg_resources)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the package {package} is not installed (it is in requirements.txt)")
    return Path(spec.origin).parent.joinpath(*parts)


def build_face_dlib(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    """dlib's face recognition ResNet (real weights from the face-recognition-models wheel) to ONNX."""
    sys.path.insert(0, str(Path(__file__).parent))
    from dlib_face_to_onnx import convert

    dat = weights_path or _package_file("face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat")
    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    stats = convert(str(dat), str(version_dir / "model.onnx"))
    print(f"  ONNX matches the float64 reference of dlib's network: min cosine {stats['min_cosine']:.8f}")
    return {"name": "face_dlib", "version": "1", "dimension": 128, "input_size": 150, "resize_to": 150,
            "preprocess": "face_chip", "input_name": "images", "output_name": "embeddings", "trained": True,
            "weights_source": "dlib_face_recognition_resnet_model_v1.dat (face-recognition-models)",
            "weights_sha256": sha256_file(dat), "onnx_sha256": sha256_file(version_dir / "model.onnx")}


BUILDERS = {"resnet50": build_resnet50, "face_dlib": build_face_dlib}
RUNNER = ROOT / "model_repository" / "onnx_runner.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", default=",".join(BUILDERS), help="comma-separated: " + ", ".join(BUILDERS))
    parser.add_argument("--weights", type=Path, help="local weights file (single model builds only)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="build a seeded untrained model when no weights can be had (tests only)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the build record is current")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    for name in names:
        if name not in BUILDERS:
            parser.error(f"unknown model {name!r}; known: {', '.join(BUILDERS)}")
        out_dir = args.repository / name
        info_file = out_dir / "build_info.json"
        if info_file.exists() and not args.force and args.weights is None:
            info = json.loads(info_file.read_text())
            built = all((out_dir / "1" / f).exists() for f in ("model.onnx", "model.py"))
            if built and (info["trained"] or args.allow_untrained):
                print(f"{name}: already built ({'trained' if info['trained'] else 'UNTRAINED'}); --force rebuilds")
                continue
        started = time.time()
        print(f"{name}: building into {out_dir}")
        info = BUILDERS[name](out_dir, args.weights, args.allow_untrained)
        info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        shutil.copyfile(RUNNER, out_dir / info["version"] / "model.py")
        info_file.write_text(json.dumps(info, indent=2) + "\n")
        state = "trained" if info["trained"] else "UNTRAINED"
        print(f"{name}: built ({state}, {info['weights_source']}) in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
