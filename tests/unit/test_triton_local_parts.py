"""The pieces of serving the face detector's nets from the managed Triton that need no Triton: the
overlay repository that sets a net's runtime, and the removal of input regions that stopped
servers left in shared memory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from revsearch_server.faces.input_region import PREFIX, remove_stale
from revsearch_server.triton_managed import ManagedTriton
from tests.helpers import ROOT


def _repository(root: Path) -> Path:
    """Two models with the real MTCNN config and a version folder each."""
    for name in ("mtcnn_pnet", "resnet50"):
        model = root / "repo" / name
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.onnx").write_bytes(b"onnx")
        (model / "config.pbtxt").write_text((ROOT / "model_repository" / "mtcnn_pnet" / "config.pbtxt").read_text())
    return root / "repo"


def test_the_overlay_repository_sets_the_runtime_of_the_named_models_and_links_everything_else(tmp_path):
    repo = _repository(tmp_path)
    triton = ManagedTriton(repo, tmp_path / "log", ["mtcnn_pnet", "resnet50"], runtimes={"mtcnn_pnet": "onnxruntime"})
    overlay = triton._overlay(tmp_path / "overlay")
    config = text_format.Parse((overlay / "mtcnn_pnet" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["runtime"].string_value == "onnxruntime"
    original = text_format.Parse((repo / "mtcnn_pnet" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert original.parameters["runtime"].string_value == "openvino"  # the real file is left alone
    config.parameters["runtime"].string_value = "openvino"
    assert config == original  # nothing else changed
    assert (overlay / "mtcnn_pnet" / "1").resolve() == (repo / "mtcnn_pnet" / "1").resolve()
    assert (overlay / "resnet50").is_symlink() and (overlay / "resnet50").resolve() == (repo / "resnet50").resolve()


def test_regions_of_stopped_servers_are_removed_and_those_of_running_ones_kept(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    mine, dead, other = (tmp_path / f"{PREFIX}{os.getpid()}_0", tmp_path / f"{PREFIX}{gone.pid}_3",
                         tmp_path / "triton_python_backend_shm_region_1")
    for f in (mine, dead, other):
        f.write_bytes(b"x")
    assert remove_stale(tmp_path) == [dead.name]
    assert mine.exists() and other.exists() and not dead.exists()
