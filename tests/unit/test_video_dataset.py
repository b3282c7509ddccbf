"""The generated LFW video benchmark: its plan, its rendered clips and its manifest."""

import json
import re

import cv2
import numpy as np
import pytest

from revsearch.video_dataset import (ClipPlan, expected_frames, generate, load_manifest, plan, relevant_map, render,
                                     read_video, render_frames, video_codec)
from tests.helpers import LFW

pytestmark = pytest.mark.skipif(not LFW.is_dir(), reason=f"shared test data missing: LFW at {LFW}")


@pytest.fixture(scope="module")
def full_plan() -> list[ClipPlan]:
    return plan(LFW)


def photo_count(identity: str) -> int:
    return len(list((LFW / identity).glob("*.jpg")))


def read_frames(path) -> list[np.ndarray]:
    return read_video(path)[0]


def test_the_plan_is_the_same_for_a_seed_and_differs_for_another_seed(full_plan):
    assert plan(LFW) == full_plan
    other = plan(LFW, seed=1)
    assert [c.clip_id for c in other] == [c.clip_id for c in full_plan]  # same clips ...
    changed = sum(a.photos != b.photos for a, b in zip(full_plan, other))
    assert changed > len(full_plan) // 2  # ... mostly from other photos
    assert {a.seed for a in full_plan}.isdisjoint({b.seed for b in other})


def test_query_and_gallery_clips_of_an_identity_use_disjoint_photos_of_that_identity(full_plan):
    by_identity: dict[str, list[ClipPlan]] = {}
    for clip in full_plan:
        by_identity.setdefault(clip.identity, []).append(clip)
        assert all(p.startswith(f"{clip.identity}/") and (LFW / p).is_file() for p in clip.photos)
    pairs = [clips for clips in by_identity.values() if any(c.role == "query" for c in clips)]
    assert len(pairs) == 430  # identities with at least 4 photos
    for query, gallery in pairs:
        assert (query.role, gallery.role) == ("query", "gallery")
        assert len(query.photos) == len(gallery.photos) == 2
        assert set(query.photos).isdisjoint(gallery.photos)


def test_the_full_lfw_plan_has_430_queries_430_relevant_clips_and_694_distractors(full_plan):
    assert len(full_plan) == 1554
    queries = [c for c in full_plan if c.role == "query"]
    distractors = [c for c in full_plan if c.distractor]
    assert (len(queries), len(distractors)) == (430, 694)
    assert all(c.role == "gallery" and photo_count(c.identity) < 4 for c in distractors)
    assert all(photo_count(c.identity) >= 4 for c in queries)
    # one-photo identities give one-photo clips, the rest two photos per clip
    assert sum(len(c.photos) == 1 for c in full_plan) == 356


def test_every_query_has_a_relevant_gallery_clip_of_the_same_identity(full_plan):
    clips = {c.clip_id: c for c in full_plan}
    relevant = relevant_map(full_plan)
    assert set(relevant) == {c.clip_id for c in full_plan if c.role == "query"}
    for query_id, gallery_ids in relevant.items():
        assert gallery_ids and query_id not in gallery_ids
        assert all(clips[g].role == "gallery" and clips[g].identity == clips[query_id].identity for g in gallery_ids)
        assert not any(clips[g].distractor for g in gallery_ids)


def test_clip_ids_are_unique_and_safe_as_file_names(full_plan):
    ids = [c.clip_id for c in full_plan]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+__(q|g\d+|d)", i) for i in ids)


def test_a_smaller_subset_plans_the_same_clips_as_the_full_plan(full_plan):
    subset = plan(LFW, max_identities=150)
    assert (len(subset), sum(c.role == "query" for c in subset)) == (216, 66)
    assert set(subset) <= set(full_plan)


def test_more_gallery_clips_per_identity_come_from_further_disjoint_photos():
    clips = plan(LFW, max_identities=40, gallery_clips_per_identity=4, distractors=False)
    assert clips and not any(c.distractor for c in clips)
    for identity in {c.identity for c in clips}:
        own = [c for c in clips if c.identity == identity]
        photos = [p for c in own for p in c.photos]
        assert len(photos) == len(set(photos))
        assert len(own) == min(5, photo_count(identity) // 2)
    assert max(len(v) for v in relevant_map(clips).values()) == 4


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, full_plan):
    clip = full_plan[0]  # Aaron_Peirsol__q: two photos
    return clip, render(clip, LFW, tmp_path_factory.mktemp("clips"))


def test_the_codec_writes_and_reads_back_mp4v_in_mp4():
    assert video_codec() == ("mp4v", ".mp4")


def test_a_rendered_clip_reads_back_with_the_expected_frame_count_size_and_fps(rendered):
    clip, path = rendered
    assert path.name == f"{clip.clip_id}.mp4" and path.stat().st_size > 10_000
    frames = read_frames(path)
    assert abs(len(frames) - 20) <= 1 and expected_frames(clip) == 20
    assert all(f.shape == (240, 320, 3) for f in frames)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    cap.release()


def test_consecutive_frames_differ_because_the_photo_moves(rendered):
    _, path = rendered
    frames = [f.astype(np.int16) for f in read_frames(path)]
    diffs = [np.abs(a - b).mean() for a, b in zip(frames, frames[1:])]
    assert min(diffs) > 0.3  # every step moves (zoom, pan, brightness, or the cross-fade)
    assert np.abs(frames[0] - frames[9]).mean() > 2.0


def test_rendering_is_deterministic_for_a_clip(full_plan):
    clip = full_plan[5]
    a, b = list(render_frames(clip, LFW)), list(render_frames(clip, LFW))
    assert len(a) == 20 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_mtcnn_finds_a_face_at_least_60_px_wide_in_the_middle_frame_of_a_rendered_clip(rendered):
    facenet = pytest.importorskip("facenet_pytorch")
    _, path = rendered
    frames = read_frames(path)
    middle = cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_BGR2RGB)
    boxes, probs = facenet.MTCNN(keep_all=True, device="cpu", min_face_size=20).detect(middle)
    assert boxes is not None and probs.max() > 0.95
    x0, y0, x1, y1 = boxes[int(np.argmax(probs))]
    assert x1 - x0 >= 60 and 0 <= x0 and x1 <= 320 and 0 <= y0 and y1 <= 240


def test_generate_writes_the_clips_and_a_manifest_and_reuses_them_on_a_second_run(tmp_path):
    manifest = generate(LFW, tmp_path, max_identities=12, workers=2, progress=False)
    clips = plan(LFW, max_identities=12)
    assert [c["clip_id"] for c in manifest["clips"]] == [c.clip_id for c in clips]
    assert manifest["stats"]["rendered"] == len(clips) and manifest["render"]["codec"] == "mp4v"
    assert json.loads((tmp_path / "manifest.json").read_text())["relevant"] == manifest["relevant"]
    for entry in manifest["clips"]:
        folder = "queries" if entry["role"] == "query" else "gallery"
        assert entry["file"] == f"{folder}/{entry['clip_id']}.mp4" and (tmp_path / entry["file"]).is_file()
        assert entry["duration_s"] == pytest.approx(len(entry["photos"]) * 1.0)
    assert set(manifest["queries"]) == set(manifest["relevant"]) and manifest["queries"]

    stale = tmp_path / "gallery" / "Someone_Else__d.mp4"
    stale.write_bytes(b"left from another run")
    again = generate(LFW, tmp_path, max_identities=12, workers=2, progress=False)
    assert (again["stats"]["rendered"], again["stats"]["reused"]) == (0, len(clips))
    assert not stale.exists()
    loaded = load_manifest(tmp_path)
    assert loaded["complete"] and all(c["path"].endswith(c["file"]) for c in loaded["clips"])

    # Another seed moves and picks differently: nothing from the earlier run may be reused.
    reseeded = generate(LFW, tmp_path, seed=1, max_identities=12, workers=1, progress=False)
    assert (reseeded["stats"]["rendered"], reseeded["stats"]["reused"]) == (len(clips), 0)


def test_an_interrupted_run_leaves_a_manifest_that_loading_refuses(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "complete": False, "clips": []}))
    with pytest.raises(ValueError, match="incomplete"):
        load_manifest(tmp_path)
