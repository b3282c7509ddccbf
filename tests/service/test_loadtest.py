"""`revsearch loadtest` against an in-process server: a sweep's numbers, its files, overload counted by code."""

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from revsearch.loadtest import distinct_jpeg, knee
from tests.helpers import LFW, ServerThread, base_settings

PEOPLE = LFW / "Tony_Blair"


def revsearch(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "revsearch", "--server", address, *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("loadtest"))) as srv:
        yield srv


def test_a_search_sweep_reports_throughput_latency_and_no_errors_and_writes_json_and_png(server, tmp_path):
    proc = revsearch(server.address, "loadtest", "--workload", "search", "--images", str(PEOPLE), "--max-images", "20",
                     "--sweep", "1,2,4", "--requests", "8", "--warmup", "0", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [s["concurrency"] for s in report["steps"]] == [1, 2, 4]
    for step in report["steps"]:
        assert step["requests"] == 8 and step["errors"] == {} and step["throughput"] > 0
        assert 0 < step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"] <= step["max_ms"]
    assert report["setup"]["items"] == len(list(PEOPLE.glob("*.jpg")))  # created and seeded from --images
    assert report["knee"]["concurrency"] in (1, 2, 4)
    assert json.loads((tmp_path / "loadtest.json").read_text())["workload"] == "search"
    assert Image.open(tmp_path / "loadtest.png").size[0] > 400


def test_index_requests_are_distinct_images_so_each_adds_an_item(server, tmp_path):
    proc = revsearch(server.address, "loadtest", "--workload", "index", "--images", str(PEOPLE), "--max-images", "3",
                     "--collection", "lt_index", "--concurrency", "2", "--requests", "6", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"][0]["errors"] == {}
    info = revsearch(server.address, "collections", "--json")
    counts = {c["name"]: c["items"] for c in json.loads(info.stdout)}
    assert counts["lt_index"] == 6  # three images sent twice each, yet six new items


def test_an_overloaded_server_shows_up_as_resource_exhausted_in_the_errors(tmp_path):
    with ServerThread(base_settings(tmp_path, max_inflight_images=1)) as srv:
        proc = revsearch(srv.address, "loadtest", "--workload", "embed", "--images", str(PEOPLE), "--max-images", "8",
                         "--concurrency", "8", "--requests", "40", "--warmup", "0", "--json")
    assert proc.returncode == 1  # errors happened
    step = json.loads(proc.stdout)["steps"][0]
    assert step["errors"].get("RESOURCE_EXHAUSTED", 0) > 0 and step["requests"] == 40
    assert set(step["errors"]) == {"RESOURCE_EXHAUSTED"}


def test_the_knee_is_the_fewest_callers_within_five_percent_of_the_best_throughput():
    steps = [{"concurrency": c, "throughput": t, "p99_ms": 10.0 * c} for c, t in [(1, 10), (2, 19), (4, 29), (8, 30)]]
    assert knee(steps) == {"concurrency": 4, "throughput": 29, "p99_ms": 40.0}
    assert knee([]) is None


def test_distinct_jpeg_changes_the_bytes_but_not_the_picture():
    data = (sorted(PEOPLE.glob("*.jpg"))[0]).read_bytes()
    a, b = distinct_jpeg(data, 1), distinct_jpeg(data, 2)
    assert len({data, a, b}) == 3
    assert Image.open(io.BytesIO(a)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_model_picks_the_new_collections_model_and_a_bad_filter_is_counted_as_invalid_argument(server, tmp_path):
    proc = revsearch(server.address, "loadtest", "--workload", "search", "--images", str(PEOPLE), "--max-images", "4",
                     "--collection", "lt_model", "--model", "efficientnet_lite0", "--concurrency", "1",
                     "--requests", "3", "--warmup", "0", "--json", "--filter", 'uri != ""')
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["setup"]["model"] == "efficientnet_lite0" and report["setup"]["filter"] == 'uri != ""'
    assert report["steps"][0]["errors"] == {}
    bad = revsearch(server.address, "loadtest", "--workload", "search", "--images", str(PEOPLE), "--max-images", "4",
                    "--collection", "lt_model", "--concurrency", "1", "--requests", "3", "--warmup", "0", "--json",
                    "--filter", "uri !=")
    assert bad.returncode == 1 and json.loads(bad.stdout)["steps"][0]["errors"] == {"INVALID_ARGUMENT": 3}
