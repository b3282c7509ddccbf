"""docker-compose.yml cannot be started here (no Docker engine), so check what can be checked:
its structure, and that the flags it passes exist in the server and the Triton configs it
selects exist in the model repository."""

import argparse
import re

import pytest
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


def test_the_cpu_profile_runs_triton_without_a_gpu_and_its_own_server():
    services = _compose()["services"]
    assert services["triton-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["triton-cpu"]
    assert services["revsearch-cpu"]["depends_on"]["triton-cpu"]["condition"] == "service_healthy"
    assert services["triton"]["profiles"] == services["revsearch"]["profiles"] == ["gpu"]
    assert all("profiles" not in services[s] for s in ("etcd", "minio", "milvus"))  # Milvus in both


@pytest.mark.parametrize("server", ["revsearch", "revsearch-cpu"])
def test_the_server_flags_in_compose_are_real_server_flags(server):
    command = _compose()["services"][server]["command"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    settings = from_args(parser.parse_args(command))
    triton = {"revsearch": "triton", "revsearch-cpu": "triton-cpu"}[server]
    assert settings.milvus_uri == "http://milvus:19530" and settings.triton_url == f"{triton}:8001"
    assert settings.metrics_port == 9464


@pytest.mark.parametrize("triton,kind", [("triton", "KIND_GPU"), ("triton-cpu", "KIND_CPU")])
def test_triton_in_compose_selects_a_config_every_loaded_model_has(triton, kind):
    command = _compose()["services"][triton]["command"]
    config_name = re.search(r"--model-config-name=(\S+)", command).group(1)
    models = re.findall(r"--load-model=(\S+)", command)
    assert models
    for model in models:
        config = (ROOT / "model_repository" / model / "configs" / f"{config_name}.pbtxt").read_text()
        assert 'backend: "onnxruntime"' in config and kind in config
        assert f'name: "{model}"' in config


@pytest.mark.parametrize("server", ["revsearch", "revsearch-cpu"])
def test_compose_serves_tls_and_api_keys_and_keeps_metrics_off_the_public_interface(server):
    service = _compose()["services"][server]
    env = service["environment"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    assert mounts["/etc/revsearch/tls"] == "./deploy/tls" and mounts["/etc/revsearch/api_keys.toml"].startswith("./deploy/")
    assert env["REVSEARCH_TLS_CERT"].startswith("/etc/revsearch/tls/") and env["REVSEARCH_TLS_KEY"].startswith(
        "/etc/revsearch/tls/")
    assert env["REVSEARCH_API_KEYS"] == "/etc/revsearch/api_keys.toml"
    assert "127.0.0.1:9464:9464" in service["ports"]
    assert service["healthcheck"]["test"][-2:] == ["revsearch_server.healthcheck", "localhost:50051"]


def test_the_example_key_file_is_a_valid_key_file():
    from revsearch_server.security.keys import Role, load_key_file

    ring = load_key_file(ROOT / "deploy" / "api_keys.example.toml")
    assert {k.id: k.role for k in ring.keys} == {"search-frontend": Role.READ, "indexer": Role.WRITE,
                                                 "operator": Role.ADMIN}


# -- the Kubernetes example (no cluster here: its structure and its flags are checked) ------------------
def _kubernetes() -> dict:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "revsearch.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def test_the_kubernetes_example_runs_replicas_behind_a_headless_service_for_round_robin_clients():
    k8s = _kubernetes()
    deployment, service = k8s["Deployment"], k8s["Service"]
    assert deployment["spec"]["replicas"] >= 2
    assert service["spec"]["clusterIP"] == "None"  # DNS gives every pod: the client's round_robin spreads calls
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [50051]


def test_the_kubernetes_servers_flags_are_real_and_point_at_a_milvus_cluster_and_triton():
    container = _kubernetes()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    settings = from_args(parser.parse_args(container["args"]))
    assert settings.milvus_uri.startswith("http://milvus.") and not settings.milvus_uri.endswith(".db")
    assert settings.triton_url.startswith("triton.") and settings.port == 50051 and settings.metrics_port == 9464


def test_the_kubernetes_pods_probe_grpc_health_and_take_tls_and_keys_from_secrets():
    spec = _kubernetes()["Deployment"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][-2:] == ["revsearch_server.healthcheck", "localhost:50051"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {"tls": "revsearch-tls", "api-keys": "revsearch-api-keys"}
    assert env["REVSEARCH_TLS_CERT"].startswith(mounts["tls"]) and env["REVSEARCH_TLS_KEY"].startswith(mounts["tls"])
    assert env["REVSEARCH_API_KEYS"].startswith(mounts["api-keys"]) and env["REVSEARCH_TLS_CA"].startswith(mounts["tls"])
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["name"] in secrets)


def test_compose_gives_milvus_the_segment_settings_the_million_item_benchmark_measured():
    milvus = _compose()["services"]["milvus"]
    assert "./deploy/milvus/user.yaml:/milvus/configs/user.yaml:ro" in milvus["volumes"]
    segment = yaml.safe_load((ROOT / "deploy" / "milvus" / "user.yaml").read_text())["dataCoord"]["segment"]
    assert segment == {"maxSize": 16384, "sealProportion": 0.5, "maxBinlogFileNumber": 64}
