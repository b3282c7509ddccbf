"""The `revsearch` command against an in-process server: index, search (table, JSON, PNG), info."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ServerThread, base_settings, lfw_images


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("cli"))) as srv:
        yield srv


def revsearch(server, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "revsearch", "--server", server.address, *args],
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"revsearch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for f in lfw_images(10):
        (root / f.parent.name).mkdir(exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image and not a .jpg: skipped by --ext")
    return root


def test_index_reports_counts_and_the_reason_of_each_failure(server, folder):
    proc = revsearch(server, "index", str(folder), "--collection", "cli_photos", "--recursive", "--json",
                     "--quiet", check=False)
    assert proc.returncode == 1  # one file failed
    counts = json.loads(proc.stdout)
    assert (counts["indexed"], counts["duplicate"], counts["failed"]) == (10, 0, 1)
    assert counts["failures"][0]["uri"].endswith("broken.jpg")
    assert "INVALID_ARGUMENT" in counts["failures"][0]["reason"]
    assert "UNTRAINED" in proc.stderr
    again = json.loads(revsearch(server, "index", str(folder), "--collection", "cli_photos", "-r", "--json",
                                 "-q", "--ext", "jpg", check=False).stdout)
    assert (again["indexed"], again["duplicate"]) == (0, 10)


def test_search_prints_json_hits_and_writes_a_contact_sheet(server, folder, tmp_path):
    query = sorted(folder.rglob("*_0001.jpg"))[0]
    sheet = tmp_path / "grid.png"
    proc = revsearch(server, "search", str(query), "--collection", "cli_photos", "--top-k", "5", "--json",
                     "--out", str(sheet))
    result = json.loads(proc.stdout)
    assert result["hits"][0]["uri"] == str(query.resolve()) and result["hits"][0]["score"] >= 0.99
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    assert result["model_trained"] is False and result["inference_backend"] == "onnxruntime-local"
    assert "UNTRAINED" in proc.stderr
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.width > 800


def test_search_table_and_info_show_the_backend_and_the_untrained_model(server, folder):
    query = sorted(folder.rglob("*.jpg"))[1]
    table = revsearch(server, "search", str(query), "--collection", "cli_photos", "--top-k", "3").stdout
    assert "onnxruntime-local" in table and query.name in table
    info = json.loads(revsearch(server, "info", "--json").stdout)
    assert info["inferenceBackend"] == "INFERENCE_BACKEND_ONNXRUNTIME_LOCAL"
    assert {m["name"]: (m.get("trained", False), m["precision"]) for m in info["models"]} == {
        "resnet50": (False, "fp32"), "face_dlib": (True, "fp32"), "resnet50_int8": (False, "int8"),
        "face_dlib_int8": (True, "int8"), "efficientnet_lite0": (True, "fp32"),
        "efficientnet_lite0_int8": (True, "int8")}
    table = revsearch(server, "info").stdout
    assert "UNTRAINED" in table and "int8" in table and "fp32" in table
    assert "cli_photos" in revsearch(server, "collections").stdout


def test_errors_are_one_readable_line_with_the_status(server, folder):
    proc = revsearch(server, "search", str(next(folder.rglob("*.jpg"))), "--collection", "missing", check=False)
    assert proc.returncode == 3
    assert "NOT_FOUND" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_ls_update_get_search_filter_and_delete_work_on_the_indexed_items(server, folder):
    listed = [json.loads(line) for line in revsearch(server, "ls", "--collection", "cli_photos", "--json",
                                                     "--page-size", "3").stdout.splitlines()]
    assert len(listed) == 10 and [d["id"] for d in listed] == sorted(d["id"] for d in listed)
    first = listed[0]
    updated = json.loads(revsearch(server, "update", first["id"], "--collection", "cli_photos", "--set", "person=ann",
                                   "--set", "year=2019", "--set", "album.name=trip", "--json").stdout)
    assert updated["results"][0]["status"] == "updated"
    assert updated["results"][0]["image"]["metadata"] == {"person": "ann", "year": 2019, "album": {"name": "trip"}}
    got = json.loads(revsearch(server, "get", first["id"], "--collection", "cli_photos", "--json").stdout)
    assert got["images"][0]["metadata"]["album"] == {"name": "trip"} and got["images"][0]["uri"] == first["uri"]
    query = Path(first["uri"])
    hits = json.loads(revsearch(server, "search", str(query), "--collection", "cli_photos", "--json",
                                "--filter", 'metadata.year >= 2019 AND metadata.album.name = "trip"').stdout)["hits"]
    assert [h["id"] for h in hits] == [first["id"]]
    assert revsearch(server, "ls", "--collection", "cli_photos", "--filter", 'metadata.person = "ann"', "--json"
                     ).stdout.count("\n") == 1
    revsearch(server, "update", first["id"], "--collection", "cli_photos", "--unset", "person", "--unset", "album")
    got = json.loads(revsearch(server, "get", first["id"], "--collection", "cli_photos", "--json").stdout)
    assert got["images"][0]["metadata"] == {"year": 2019}
    bad = revsearch(server, "search", str(query), "--collection", "cli_photos", "--filter", "metadata.year >=",
                    check=False)
    assert bad.returncode == 3 and "INVALID_ARGUMENT" in bad.stderr and "Traceback" not in bad.stderr
    gone = revsearch(server, "delete", first["id"], "nothing", "--collection", "cli_photos", "--json", check=False)
    assert gone.returncode == 1 and json.loads(gone.stdout) == {"deleted_ids": [first["id"]], "not_found_ids": ["nothing"]}
    missing = revsearch(server, "get", first["id"], "--collection", "cli_photos", "--json", check=False)
    assert missing.returncode == 1 and json.loads(missing.stdout)["not_found_ids"] == [first["id"]]


def test_embed_prints_the_vector_as_json(server, folder):
    result = json.loads(revsearch(server, "embed", str(next(folder.rglob("*_0001.jpg"))), "--model",
                                  "efficientnet_lite0").stdout)
    assert result["model"] == "efficientnet_lite0" and result["dimension"] == len(result["vector"]) == 1280
    assert abs(sum(v * v for v in result["vector"]) - 1.0) < 1e-3
