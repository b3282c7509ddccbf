"""The `revsearch` video commands against an in-process server: index-videos of a folder (one bad file
among the clips), search with a photo on a video collection, search-video with a table, JSON and a
PNG sheet of the matching frames, and the media type in `collections`."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from revsearch import video_sheet
from tests.helpers import VIDEO, ServerThread, base_settings

HAMILTON = "face_recognition_short_hamilton_clip.mp4"
TALKING = ["video-retalking_face_1.mp4", "video-retalking_face_2.mp4"]
PHOTO = VIDEO / "face_recognition_alex-lacamoire.png"
CELL_H = video_sheet.TILE + video_sheet.LABEL + video_sheet.PAD


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("video_cli"))) as srv:
        yield srv


def revsearch(server, *args, check=True):
    env = {**os.environ, "COLUMNS": "200"}  # a wide console, so rich does not cut table cells short
    proc = subprocess.run([sys.executable, "-m", "revsearch", "--server", server.address, *args],
                          capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"revsearch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for name in [HAMILTON, *TALKING]:
        shutil.copy(VIDEO / name, root / name)
    (root / "nested").mkdir()
    shutil.move(root / TALKING[1], root / "nested" / TALKING[1])  # folders are searched recursively
    (root / "notes.mp4").write_text("a text file with a video's extension")
    (root / "readme.txt").write_text("not a video extension: not taken from the folder")
    return root


@pytest.fixture(scope="module")
def indexed(server, folder):
    """`index-videos --create --frames 3 --json` of the folder, run once for the module."""
    return revsearch(server, "index-videos", str(folder), "--collection", "clips", "--create", "--frames", "3",
                     "--json", "--quiet", check=False)


def test_index_videos_indexes_a_folder_and_reports_the_bad_file_with_exit_code_1(indexed, folder):
    assert indexed.returncode == 1, indexed.stderr
    result = json.loads(indexed.stdout)
    assert result["counts"] == {"indexed": 3, "duplicate": 0, "no_face": 0, "failed": 1}
    by_name = {os.path.basename(v["path"]): v for v in result["videos"]}
    assert sorted(by_name) == sorted([HAMILTON, *TALKING, "notes.mp4"])  # readme.txt was not taken
    bad = by_name["notes.mp4"]
    assert bad["status"] == "failed" and bad["error"]["code"] == "INVALID_ARGUMENT" and bad["error"]["message"]
    assert "notes.mp4" in indexed.stderr and "INVALID_ARGUMENT" in indexed.stderr  # the failures table
    hamilton = by_name[HAMILTON]
    assert hamilton["status"] == "indexed" and abs(hamilton["duration_s"] - 9.18) < 0.1
    assert len(hamilton["frames"]) == 3 and hamilton["faces"] >= 3 and hamilton["vector_count"] == hamilton["faces"] + 1
    assert hamilton["uri"] == str((folder / HAMILTON).resolve()) and hamilton["seconds"] > 0


def test_index_videos_again_prints_a_line_per_video_and_counts_duplicates(server, folder, indexed):
    proc = revsearch(server, "index-videos", str(folder / HAMILTON), str(folder / TALKING[0]),
                     "--collection", "clips", "--quiet")
    assert proc.returncode == 0
    assert "duplicate" in proc.stdout and HAMILTON in proc.stdout and TALKING[0] in proc.stdout
    assert "indexed 0, skipped 2 (already indexed), failed 0 into clips" in proc.stdout


def test_index_videos_into_a_missing_collection_creates_it_as_a_video_collection_like_index_does(server, folder):
    proc = revsearch(server, "index-videos", str(folder / HAMILTON), "--collection", "made_on_the_way", "--frames", "1",
                     "--json", "--quiet")
    assert json.loads(proc.stdout)["counts"]["indexed"] == 1
    assert "created video collection" in proc.stderr and "Traceback" not in proc.stderr
    listed = json.loads(revsearch(server, "collections", "--json").stdout)
    assert {c["name"]: c["media_type"] for c in listed}["made_on_the_way"] == "video"


def test_a_filtered_video_search_ranks_only_the_matching_videos_under_both_rankings(server, indexed):
    talking = [v["uri"] for v in json.loads(indexed.stdout)["videos"] if os.path.basename(v["uri"]) in TALKING]
    for ranking in ("frames", "mean_vector"):
        for text in (f"uri = {json.dumps(talking[0])}", f"uri != {json.dumps(talking[0])}"):
            proc = revsearch(server, "search", str(PHOTO), "--collection", "clips", "--top-k", "3", "--json",
                             "--filter", text) if ranking == "frames" else \
                revsearch(server, "search-video", str(VIDEO / HAMILTON), "--collection", "clips", "--top-k", "3",
                          "--json", "--ranking", ranking, "--frames", "2", "--filter", text)
            uris = [h["uri"] for h in json.loads(proc.stdout)["hits"]]
            assert (uris == [talking[0]]) if "!=" not in text else (talking[0] not in uris and len(uris) == 2)
    proc = revsearch(server, "search", str(PHOTO), "--collection", "clips", "--json", "--min-score", "0.99")
    assert all(h["score"] >= 0.99 for h in json.loads(proc.stdout)["hits"])


def test_search_with_a_photo_on_a_video_collection_ranks_the_clip_the_person_appears_in_first(server, indexed):
    proc = revsearch(server, "search", str(PHOTO), "--collection", "clips", "--top-k", "3", "--json")
    result = json.loads(proc.stdout)
    assert [os.path.basename(h["uri"]) for h in result["hits"]][0] == HAMILTON
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    assert result["model"] == "face_dlib" and result["model_trained"] is True and result["ranking"] == "frames"
    assert len(result["query_frames"]) == 1 and result["query_frames"][0]["timestamp_s"] == 0
    assert len(result["query_frames"][0]["face_boxes"]) == 1  # the face in the photo
    best = result["hits"][0]["matches"][0]
    assert 0 <= best["timestamp_s"] < 9.2 and best["query_timestamp_s"] == 0 and best["face_box"]["x_max"] > 0
    assert best["score"] == pytest.approx(result["hits"][0]["score"], abs=0.2)


def test_search_video_prints_a_table_of_hits_with_their_best_matching_frames(server, indexed):
    proc = revsearch(server, "search-video", str(VIDEO / TALKING[0]), "--collection", "clips", "--top-k", "2")
    assert TALKING[0] in proc.stdout and "t=" in proc.stdout and "ranking frames" in proc.stdout


def test_search_video_json_has_the_hits_matches_and_query_frames(server, indexed):
    proc = revsearch(server, "search-video", str(VIDEO / TALKING[0]), "--collection", "clips", "--top-k", "2",
                     "--ranking", "mean_vector", "--json")
    result = json.loads(proc.stdout)
    assert {"hits", "model", "model_trained", "ranking", "query_frames"} <= set(result)
    assert result["ranking"] == "mean_vector" and len(result["query_frames"]) == 3
    top = result["hits"][0]
    assert os.path.basename(top["uri"]) == TALKING[0] and top["score"] > 0.99  # the same file
    assert {"rank", "id", "uri", "score", "matches"} <= set(top)
    assert {"timestamp_s", "score", "query_timestamp_s", "face_box"} <= set(top["matches"][0])


def tile_at(sheet: Image.Image, row: int, column: int) -> np.ndarray:
    """The pixels of one tile of a video sheet: row 0 is the query, row 1 + n hit n's matching frames."""
    x = video_sheet.PAD + video_sheet.NAME_W + column * (video_sheet.TILE + video_sheet.PAD)
    y = video_sheet.HEADER + row * CELL_H
    return np.asarray(sheet.convert("RGB"))[y:y + video_sheet.TILE, x:x + video_sheet.TILE]


def is_placeholder(tile: np.ndarray) -> bool:
    return bool(np.all(tile == video_sheet.PLACEHOLDER, axis=-1).mean() > 0.5)


def test_search_video_out_writes_a_sheet_with_a_row_of_real_frames_per_hit(server, indexed, tmp_path):
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    clip = str(VIDEO / TALKING[0])
    revsearch(server, "search-video", clip, "--collection", "clips", "--top-k", "1", "--out", str(one))
    proc = revsearch(server, "search-video", clip, "--collection", "clips", "--top-k", "3", "--out", str(three))
    assert "contact sheet written" in proc.stderr
    with Image.open(one) as small, Image.open(three) as big:
        assert small.format == big.format == "PNG"
        assert small.height == video_sheet.HEADER + 2 * CELL_H + video_sheet.PAD  # the query row and one hit
        assert big.height - small.height == 2 * CELL_H and big.width >= 3 * video_sheet.TILE
        query = tile_at(big, 0, 0)  # the query clip's first sampled frame
        assert not is_placeholder(query) and len(np.unique(query.reshape(-1, 3), axis=0)) > 1000
        for hit in range(3):
            tile = tile_at(big, 1 + hit, 0)
            assert not is_placeholder(tile) and len(np.unique(tile.reshape(-1, 3), axis=0)) > 1000, hit
        # the hit that is the query's own file shows the very frames of the query row (but for the box colour),
        # in its own order: its frames all score 1.0 to the last bits, so which comes first is float rounding
        queries = [tile_at(big, 0, c) for c in range(3)]
        same = max(float(np.all(tile_at(big, 1, 0) == q, axis=-1).mean()) for q in queries)
        assert same > 0.8, same


def test_the_sheet_shows_a_placeholder_for_a_hit_whose_uri_is_not_a_local_file():
    hits = [{"rank": 1, "id": "remote", "uri": "https://example.com/remote.mp4", "score": 0.9,
             "matches": [{"timestamp_s": 1.0, "score": 0.9, "query_timestamp_s": 0.0, "face_box": None}]}]
    sheet = video_sheet.render(hits, "remote", query_image=PHOTO.read_bytes(),
                               query_frames=[{"timestamp_s": 0.0, "face_boxes": []}], query_name=PHOTO.name)
    assert is_placeholder(tile_at(sheet, 1, 0))
    assert not is_placeholder(tile_at(sheet, 0, 0))  # the query photo itself


def test_collections_shows_the_media_type(server, indexed):
    listed = {c["name"]: c for c in json.loads(revsearch(server, "collections", "--json").stdout)}
    assert listed["clips"]["media_type"] == "video" and listed["clips"]["model"] == "face_dlib"
    assert "video" in revsearch(server, "collections").stdout
