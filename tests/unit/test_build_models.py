"""The model build refuses to make an untrained model silently and checks weight files."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BUILD = [sys.executable, str(ROOT / "scripts" / "build_models.py")]


def test_without_weights_the_build_stops_and_says_what_to_do(tmp_path):
    # Named in --models it is an error; a plain run (make models) skips it with the same reason and
    # command (efficientnet_lite0 is then the default general-image model).
    proc = subprocess.run([*BUILD, "--repository", str(tmp_path), "--models", "resnet50", "--force"],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path))
    assert proc.returncode != 0
    assert "resnet50: skipped (no ImageNet weights" in proc.stderr
    assert "--weights" in proc.stderr and "--allow-untrained" in proc.stderr
    assert not (tmp_path / "resnet50" / "build_info.json").exists()


def test_a_weights_file_with_the_wrong_sha256_is_refused(tmp_path):
    bogus = tmp_path / "resnet50-11ad3fa6.pth"
    bogus.write_bytes(b"not the real weights")
    proc = subprocess.run([*BUILD, "--repository", str(tmp_path / "repo"), "--weights", str(bogus)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "matches none of torchvision's ResNet50 weights" in proc.stderr


def test_the_untrained_build_is_recorded_as_untrained():
    info = json.loads((ROOT / "model_repository" / "resnet50" / "build_info.json").read_text())
    if info["trained"]:
        pytest.skip("this machine built the model from real weights")
    assert info["weights_sha256"] == "" and info["weights_source"].startswith("untrained")
    assert (info["dimension"], info["input_name"], info["output_name"]) == (2048, "images", "embeddings")


def test_the_server_refuses_an_untrained_model_unless_allowed():
    from revsearch_server.models import ModelsUnavailable, load_models

    repo = ROOT / "model_repository"
    if json.loads((repo / "resnet50" / "build_info.json").read_text())["trained"]:
        pytest.skip("this machine built the model from real weights")
    served = load_models(repo, allow_untrained=False)
    assert "resnet50" not in served and served["face_dlib"].trained
    assert load_models(repo, allow_untrained=True)["resnet50"].trained is False
    with pytest.raises(ModelsUnavailable, match="make models"):
        load_models(ROOT / "no_such_repository", allow_untrained=True)


# FaceNet: optional. Subprocess builds get a proxy that refuses connections, so no test downloads
# weights even on a machine with internet, and an empty TORCH_HOME, so no cached file is found.
def _offline_env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    return {**env, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "TORCH_HOME": str(tmp_path / "torch_home")}


def _build_models_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_models_under_test", ROOT / "scripts" / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def untrained_facenet_repository(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("facenet")
    proc = subprocess.run([*BUILD, "--repository", str(tmp / "repo"), "--models", "facenet", "--allow-untrained"],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp))
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED MODEL: facenet" in proc.stderr
    return tmp / "repo"


def test_facenet_built_with_allow_untrained_is_recorded_untrained_and_embeds_a_batch(untrained_facenet_repository):
    import numpy as np
    import onnxruntime as ort

    model_dir = untrained_facenet_repository / "facenet"
    info = json.loads((model_dir / "build_info.json").read_text())
    assert info["trained"] is False and info["weights_sha256"] == "" and info["weights_source"].startswith("untrained")
    assert (info["dimension"], info["input_size"], info["resize_to"], info["preprocess"]) == (512, 160, 160, "face_margin")
    assert (model_dir / "1" / "model.py").is_file()
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    out = session.run(["embeddings"], {"images": batch})[0]
    assert out.shape == (2, 512) and out.dtype == np.float32 and np.isfinite(out).all()


def test_a_face_margin_model_needs_face_crops_and_is_served_only_when_untrained_is_allowed(
        untrained_facenet_repository):
    from revsearch_server.models import ModelsUnavailable, load_models

    spec = load_models(untrained_facenet_repository, allow_untrained=True)["facenet"]
    assert spec.preprocess == "face_margin" and spec.needs_face_crop and spec.flip_average
    assert (spec.dimension, spec.input_size, spec.trained) == (512, 160, False)
    with pytest.raises(ModelsUnavailable):
        load_models(untrained_facenet_repository, allow_untrained=False)


def test_facenet_named_without_weights_stops_and_says_how_to_build_it(tmp_path):
    proc = subprocess.run([*BUILD, "--repository", str(tmp_path / "repo"), "--models", "facenet"],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path))
    assert proc.returncode != 0
    assert "No FaceNet weights" in proc.stderr
    assert "--models facenet --weights" in proc.stderr and "--allow-untrained" in proc.stderr
    assert not (tmp_path / "repo" / "facenet" / "build_info.json").exists()


def test_a_plain_build_skips_facenet_with_a_notice_when_no_weights_can_be_had(tmp_path, monkeypatch, capsys):
    build_models = _build_models_module()
    planned = build_models.plan(None)
    assert planned[:3] == [("resnet50", True), ("face_dlib", True), ("facenet", False)]
    # The INT8 models are required and come after the fp32 model each is quantized from.
    names = [name for name, _ in planned]
    assert ("resnet50_int8", True) in planned and ("face_dlib_int8", True) in planned
    assert names.index("resnet50_int8") > names.index("resnet50") and names.index("face_dlib_int8") > names.index(
        "face_dlib")
    assert build_models.plan("facenet") == [("facenet", True)]

    def no_weights(weights_path):
        raise build_models.WeightsUnavailable("could not download it: offline")

    # Only the facenet entry, so the plain run does not build the other models here.
    monkeypatch.setattr(build_models, "BUILDERS", {"facenet": build_models.build_facenet})
    monkeypatch.setattr(build_models, "_facenet_weights", no_weights)
    assert build_models.main(["--repository", str(tmp_path), "--allow-untrained"]) == 0
    out = capsys.readouterr().out
    notice = [line for line in out.splitlines() if line.startswith("facenet: skipped")]
    assert len(notice) == 1 and "--models facenet --weights" in notice[0]
    assert not (tmp_path / "facenet").exists()


def test_a_facenet_weights_file_with_the_wrong_sha256_is_refused(tmp_path):
    bogus = tmp_path / "20180402-114759-vggface2.pt"
    bogus.write_bytes(b"not the real weights")
    proc = subprocess.run([*BUILD, "--repository", str(tmp_path / "repo"), "--models", "facenet",
                           "--weights", str(bogus)], capture_output=True, text=True, timeout=300,
                          env=_offline_env(tmp_path))
    assert proc.returncode != 0 and "is not that of facenet-pytorch's 20180402-114759-vggface2.pt" in proc.stderr
    assert not (tmp_path / "repo" / "facenet" / "build_info.json").exists()


def test_the_facenet_structural_check_takes_a_vggface2_shaped_state_dict_and_refuses_others(tmp_path):
    import torch
    from facenet_pytorch import InceptionResnetV1

    build_models = _build_models_module()
    vggface2 = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631).state_dict()
    torch.save(vggface2, tmp_path / "vggface2.pt")
    state = build_models._facenet_state_dict(tmp_path / "vggface2.pt")
    assert not any(k.startswith("logits.") for k in state)
    InceptionResnetV1(pretrained=None, classify=False).load_state_dict(state, strict=True)

    casia = {k: v for k, v in vggface2.items() if not k.startswith("logits.")}
    casia["logits.weight"] = torch.zeros(10575, 512)
    torch.save(casia, tmp_path / "casia.pt")
    with pytest.raises(SystemExit, match="VGGFace2 logits layer"):
        build_models._facenet_state_dict(tmp_path / "casia.pt")
    misshapen = {**vggface2, "last_linear.weight": torch.zeros(128, 1792)}
    torch.save(misshapen, tmp_path / "misshapen.pt")
    with pytest.raises(SystemExit, match="does not fit InceptionResnetV1"):
        build_models._facenet_state_dict(tmp_path / "misshapen.pt")
