"""`pip install .` in a clean virtual environment gives a working client and CLI and nothing of the
server's: `revsearch --help` runs, none of the `server` extra's packages is installed, the test kit
is not shipped, and the installed CLI indexes, searches and describes a running server (an
in-process one with the fake inference backend). `revsearch serve` says what to install instead of
failing with a traceback.

The environment is made with `python -m venv` (no system site packages) from this interpreter and
filled by pip from the package registry pip is configured with (dependencies unpinned, as a user
gets them). It is skipped only when no venv can be made or pip cannot reach the registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import encode, synthetic_image

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The server extra's packages that no client dependency may pull in. setuptools comes with every
# venv (and is in the extra only for milvus-lite's pkg_resources); requests is too common a library
# to blame on the server if something else ever pulls it in.
SERVER_ONLY = sorted({re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("_", "-")
                      for r in PROJECT["optional-dependencies"]["server"]} - {"setuptools", "requests"})
# Import names of the server's dependencies, and of the test kit.
NOT_IMPORTABLE = ["revsearch_testkit", "grpc_health", "grpc_reflection", "onnxruntime", "openvino", "tritonclient",
                  "pymilvus", "milvus_lite", "cv2", "prometheus_client", "cryptography", "torch"]
INSTALL_TIMEOUT_S = 480


@dataclass
class ClientVenv:
    root: Path
    seconds: dict[str, float]

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A command of the venv's bin/ (revsearch, pip, python), outside the repository and its PYTHONPATH."""
        return subprocess.run([str(self.root / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or self.root, env=_clean_env(self.root))


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _source_copy(dest: Path) -> Path:
    """What `pip install .` reads (pyproject.toml, clients/, server/), copied: pip builds in the source
    tree, and the build's build/ and *.egg-info must not land in the repository."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    dest.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for folder in ("clients", "server"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def _tail(proc: subprocess.CompletedProcess, chars: int = 3000) -> str:
    return f"rc={proc.returncode}\n{proc.stdout[-chars:]}\n{proc.stderr[-chars:]}"


@pytest.fixture(scope="module")
def client_venv():
    with tempfile.TemporaryDirectory(prefix="revsearch-client-venv-") as tmp:
        tmp = Path(tmp)
        seconds = {}
        started = time.monotonic()
        made = subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], capture_output=True, text=True,
                              timeout=300, env=_clean_env(tmp / "venv"))
        if made.returncode != 0 or not (tmp / "venv" / "bin" / "pip").exists():
            pytest.skip(f"cannot create a virtual environment with pip here: {_tail(made, 800)}")
        venv = ClientVenv(tmp / "venv", seconds)
        seconds["venv"] = time.monotonic() - started

        started = time.monotonic()
        reach = venv.run("pip", "download", "--no-deps", "--quiet", "--dest", str(tmp / "probe"), "rich", timeout=300)
        if reach.returncode != 0:
            pytest.skip(f"pip cannot reach the package registry: {_tail(reach, 800)}")
        seconds["registry_probe"] = time.monotonic() - started

        started = time.monotonic()
        source = _source_copy(tmp / "src")
        installed = venv.run("pip", "install", "--quiet", str(source), timeout=INSTALL_TIMEOUT_S)
        assert installed.returncode == 0, f"pip install . failed:\n{_tail(installed)}"
        seconds["pip_install"] = time.monotonic() - started
        shutil.rmtree(source)
        yield venv
        print(f"\nclean client venv: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}")


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(fakes=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("client-install-images")
    paths = []
    for seed in range(4):
        path = folder / f"synthetic_{seed}.jpg"
        path.write_bytes(encode(synthetic_image(seed)))
        paths.append(path)
    return paths


def test_revsearch_help_runs_from_the_installed_package(client_venv):
    where = client_venv.run("python", "-c", "import revsearch, revsearch.cli; print(revsearch.__file__)")
    assert where.returncode == 0, _tail(where)
    assert Path(where.stdout.strip()).is_relative_to(client_venv.root)  # not the repository's sources
    helped = client_venv.run("revsearch", "--help")
    assert helped.returncode == 0, _tail(helped)
    for command in ("search", "index", "info", "collections", "serve"):
        assert command in helped.stdout


def test_no_server_dependency_and_no_test_kit_is_installed(client_venv):
    listed = client_venv.run("pip", "list", "--format", "json")
    assert listed.returncode == 0, _tail(listed)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "revsearch" in installed
    assert sorted(installed & set(SERVER_ONLY)) == []
    assert "revsearch-testkit" not in installed
    code = ("import importlib.util, importlib.metadata, json\n"
            f"mods = [m for m in {NOT_IMPORTABLE!r} if importlib.util.find_spec(m) is not None]\n"
            "files = [str(f) for f in importlib.metadata.files('revsearch')]\n"
            "print(json.dumps({'importable': mods, 'files': files}))")
    probe = client_venv.run("python", "-c", code)
    assert probe.returncode == 0, _tail(probe)
    found = json.loads(probe.stdout)
    assert found["importable"] == []
    assert not [f for f in found["files"] if "testkit" in f or "chaos" in f]
    assert "revsearch/v1/search_service_pb2.py" in found["files"] and "revsearch/cli.py" in found["files"]


def test_the_installed_cli_indexes_searches_and_describes_a_running_server(client_venv, server, images):
    cli = ("revsearch", "--server", server.address, "--timeout", "120")
    indexed = client_venv.run(*cli, "index", *map(str, images), "--collection", "client_install", "--json", "-q")
    assert indexed.returncode == 0, _tail(indexed)
    assert json.loads(indexed.stdout)["indexed"] == len(images)

    found = client_venv.run(*cli, "search", str(images[2]), "--collection", "client_install", "--top-k", "3",
                            "--json")
    assert found.returncode == 0, _tail(found)
    hits = json.loads(found.stdout)["hits"]
    assert hits[0]["uri"] == str(images[2].resolve()) and hits[0]["score"] >= 0.99

    info = client_venv.run(*cli, "info", "--json")
    assert info.returncode == 0, _tail(info)
    assert json.loads(info.stdout)["models"]
    listed = client_venv.run(*cli, "collections")
    assert listed.returncode == 0 and "client_install" in listed.stdout, _tail(listed)


@pytest.mark.parametrize("command", [("revsearch", "serve", "--help"), ("revsearch-server", "--help")])
def test_serving_without_the_server_extra_says_what_to_install(client_venv, command):
    served = client_venv.run(*command)
    assert served.returncode == 2, _tail(served)
    message = " ".join(served.stderr.split())  # rich wraps the line
    assert 'pip install "revsearch[server]"' in message, message
    assert "Traceback" not in served.stderr
