"""The server's layers depend in one direction: transport -> use cases -> shared services ->
backends. Read from the import statements of the source, so a reach-in fails here first. And the test kit
(testkit/revsearch_testkit, harnesses of the tests and benchmarks) sits above everything: it may import the
client and the server, and neither of them imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "server" / "revsearch_server"


def _imports(module: Path) -> set[str]:
    """revsearch_server modules that `module` imports, as dotted names relative to the package."""
    here = module.relative_to(PACKAGE).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level + 1])
                target = ".".join(base + ([node.module] if node.module else []))
                out.add(target)
                if not node.module:
                    out.update(".".join(base + [a.name]) for a in node.names)
            elif node.module and node.module.startswith("revsearch_server"):
                out.add(node.module.removeprefix("revsearch_server").lstrip("."))
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("revsearch_server").lstrip(".") for a in node.names
                       if a.name.startswith("revsearch_server"))
    return out


def _modules(*globs: str) -> list[Path]:
    return sorted(p for g in globs for p in PACKAGE.glob(g))


def _offenders(modules: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for m in modules:
        hits = sorted(i for i in _imports(m) if i.split(".")[0] in forbidden or i in forbidden)
        if hits:
            bad[str(m.relative_to(PACKAGE))] = hits
    return bad


SHARED_AND_BACKENDS = ("domain.py", "validation.py", "catalog.py", "collection_service.py", "encoder.py", "copies.py",
                       "copy_vectors.py",
                       "rows.py", "imaging.py", "models.py", "admission.py", "embedding/*.py", "faces/*.py", "index/*.py",
                       "video/*.py")


@pytest.mark.parametrize("layer, globs, forbidden", [
    ("use cases", ("usecases/*.py",), ("transport", "wiring", "app")),
    ("shared services and backends", SHARED_AND_BACKENDS, ("transport", "usecases", "wiring", "app")),
    ("transport", ("transport/*.py",), ("wiring", "app")),
])
def test_no_layer_imports_a_layer_above_it(layer, globs, forbidden):
    assert _offenders(_modules(*globs), forbidden) == {}, layer


def test_the_image_and_video_use_cases_do_not_depend_on_each_other():
    assert "usecases.videos" not in _imports(PACKAGE / "usecases" / "images.py")
    assert "usecases.images" not in _imports(PACKAGE / "usecases" / "videos.py")


def test_the_server_never_imports_the_client_library():
    client_modules = {"client", "cli", "errors", "evaluation", "loadtest"}
    for m in _modules("*.py", "*/*.py"):
        for node in ast.walk(ast.parse(m.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("revsearch."):
                assert node.module.split(".")[1] not in client_modules, f"{m.name} imports {node.module}"


# -- the test kit (testkit/revsearch_testkit): tests and benchmarks import it, the product never -----------
ROOT = PACKAGE.parents[1]
TESTKIT = "revsearch_testkit"


def _testkit_uses(module: Path) -> list[str]:
    """Where `module` imports the test kit, or names one of its modules as a string (`python -m ...`,
    importlib): `import revsearch_testkit...`, `from revsearch_testkit... import`, "revsearch_testkit.chaos"."""
    hits = []
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value.strip()]
        hits += [f"line {node.lineno}: {n}" for n in names if n == TESTKIT or n.startswith(TESTKIT + ".")]
    return hits


@pytest.mark.parametrize("package", ["clients/revsearch", "server/revsearch_server"])
def test_neither_the_client_nor_the_server_uses_the_test_kit(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    assert {str(m.relative_to(ROOT)): hits for m in modules if (hits := _testkit_uses(m))} == {}


def test_the_test_kit_lives_outside_the_shipped_packages_and_may_use_both():
    kit = ROOT / "testkit" / TESTKIT
    assert (kit / "__init__.py").is_file() and (kit / "chaos.py").is_file()
    assert not (ROOT / "clients" / "revsearch" / "chaos.py").exists()
    # The direction allowed: the kit imports the client library (and runs the server as a process).
    chaos = ast.parse((kit / "chaos.py").read_text())
    imported = {n.module for n in ast.walk(chaos) if isinstance(n, ast.ImportFrom) and n.module}
    assert "revsearch.client" in imported
