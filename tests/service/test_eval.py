"""`revsearch eval` through an in-process server on an LFW subset: metrics per pipeline and the report files."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from revsearch.evaluation import scan_dataset
from tests.helpers import LFW, ServerThread, base_settings

MAX_IDENTITIES = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("eval"))) as srv:
        yield srv


def test_eval_reports_metrics_per_pipeline_and_writes_the_report(server, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "revsearch", "--server", server.address, "eval", str(LFW), "--max-identities",
         str(MAX_IDENTITIES), "--pipelines", "baseline,resnet50-milvus,face", "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {p["pipeline"]: p for p in report["pipelines"]}

    images = scan_dataset(LFW, MAX_IDENTITIES)
    counts = Counter(label for _, label in images)
    expected_queries = sum(c for c in counts.values() if c >= 2)
    baseline, milvus = by_name["baseline"], by_name["resnet50-milvus"]
    assert baseline["queries"] == milvus["queries"] == expected_queries
    assert baseline["indexed"] == len(images) and baseline["model_trained"] is False
    for key in ("p_at_1", "map_at_20", "r_at_20", "hit_at_5"):
        assert 0.0 <= baseline[key] <= 1.0
        # Exact KNN and Milvus (FLAT on Lite) rank the same vectors the same way.
        assert baseline[key] == pytest.approx(milvus[key], abs=1e-6)
    assert baseline["hit_at_5"] >= baseline["p_at_1"]
    # The face pipeline (MTCNN, aligned chips, dlib's real weights) finds the person; the untrained
    # whole-image ResNet50 does not.
    face = by_name["face"]
    assert face["model_trained"] is True and face["queries"] == expected_queries and face["no_face"] == 0
    assert face["p_at_1"] >= 0.9 and face["map_at_20"] >= 0.8
    assert face["p_at_1"] > baseline["p_at_1"] + 0.3

    assert {"report.json", "report.md", "metrics.png"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("baseline-bad-") for p in out.iterdir())
    assert "| baseline | resnet50 (UNTRAINED) |" in (out / "report.md").read_text()
    assert "untrained" in proc.stderr.lower()
