"""`revsearch eval --videos` through an in-process server: the shared clips, the faces in the crowd and a
small generated LFW clip benchmark, both rankings side by side, and the report files."""

import json
import subprocess
import sys

import pytest

from revsearch.video_evaluation import BENCHMARKS, RANKINGS
from tests.helpers import LFW, VIDEO, ServerThread, base_settings

pytestmark = pytest.mark.skipif(not (LFW.is_dir() and VIDEO.is_dir()),
                                reason=f"shared test data missing: {LFW} or {VIDEO}")

IDENTITIES = 12  # 7 query clips, 12 gallery clips (7 relevant, 5 distractors)
LFW_P_AT_1_FLOOR = 0.8  # measured 1.0 for both rankings
CROWD_FRAMES_P_AT_1_FLOOR = 0.9  # measured 1.0 with frames (17 faces), 0.53 with mean_vector


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("video-eval"), triton_url="off")) as srv:
        yield srv


@pytest.fixture(scope="module")
def run(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video-eval-run")
    out, cache = tmp / "report", tmp / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "revsearch", "--server", server.address, "eval", str(LFW), "--videos",
         "--video-benchmarks", ",".join(BENCHMARKS), "--video-identities", str(IDENTITIES), "--video-cache",
         str(cache), "--video-dir", str(VIDEO), "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return {"report": report, "by_name": {b["benchmark"]: b for b in report["benchmarks"]}, "out": out,
            "cache": cache, "stderr": proc.stderr}


def test_both_benchmarks_report_both_rankings_with_every_metric(run):
    assert set(run["by_name"]) == set(BENCHMARKS)
    for bench in run["by_name"].values():
        assert bench["model"] == "face_dlib" and bench["model_trained"] is True
        assert set(bench["rankings"]) == set(RANKINGS)
        for ranking in bench["rankings"].values():
            for key in ("p_at_1", "map_at_10", "hit_at_5"):
                assert 0.0 <= ranking[key] <= 1.0
            assert -1.0 <= ranking["margin_min"] <= ranking["margin_mean"] <= 1.0
            assert ranking["hit_at_5"] >= ranking["p_at_1"]
            assert ranking["queries"] == bench["queries"] and ranking["queries_per_s"] > 0
            assert "per_query" not in ranking  # --json leaves the per-query lists to report_videos.json
            assert sum(ranking["inference_backends"].values()) == ranking["queries"]
        assert bench["index"]["videos_per_s"] > 0


def test_half_clips_find_their_other_half_and_the_photo_finds_the_stage_clip_by_frames(run):
    shared = run["by_name"]["shared-clips"]
    assert shared["gallery_videos"] == 7 and shared["queries"] == 6
    assert shared["index"]["indexed"] == 7 and shared["index"]["no_face"] == shared["index"]["failed"] == 0
    frames = shared["rankings"]["frames"]
    assert frames["p_at_1"] == 1.0 and frames["misses"] == []
    assert frames["no_face_queries"] == 0 and frames["failed_queries"] == 0


def test_faces_in_the_crowd_find_their_clip_by_frames_but_often_not_by_the_mean_vector(run):
    crowd = run["by_name"]["crowd-faces"]
    assert crowd["queries"] >= 10 and all(q.startswith(("stage@", "crowd@")) for q in _query_ids(run, crowd))
    # the shared-clips gallery, indexed once for both benchmarks
    assert crowd["collection"] == run["by_name"]["shared-clips"]["collection"]
    frames, mean = crowd["rankings"]["frames"], crowd["rankings"]["mean_vector"]
    assert frames["p_at_1"] >= CROWD_FRAMES_P_AT_1_FLOOR and frames["no_face_queries"] == 0
    assert frames["p_at_1"] > mean["p_at_1"] and frames["margin_mean"] > mean["margin_mean"]


def _query_ids(run, bench) -> list[str]:
    full = json.loads((run["out"] / "report_videos.json").read_text())
    report = next(b for b in full["benchmarks"] if b["benchmark"] == bench["benchmark"])
    return [q["query"] for q in report["rankings"]["frames"]["per_query"]]


def test_generated_lfw_clips_find_the_same_person_with_both_rankings(run):
    lfw = run["by_name"]["lfw-clips"]
    assert lfw["queries"] == 7 and lfw["gallery_videos"] == IDENTITIES and lfw["identities"] == IDENTITIES
    assert lfw["index"]["indexed"] == IDENTITIES
    for ranking in RANKINGS:
        assert lfw["rankings"][ranking]["p_at_1"] >= LFW_P_AT_1_FLOOR, ranking


def test_the_clips_are_rendered_into_the_cache_folder_not_the_repository(run):
    lfw = run["by_name"]["lfw-clips"]
    assert lfw["clips_dir"].startswith(str(run["cache"]))
    assert (run["cache"] / "shared-clips" / "video-retalking_face_1_a.mp4").is_file()
    assert any((run["cache"] / "crowd-faces").glob("crowd_f*.png"))


def test_the_report_files_are_written_with_a_row_per_benchmark_and_ranking(run):
    out = run["out"]
    assert {"report_videos.json", "report_videos.md", "videos.png"} <= {p.name for p in out.iterdir()}
    full = json.loads((out / "report_videos.json").read_text())
    shared = next(b for b in full["benchmarks"] if b["benchmark"] == "shared-clips")
    photo = next(q for q in shared["rankings"]["frames"]["per_query"] if q["query"] == "photo")
    assert photo["top"][0][0] == "stage" and photo["first_relevant_rank"] == 1
    table = (out / "report_videos.md").read_text()
    assert "| benchmark | ranking | P@1 | mAP@10 | Hit@5 | queries | gallery videos | index videos/s |" in table
    for bench in BENCHMARKS:
        for ranking in RANKINGS:
            assert f"| {bench} | {ranking} |" in table
    assert (out / "videos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
