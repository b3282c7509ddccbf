"""The model build refuses to make an untrained model silently and checks weight files."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BUILD = [sys.executable, str(ROOT / "scripts" / "build_models.py")]


def test_without_weights_the_build_stops_and_says_what_to_do(tmp_path):
    proc = subprocess.run([*BUILD, "--repository", str(tmp_path), "--force"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
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
