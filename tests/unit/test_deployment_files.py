"""docker-compose.yml cannot be started here (no Docker engine), so check what can be checked:
its structure, and that the flags it passes exist in the server and the Triton configs it
selects exist in the model repository."""

import argparse
import re

import yaml

from revsearch_server.config import add_arguments, from_args
from tests.helpers import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_milvus_standalone_triton_on_gpu_and_the_server_in_order():
    services = _compose()["services"]
    assert {"etcd", "minio", "milvus", "triton", "revsearch"} <= set(services)
    assert services["milvus"]["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert services["revsearch"]["depends_on"]["triton"]["condition"] == "service_healthy"
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert all("healthcheck" in s for s in services.values())


def test_the_server_flags_in_compose_are_real_server_flags():
    command = _compose()["services"]["revsearch"]["command"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    settings = from_args(parser.parse_args(command))
    assert settings.milvus_uri == "http://milvus:19530" and settings.triton_url == "triton:8001"


def test_triton_in_compose_selects_a_config_every_loaded_model_has():
    command = _compose()["services"]["triton"]["command"]
    config_name = re.search(r"--model-config-name=(\S+)", command).group(1)
    models = re.findall(r"--load-model=(\S+)", command)
    assert models
    for model in models:
        config = (ROOT / "model_repository" / model / "configs" / f"{config_name}.pbtxt").read_text()
        assert 'backend: "onnxruntime"' in config and "KIND_GPU" in config
        assert f'name: "{model}"' in config
