"""The README and docs/ stay true to the code.

Every server flag and REVSEARCH_* variable is in docs/configuration.md, every CLI command with its
options is there too, every RPC of the service is in docs/api.md, every repository path and link the
docs name exists (links to a section find it), every `make` target named is in the Makefile, and the
README stays a front door (at most 250 lines, its picture committed and small). Each check collects
what is missing and asserts on that list, so a failure names what to fix; the checkers themselves are
tested on texts that lack something.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
API = DOCS / "api.md"
PROTO = ROOT / "protos" / "revsearch" / "v1" / "search_service.proto"

README_MAX_LINES = 250
PICTURE_MAX_BYTES = 300 * 1024

# Paths the docs name that a fresh clone does not have: built by `make models`, made by the reader
# (certificates, the key file), or the server's data directory.
NOT_IN_A_CLONE = ("model_repository/*/1/*", "model_repository/*/build_info.json",
                  "model_repository/*/copy_whitening.npz", "1/*", "deploy/tls", "deploy/tls/*",
                  "deploy/api_keys.toml")
# Extensions of a partial path (e.g. `faces/onnx_mtcnn.py`) that must match the end of a repository file.
PARTIAL_PATH_SUFFIXES = (".py", ".md", ".proto", ".pbtxt", ".toml", ".yaml", ".yml", ".json", ".sh")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# -- what the code defines --------------------------------------------------------------------------------

def server_parser() -> argparse.ArgumentParser:
    from revsearch_server import config

    parser = argparse.ArgumentParser(prog="revsearch-server")
    config.add_arguments(parser)
    return parser


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every --option of a parser (both spellings of --tls / --no-tls), without --help."""
    return [o for a in parser._actions for o in a.option_strings
            if o.startswith("--") and not isinstance(a, argparse._HelpAction)]


def server_flags() -> list[str]:
    return long_options(server_parser())


def server_variables() -> list[str]:
    """REVSEARCH_<DEST> of every server flag: config._env reads exactly these."""
    return [f"REVSEARCH_{a.dest.upper()}" for a in server_parser()._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def variables_in_code() -> list[str]:
    """Every REVSEARCH_* name written in the server, the client and the scripts."""
    sources = itertools.chain((ROOT / "server").rglob("*.py"), (ROOT / "clients" / "revsearch").glob("*.py"),
                              (ROOT / "scripts").glob("*.py"))
    names = set()
    for path in sources:
        names.update(re.findall(r"\bREVSEARCH_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    return sorted(names)


def cli_commands() -> dict[str, list[str]]:
    """Each `revsearch` command and its --options."""
    from revsearch.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: long_options(parser) for name, parser in sub.choices.items()}


def cli_global_options() -> list[str]:
    from revsearch.cli import build_parser

    return long_options(build_parser())


def service_rpcs(proto_text: str) -> list[str]:
    service = re.search(r"^service\s+SearchService\s*\{(.*?)^\}", proto_text, re.S | re.M)
    assert service, "no `service SearchService` in the proto"
    return re.findall(r"^\s*rpc\s+(\w+)\s*\(", service.group(1), re.M)


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {t for line in re.findall(r"^([\w.-][\w. -]*):(?!=)", text, re.M) for t in line.split()}


@lru_cache(maxsize=1)
def repository_files() -> tuple[str, ...]:
    """The files a commit would hold: tracked, or new and not ignored (git); else every file but the
    usual ignored ones."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        files = [f for f in out.splitlines() if (ROOT / f).exists()]
        if files:
            return tuple(files)
    except (OSError, subprocess.SubprocessError):
        pass
    skip = {".git", ".venv", "data", "__pycache__", ".pytest_cache"}
    return tuple(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts))


# -- the checkers ----------------------------------------------------------------------------------------

def missing_names(names, text: str) -> list[str]:
    """The names that do not occur in text as a whole word (`--tls` is not found in `--tls-ca`)."""
    return [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


def section(text: str, title_pattern: str) -> str:
    """The text under every heading matching title_pattern, up to the next heading."""
    parts, keep = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            keep = re.search(title_pattern, line) is not None
        elif keep:
            parts.append(line)
    return "\n".join(parts)


def code_spans(text: str) -> list[str]:
    """Inline `code` and the lines of fenced code blocks."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M))
    return inline + [line for block in fenced for line in block.splitlines()]


def _expand(path: str) -> list[str]:
    """`a.{json,md}` -> both; `<model>` -> a wildcard."""
    path = re.sub(r"<[^<>/]+>", "*", path)
    braces = re.search(r"\{([^{}]+)\}", path)
    if not braces:
        return [path]
    return [p for alt in braces.group(1).split(",")
            for p in _expand(path[:braces.start()] + alt + path[braces.end():])]


def _exists(pattern: str, files: tuple[str, ...], partial: bool) -> bool:
    pattern = pattern.rstrip("/")
    for f in files:
        candidates = [f] + ([f"/{f}"] if partial else [])
        dirs = ["/".join(f.split("/")[:i]) for i in range(1, f.count("/") + 1)]
        for name in candidates + dirs:
            if fnmatch.fnmatchcase(name, pattern) or (partial and fnmatch.fnmatchcase(name, f"*/{pattern}")):
                return True
    return False


def missing_paths(doc: Path, text: str, files: tuple[str, ...] | None = None) -> list[str]:
    """Repository paths the text names (backticked, or as relative links) that do not exist."""
    files = repository_files() if files is None else files
    # A backticked path starting with a folder at the top of the repository, or naming a file there, must exist.
    top_dirs = {f.split("/")[0] for f in files if "/" in f}
    top_files = {f for f in files if "/" not in f}
    missing = []
    for token in re.findall(r"`([^`\n]+)`", text):
        if (" " in token or "://" in token or token.startswith(("~", "/", "$", "../", "./", "-"))
                or any(fnmatch.fnmatchcase(token.rstrip("/"), g) for g in NOT_IN_A_CLONE)):
            continue
        if token in top_files:
            checks = [(token, False)]
        elif "/" in token and token.split("/")[0] in top_dirs:
            checks = [(p, False) for p in _expand(token)]
        elif "/" in token and token.endswith(PARTIAL_PATH_SUFFIXES):
            checks = [(p, True) for p in _expand(token)]  # e.g. faces/onnx_mtcnn.py: the end of a real path
        else:
            continue
        if not all(_exists(p, files, partial) for p, partial in checks):
            missing.append(f"{doc.name}: `{token}`")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        try:
            rel = path.relative_to(ROOT)
        except ValueError:
            missing.append(f"{doc.name}: link ({target}) leaves the repository")
            continue
        if not _exists(str(rel), files, partial=False):
            missing.append(f"{doc.name}: link ({target})")
    return missing


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (and explicit <a id=...>)."""
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_anchors(doc: Path, text: str) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        page, anchor = target.split("#", 1)
        page_path = doc if not page else (doc.parent / page)
        if page_path.suffix == ".md" and page_path.exists() and anchor not in heading_anchors(
                page_path.read_text(encoding="utf-8")):
            broken.append(f"{doc.name}: ({target})")
    return broken


# -- the docs ----------------------------------------------------------------------------------------------

def test_every_server_flag_is_documented():
    assert missing_names(server_flags(), CONFIGURATION.read_text(encoding="utf-8")) == []


def test_every_variable_the_server_config_reads_is_documented():
    assert missing_names(server_variables(), CONFIGURATION.read_text(encoding="utf-8")) == []


def test_every_revsearch_variable_in_the_code_is_documented():
    names = variables_in_code()
    assert "REVSEARCH_SERVER" in names and "REVSEARCH_API_KEY" in names
    assert missing_names(names, CONFIGURATION.read_text(encoding="utf-8")) == []


def test_every_cli_command_has_a_section_naming_all_its_options():
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = []
    for command, options in cli_commands().items():
        body = section(text, rf"`revsearch {re.escape(command)}`")
        if not body.strip():
            missing.append(f"revsearch {command}: no section")
        missing += [f"revsearch {command} {o}" for o in missing_names(options, body)]
    assert missing == []


def test_every_global_cli_option_is_documented():
    body = section(CONFIGURATION.read_text(encoding="utf-8"), r"Global options")
    assert missing_names(cli_global_options(), body) == []


def test_every_rpc_of_the_service_is_in_the_api_page():
    rpcs = service_rpcs(PROTO.read_text(encoding="utf-8"))
    assert len(rpcs) >= 16
    assert missing_names(rpcs, API.read_text(encoding="utf-8")) == []


def test_every_path_the_readme_and_docs_name_exists():
    missing = []
    for doc in doc_files():
        missing += missing_paths(doc, doc.read_text(encoding="utf-8"))
    assert missing == []


def test_every_link_to_a_section_finds_its_heading():
    broken = []
    for doc in doc_files():
        broken += broken_anchors(doc, doc.read_text(encoding="utf-8"))
    assert broken == []


def test_every_make_target_the_docs_name_is_in_the_makefile():
    targets = make_targets()
    named = set()
    for doc in doc_files():
        for span in code_spans(doc.read_text(encoding="utf-8")):
            named.update(re.findall(r"(?:^|[\s;&(|])make\s+([a-z][\w-]*)", span))
    assert {"serve", "test"} <= named
    assert sorted(named - targets) == []


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_the_readme_picture_is_committed_and_small():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    assert pictures, "the README shows no picture"
    for picture in pictures:
        path = ROOT / picture
        assert path.is_file(), picture
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{picture} is not a PNG"
        assert path.stat().st_size <= PICTURE_MAX_BYTES, f"{picture}: {path.stat().st_size} bytes"


def test_the_readme_gives_the_two_commands_and_says_what_each_install_gives():
    text = README.read_text(encoding="utf-8")
    for needed in ("make serve", "make test", "pip install .", 'pip install ".[server]"'):
        assert needed in text, needed


# -- the checkers find what is missing ---------------------------------------------------------------------

def test_the_name_checker_finds_a_flag_missing_from_a_doc():
    doc = "| `--host` | bind address |\n| `--tls-ca` | a CA |"
    assert missing_names(["--host", "--port", "--tls"], doc) == ["--port", "--tls"]
    assert missing_names(["REVSEARCH_TLS"], "REVSEARCH_TLS_CA only") == ["REVSEARCH_TLS"]


def test_the_flag_check_fails_on_a_configuration_page_without_one_flag():
    text = CONFIGURATION.read_text(encoding="utf-8")
    without = re.sub(r"(?<![\w-])--milvus-search-ef(?![\w-])", "", text)
    assert missing_names(server_flags(), without) == ["--milvus-search-ef"]


def test_the_section_checker_reads_only_its_own_command():
    doc = "### `revsearch index`\n\n`--collection`, `--model`\n\n### `revsearch index-videos`\n\n`--frames`\n"
    assert missing_names(["--collection", "--frames"], section(doc, r"`revsearch index`")) == ["--frames"]
    assert section(doc, r"`revsearch drop`") == ""


def test_the_path_checker_finds_a_file_that_does_not_exist():
    files = ("server/revsearch_server/filters.py", "benchmarks/results/scale.md", "docs/items.md",
             "server/revsearch_server/faces/onnx_mtcnn.py")
    doc = DOCS / "example.md"
    text = ("`server/revsearch_server/filters.py`, `server/revsearch_server/nope.py`, "
            "`benchmarks/results/scale.{md,json}`, `faces/onnx_mtcnn.py`, `faces/gone.py`, "
            "`model_repository/resnet50/1/model.onnx`, [items](items.md), [gone](gone.md#x)")
    assert missing_paths(doc, text, files) == [
        "example.md: `server/revsearch_server/nope.py`", "example.md: `benchmarks/results/scale.{md,json}`",
        "example.md: `faces/gone.py`", "example.md: link (gone.md#x)"]


def test_the_anchor_checker_finds_a_missing_section(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The `revsearch` CLI\n\n## Known limits\n", encoding="utf-8")
    assert {"title", "the-revsearch-cli", "known-limits"} <= heading_anchors(page.read_text())
    doc = tmp_path / "doc.md"
    assert broken_anchors(doc, "[a](page.md#known-limits) [b](page.md#speed)") == ["doc.md: (page.md#speed)"]


@pytest.mark.parametrize("text, found", [("run `make serve` now", {"serve"}), ("```sh\nmake bench UNTRAINED=1\n```",
                                                                             {"bench"})])
def test_the_make_checker_reads_targets_from_code(text, found):
    named = {t for span in code_spans(text) for t in re.findall(r"(?:^|[\s;&(|])make\s+([a-z][\w-]*)", span)}
    assert named == found
    assert "nonexistent" not in make_targets() and {"serve", "test"} <= make_targets()
