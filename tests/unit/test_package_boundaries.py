"""What the revsearch package loads, and the one table of enum names everyone shares.

The server imports the generated stubs (revsearch.v1) and the enum names (revsearch.names) from the
client package; doing so must not drag in the client library, its errors or the CLI's rich.

What `pip install .` ships and needs: every package and no test kit; the client's imports covered by the
plain dependencies (the CLI loads nothing of the server's), the server's by the `server` extra; the
dependency floors the generated stubs check. tests/integration/test_client_install.py installs it for real.
"""

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from revsearch import names
from revsearch.v1 import search_service_pb2 as pb

# Loaded only by the client library and the CLI; a process that wants only the stubs needs none of them.
HEAVY = ["revsearch.client", "revsearch.errors", "revsearch.cli", "rich"]


def _modules_loaded_by(statements: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running the statements (this one has them all)."""
    code = f"{statements}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_stubs_does_not_load_the_client_library():
    loaded = _modules_loaded_by("import revsearch.names\nimport revsearch.v1.search_service_pb2_grpc")
    assert loaded == set()


def test_the_client_library_is_still_importable_from_the_package():
    assert _modules_loaded_by("from revsearch import AsyncSearchClient, RevsearchClientError, SearchClient") \
        >= {"revsearch.client", "revsearch.errors"}
    from revsearch import AsyncSearchClient, RevsearchClientError, SearchClient
    from revsearch.client import AsyncSearchClient as Async, SearchClient as Sync
    from revsearch.errors import RevsearchClientError as Error

    assert (SearchClient, AsyncSearchClient, RevsearchClientError) == (Sync, Async, Error)


def test_an_unknown_name_in_the_package_is_an_attribute_error():
    import revsearch

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        revsearch.NoSuchThing  # noqa: B018


TABLES = [(names.CROP_MODES, pb.CropMode), (names.MEDIA_TYPES, pb.MediaType),
          (names.INDEX_BACKENDS, pb.IndexBackend), (names.SAMPLING_MODES, pb.SamplingMode),
          (names.RANKINGS, pb.VideoRanking), (names.ITEM_STATUSES, pb.ItemStatus),
          (names.INFERENCE_BACKENDS, pb.InferenceBackend)]


@pytest.mark.parametrize("table, enum", TABLES, ids=[enum.DESCRIPTOR.name for _, enum in TABLES])
def test_every_enum_value_but_unspecified_has_exactly_one_name(table, enum):
    numbers = sorted(v.number for v in enum.DESCRIPTOR.values if not v.name.endswith("_UNSPECIFIED"))
    assert sorted(table.values()) == numbers  # each once: a value named twice would appear twice here
    for name, number in table.items():
        assert names.name_of(table, number) == name


def test_an_unspecified_or_unknown_value_gets_the_default_name():
    assert names.name_of(names.CROP_MODES, pb.CROP_MODE_UNSPECIFIED, "none") == "none"
    assert names.name_of(names.INFERENCE_BACKENDS, 99) == "-"


# -- what `pip install .` ships and needs -----------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Server code that needs more than the `server` extra, by choice: facenet-pytorch's torch MTCNN
# (--face-detector torch; requirements-build.txt).
SERVER_OPTIONAL = {"torch", "facenet-pytorch"}


def _dist(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("tritonclient[grpc]>=2" -> "tritonclient")."""
    return _norm(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    return {_dist(r) for r in project["dependencies"]} | {
        _dist(r) for e in extras for r in project["optional-dependencies"][e]}


def _third_party_imports(package: Path, module_level_only: bool, ours: bool = False) -> dict[str, set[str]]:
    """Top-level names of the non-stdlib modules the package's sources import -> the files that do (with ours:
    revsearch and revsearch_server too)."""
    found: dict[str, set[str]] = {}
    for f in package.rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in (tree.body if module_level_only else ast.walk(tree)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__" and (
                        ours or top not in ("revsearch", "revsearch_server")):
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def _undeclared(imports: dict[str, set[str]], allowed: set[str]) -> dict[str, list[str]]:
    """Imports that no allowed distribution provides (the dev venv has them all installed)."""
    provides = importlib.metadata.packages_distributions()
    return {top: sorted(files) for top, files in imports.items()
            if not {_norm(d) for d in provides.get(top, [])} & allowed}


def test_the_distribution_ships_every_package_and_no_test_kit():
    setup = PYPROJECT["tool"]["setuptools"]
    on_disk = set()
    for package, folder in setup["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *rel)))
    # A subpackage missing from the list works in the editable dev install and breaks `pip install .`.
    assert sorted(setup["packages"]) == sorted(on_disk)
    assert not [p for p in setup["packages"] if p.startswith("revsearch_testkit")]
    assert not any("testkit" in folder for folder in setup["package-dir"].values())
    assert (ROOT / "testkit" / "pyproject.toml").is_file()  # the kit is a distribution of its own


def test_the_client_imports_only_its_dependencies_and_extras():
    client = ROOT / "clients" / "revsearch"
    # At import time (what `revsearch --help`, search, info need): the plain dependencies only.
    assert _undeclared(_third_party_imports(client, module_level_only=True), _declared()) == {}
    # Anywhere (lazily, per command): those plus the client's extras.
    assert _undeclared(_third_party_imports(client, module_level_only=False), _declared("parquet", "eval")) == {}


def test_the_server_imports_only_the_client_dependencies_and_the_server_extra():
    server = ROOT / "server" / "revsearch_server"
    imports = _third_party_imports(server, module_level_only=False)
    assert _undeclared(imports, _declared("server") | SERVER_OPTIONAL) == {}


def test_the_client_imports_the_server_only_in_revsearch_serve():
    """`revsearch serve` imports the server when it runs (and says what to install when it cannot)."""
    client = ROOT / "clients" / "revsearch"
    at_top = _third_party_imports(client, module_level_only=True, ours=True)
    anywhere = _third_party_imports(client, module_level_only=False, ours=True)
    assert "revsearch_server" not in at_top
    assert anywhere.get("revsearch_server", set()) <= {"clients/revsearch/cli.py"}


# Loaded by no client command that talks to a server (search, info, collections, ...).
NOT_FOR_THE_CLIENT = ["revsearch_server", "revsearch_testkit", "pymilvus", "milvus_lite", "onnxruntime", "openvino",
                      "tritonclient", "cv2", "prometheus_client", "cryptography", "matplotlib", "pyarrow", "torch"]


def test_the_cli_loads_no_server_dependency():
    """`revsearch --help`, search, info: a fresh interpreter that imports the CLI and the client library loads
    nothing of the server's (this venv has all of it, so a stray import would load it)."""
    code = ("import sys, json\nimport revsearch.cli, revsearch.client\n"
            f"print(json.dumps([m for m in {NOT_FOR_THE_CLIENT!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_dependency_floors_are_what_the_generated_stubs_check_at_import():
    """The stubs refuse an older grpcio than the grpcio-tools that generated them, and an older protobuf than
    their gencode: regenerating them with newer tools must raise the floors of `pip install .` too."""
    stubs = ROOT / "clients" / "revsearch" / "v1"
    grpc_floor = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (stubs / "search_service_pb2_grpc.py").read_text())
    proto_floor = re.search(r"# Protobuf Python Version: ([\d.]+)", (stubs / "search_service_pb2.py").read_text())
    dependencies = PYPROJECT["project"]["dependencies"]
    assert f"grpcio>={grpc_floor.group(1)}" in dependencies
    assert [d for d in dependencies if d.startswith(f"protobuf>={proto_floor.group(1)}")]
