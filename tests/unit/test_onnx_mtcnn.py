"""MTCNN as ONNX (faces/onnx_mtcnn.py) finds the faces facenet-pytorch's MTCNN finds: the same boxes,
confidences, landmarks and the same chosen face, on LFW photos, a crowd frame, a Hamilton frame and
an image without a face, with its nets in OpenVINO (the default) and in ONNX Runtime alike; it runs
without torch; the wiring picks it when its nets are built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from revsearch_server.errors import FailedPrecondition, Unavailable
from revsearch_server.faces.detector import DetectorSettings, MtcnnDetector
from revsearch_server.faces.geometry import DetectedFace, prominent_face
from revsearch_server.faces.net_runners import FailoverNets, LocalNets, resolve_runtime
from revsearch_server.faces.onnx_mtcnn import NET_NAMES, OnnxMtcnnDetector
from revsearch_server.models import detector_nets, load_models
from tests.helpers import CROWD_CLIP, CROWD_FRAME, HAMILTON_CLIP, HAMILTON_FRAME, ROOT, lfw_images, video_frame

REPOSITORY = ROOT / "model_repository"
# The server's settings: min face 20, thresholds (0.6, 0.7, 0.7), every candidate kept by the detector
# (min_confidence 0), then the collection's 0.9 filter.
SETTINGS = DetectorSettings(min_face_size=20, min_confidence=0.0)
COLLECTION_MIN_CONFIDENCE = 0.9


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def nets():
    found = detector_nets(REPOSITORY)
    assert set(NET_NAMES) <= set(found), "MTCNN's nets are not built: python scripts/build_models.py --models mtcnn"
    return found


@pytest.fixture(scope="module", params=["openvino", "onnxruntime"])
def onnx_detector(nets, request) -> OnnxMtcnnDetector:
    """The detector with its nets in each runtime the server can use (--face-net-runtime)."""
    return OnnxMtcnnDetector(LocalNets(nets, runtime=request.param), SETTINGS)


@pytest.fixture(scope="module")
def torch_detector() -> MtcnnDetector:
    return MtcnnDetector(SETTINGS)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    out = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in lfw_images(40, per_person_max=1)}
    out["crowd"] = video_frame(CROWD_CLIP, CROWD_FRAME)
    out["hamilton"] = video_frame(HAMILTON_CLIP, HAMILTON_FRAME)
    return out


@pytest.fixture(scope="module")
def detections(images, onnx_detector, torch_detector):
    """name -> (torch faces, ONNX faces), each after the collection's confidence filter.

    facenet-pytorch detects one image per call here: its batched result depends on the other images
    of the batch where two overlapping final boxes tie in confidence (its batched NMS sorts the whole
    batch); the ONNX detector's does not (benchmarks/bench_onnx_mtcnn.py measures both)."""
    arrays = list(images.values())
    by_torch, by_onnx = [torch_detector.detect([a])[0] for a in arrays], onnx_detector.detect(arrays)
    keep = lambda faces: [f for f in faces if f.confidence >= COLLECTION_MIN_CONFIDENCE]  # noqa: E731
    return {name: (keep(t), keep(o)) for name, t, o in zip(images, by_torch, by_onnx)}


def _matched(a: list[DetectedFace], b: list[DetectedFace]) -> list[tuple[DetectedFace, DetectedFace | None, float]]:
    """Each face of a with b's face of the highest IoU."""
    out = []
    for face in a:
        best = max(b, key=lambda f: iou(face.box, f.box), default=None)
        out.append((face, best, iou(face.box, best.box) if best else 0.0))
    return out


def test_every_face_facenet_pytorch_finds_in_lfw_photos_is_found_with_the_same_box(detections):
    lfw = {k: v for k, v in detections.items() if k.endswith(".jpg")}
    pairs = [m for t, o in lfw.values() for m in _matched(t, o)]
    assert len(pairs) >= 40
    assert all(score >= 0.95 for _, _, score in pairs), sorted(score for _, _, score in pairs)[:5]
    # and nothing more: every ONNX face has its torch counterpart too
    assert all(score >= 0.95 for t, o in lfw.values() for _, _, score in _matched(o, t))


def test_confidences_and_landmarks_agree_with_facenet_pytorch(detections):
    for name, (by_torch, by_onnx) in detections.items():
        for face, other, score in _matched(by_torch, by_onnx):
            assert other is not None, name
            assert other.confidence == pytest.approx(face.confidence, abs=1e-3), name
            assert np.abs(other.landmarks - face.landmarks).max() <= 1.0, name
            assert other.landmarks.shape == (5, 2) and other.landmarks.dtype == np.float32


def test_the_same_face_is_chosen_in_every_image(detections, images):
    for name, (by_torch, by_onnx) in detections.items():
        h, w = images[name].shape[:2]
        chosen_torch, chosen_onnx = prominent_face(by_torch, w, h), prominent_face(by_onnx, w, h)
        assert (chosen_torch is None) == (chosen_onnx is None), name
        if chosen_torch is not None:
            assert iou(chosen_torch.box, chosen_onnx.box) >= 0.95, name


def test_the_crowd_and_hamilton_frames_give_the_same_faces_as_facenet_pytorch(detections):
    for name, minimum in (("crowd", 5), ("hamilton", 2)):
        by_torch, by_onnx = detections[name]
        assert len(by_onnx) == len(by_torch) >= minimum, name
        assert all(score >= 0.95 for _, _, score in _matched(by_torch, by_onnx)), name
        assert [f.confidence for f in by_onnx] == sorted((f.confidence for f in by_onnx), reverse=True)


def test_an_image_without_a_face_gives_no_faces(onnx_detector, torch_detector):
    blank = np.full((240, 320, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 / 319, yy * 255 / 239, np.full_like(xx, 128.0)], -1).astype(np.uint8)
    assert onnx_detector.detect([blank, gradient]) == [[], []]
    assert torch_detector.detect([blank]) == [[]]


def test_images_too_small_for_a_face_have_none_and_do_not_break_their_batch(onnx_detector, images):
    photo = next(iter(images.values()))
    tiny = [np.zeros((8, 8, 3), np.uint8), np.zeros((19, 300, 3), np.uint8), np.zeros((3000, 12, 3), np.uint8)]
    faces = onnx_detector.detect([photo, *tiny])
    assert len(faces[0]) >= 1 and faces[1:] == [[], [], []]
    with pytest.raises(ValueError, match="RGB uint8"):
        onnx_detector.detect([np.zeros((50, 50), np.uint8)])


def test_images_of_different_sizes_in_one_call_give_the_faces_they_give_alone(onnx_detector, images):
    photo = images[next(iter(images))]
    small = np.asarray(Image.fromarray(photo).resize((200, 200), Image.BILINEAR))
    together = onnx_detector.detect([photo, small, images["hamilton"]])
    alone = [onnx_detector.detect([img])[0] for img in (photo, small, images["hamilton"])]
    for a, b in zip(together, alone):
        assert [f.box for f in a] == [f.box for f in b] and [f.confidence for f in a] == [f.confidence for f in b]


def test_a_call_detected_in_parts_of_a_few_images_gives_the_faces_of_one_part(nets, onnx_detector, images):
    arrays = list(images.values())
    calls = []

    def counting(net, batch):
        calls.append(net)
        return onnx_detector.nets(net, batch)

    in_parts = OnnxMtcnnDetector(counting, SETTINGS, max_pixels_per_part=200_000)  # 3 LFW images a part
    whole, parted = onnx_detector.detect(arrays), in_parts.detect(arrays)
    assert calls.count("mtcnn_onet") >= len(arrays) // 3  # the call was split
    for a, b in zip(whole, parted):
        assert [(f.box, f.confidence) for f in a] == [(f.box, f.confidence) for f in b]


def test_an_image_the_nets_fail_on_is_reported_alone_and_the_rest_of_its_batch_is_detected(nets, images):
    local = LocalNets(nets)
    marker = (np.array([1, 2, 3], np.float32) - np.float32(127.5)) * np.float32(0.0078125)

    def failing(net: str, batch: np.ndarray):  # a stand-in failure on the marked image
        if net == "mtcnn_pnet" and any(np.array_equal(b[:, 0, 0], marker) for b in batch):
            raise RuntimeError("stand-in failure")
        return local(net, batch)

    lfw = [images[k] for k in list(images)[:3]]
    poisoned = lfw[1].copy()
    poisoned[:3, :3] = [1, 2, 3]  # every pyramid level's corner pixel averages this block
    faces = OnnxMtcnnDetector(failing, SETTINGS).detect([lfw[0], poisoned, lfw[2]])
    assert faces[1] is None and len(faces[0]) >= 1 and len(faces[2]) >= 1


def test_the_onnx_nets_give_facenet_pytorchs_outputs(nets):
    import torch
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    rng = np.random.default_rng(1)
    local = LocalNets(nets)
    for name, net, shape in (("mtcnn_pnet", PNet(), (2, 3, 57, 91)), ("mtcnn_rnet", RNet(), (16, 3, 24, 24)),
                             ("mtcnn_onet", ONet(), (16, 3, 48, 48))):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in net.eval()(torch.from_numpy(x))]
        got = local(name, x)
        assert [g.shape for g in got] == [e.shape for e in expected], name
        assert max(np.abs(g - e).max() for g, e in zip(got, expected)) < 1e-4, name


def test_the_build_records_the_nets_as_detector_nets_not_embedding_models(nets):
    for name in NET_NAMES:
        info = json.loads((REPOSITORY / name / "build_info.json").read_text())
        assert info["kind"] == "detector" and info["max_abs_diff"] < 1e-4 and info["trained"]
    served = load_models(REPOSITORY, allow_untrained=True)
    assert not set(NET_NAMES) & set(served) and "face_dlib" in served
    assert [nets[n].output_names for n in NET_NAMES] == [("reg", "prob"), ("reg", "prob"), ("reg", "landmarks", "prob")]


def test_pnet_and_rnet_are_built_with_their_prelu_layers_rewritten_and_onet_as_exported(nets):
    import onnx

    for name, rewritten in (("mtcnn_pnet", True), ("mtcnn_rnet", True), ("mtcnn_onet", False)):
        info = json.loads((REPOSITORY / name / "build_info.json").read_text())
        ops = {n.op_type for n in onnx.load(str(nets[name].onnx_path)).graph.node}
        assert info["prelu_rewritten"] is rewritten and ("PRelu" in ops) is not rewritten, name


def test_a_detector_net_built_before_the_graph_change_is_rebuilt():
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_models import _detector_stale
    from mtcnn_to_onnx import GRAPH_VERSION

    assert _detector_stale({"kind": "detector"})  # a record without a graph version: the first graph
    assert _detector_stale({"kind": "detector", "graph": GRAPH_VERSION}) == ""
    assert _detector_stale({"kind": "embedding"}) == ""


def test_a_failing_triton_falls_back_to_the_local_nets_and_is_left_alone_for_a_while(nets):
    calls = []

    def triton(net, batch):
        calls.append(net)
        raise Unavailable("Triton is down")

    runner = FailoverNets(triton, LocalNets(nets), retry_s=60)
    x = np.zeros((1, 3, 24, 24), np.float32)
    assert [o.shape for o in runner("mtcnn_rnet", x)] == [(1, 4), (1, 2)]
    runner("mtcnn_rnet", x)
    assert calls == ["mtcnn_rnet"] and runner.fallbacks_taken == 1
    with pytest.raises(Unavailable):
        FailoverNets(triton, None)("mtcnn_rnet", x)
    # While the embedding backend is not Triton, Triton is not asked at all.
    FailoverNets(triton, LocalNets(nets), use_primary=lambda: False)("mtcnn_rnet", x)
    assert calls == ["mtcnn_rnet", "mtcnn_rnet"]


def _settings(tmp_path: Path, repository: Path):
    from tests.helpers import base_settings

    return base_settings(tmp_path, model_repository=repository)


def test_the_wiring_uses_the_onnx_detector_when_the_nets_are_built(tmp_path, nets):
    from revsearch_server.wiring import detector_factory

    factory = detector_factory(_settings(tmp_path, REPOSITORY), inference=None, triton_url=None, nets=nets)
    detector = factory(40)
    assert isinstance(detector, OnnxMtcnnDetector) and detector.settings.min_face_size == 40
    assert detector.settings.min_confidence == 0.0  # the cropper filters per collection


def test_without_the_nets_the_wiring_falls_back_to_torch_or_says_what_to_build(tmp_path, monkeypatch):
    import importlib.util

    from revsearch_server import wiring

    settings = _settings(tmp_path, tmp_path / "empty_repository")
    assert wiring.detector_factory(settings, None, None, {}) is wiring.mtcnn_detector
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real_find_spec(name, *a))
    factory = wiring.detector_factory(settings, None, None, {})
    with pytest.raises(FailedPrecondition, match="--models mtcnn"):
        factory(20)


def test_the_detector_can_be_chosen_and_a_missing_one_stops_the_start_saying_what_to_do(tmp_path, nets,
                                                                                       monkeypatch):
    import dataclasses
    import importlib.util

    from revsearch_server import wiring

    built = _settings(tmp_path, REPOSITORY)
    assert wiring.detector_factory(dataclasses.replace(built, face_detector="torch"), None, None, nets) \
        is wiring.mtcnn_detector
    onnx = wiring.detector_factory(dataclasses.replace(built, face_detector="onnx"), None, None, nets)
    assert isinstance(onnx(20), OnnxMtcnnDetector)
    empty = _settings(tmp_path, tmp_path / "empty_repository")
    with pytest.raises(wiring.StartupError, match="--models mtcnn"):
        wiring.detector_factory(dataclasses.replace(empty, face_detector="onnx"), None, None, {})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real_find_spec(name, *a))
    with pytest.raises(wiring.StartupError, match="requirements-build.txt"):
        wiring.detector_factory(dataclasses.replace(built, face_detector="torch"), None, None, nets)


def test_the_onnx_detector_and_the_server_wiring_run_without_torch(images):
    """torch, torchvision and facenet_pytorch made unimportable: the serving path still detects."""
    photo = next(p for p in lfw_images(1, per_person_max=1))
    code = f"""
import sys
for name in ("torch", "torchvision", "facenet_pytorch"):
    sys.modules[name] = None  # any import of them raises ImportError
import numpy as np
from pathlib import Path
from PIL import Image
import revsearch_server.app, revsearch_server.wiring
from revsearch_server.faces.net_runners import LocalNets
from revsearch_server.faces.onnx_mtcnn import OnnxMtcnnDetector
from revsearch_server.models import detector_nets
detector = OnnxMtcnnDetector(LocalNets(detector_nets(Path({str(REPOSITORY)!r}))))
faces = detector.detect([np.asarray(Image.open({str(photo)!r}).convert("RGB"))])[0]
assert len(faces) >= 1 and faces[0].confidence > 0.9, faces
assert not any(m.split(".")[0] in ("torch", "torchvision", "facenet_pytorch") for m, v in sys.modules.items() if v)
print("ok", len(faces))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


def test_the_serving_requirements_and_the_server_extras_install_no_torch():
    import tomllib

    serving = (ROOT / "requirements.txt").read_text().lower()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    for package in ("torch", "torchvision", "facenet-pytorch", "dlib"):
        assert not any(line.split("==")[0].strip() == package for line in serving.splitlines()), package
        assert package not in extras, package
    build = (ROOT / "requirements-build.txt").read_text()
    assert "-r requirements.txt" in build and "torch==" in build and "facenet-pytorch==" in build


def test_openvino_and_onnx_runtime_give_the_nets_outputs_to_float_rounding(nets):
    rng = np.random.default_rng(5)
    runtimes = {name: LocalNets(nets, runtime=name) for name in ("openvino", "onnxruntime")}
    for net, shape in (("mtcnn_pnet", (2, 3, 61, 47)), ("mtcnn_pnet", (1, 3, 12, 12)), ("mtcnn_rnet", (33, 3, 24, 24)),
                       ("mtcnn_onet", (5, 3, 48, 48))):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        a, b = runtimes["openvino"](net, x), runtimes["onnxruntime"](net, x)
        assert [o.shape for o in a] == [o.shape for o in b] and all(o.dtype == np.float32 for o in a), net
        assert max(float(np.abs(p - q).max()) for p, q in zip(a, b)) < 1e-4, net
    # An earlier call's outputs stay as they were after the next call (OpenVINO reuses its buffers).
    first = runtimes["openvino"]("mtcnn_rnet", np.zeros((4, 3, 24, 24), np.float32))
    kept = [o.copy() for o in first]
    runtimes["openvino"]("mtcnn_rnet", np.ones((4, 3, 24, 24), np.float32))
    assert all(np.array_equal(o, k) for o, k in zip(first, kept))


def test_the_nets_runtime_is_openvino_when_installed_and_a_missing_one_stops_the_start(tmp_path, nets, monkeypatch):
    import dataclasses
    import importlib.util

    from revsearch_server import wiring

    assert resolve_runtime("auto") == "openvino" and resolve_runtime("onnxruntime") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown runtime"):
        resolve_runtime("tensorrt")
    assert LocalNets(nets).describe().startswith("openvino")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real_find_spec(name, *a))
    assert resolve_runtime("auto") == "onnxruntime"
    settings = dataclasses.replace(_settings(tmp_path, REPOSITORY), face_net_runtime="openvino")
    with pytest.raises(wiring.StartupError, match="OpenVINO is not installed.*--face-net-runtime auto or onnxruntime"):
        wiring.check_face_detector(settings, nets)
