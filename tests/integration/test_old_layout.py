"""Collections written by release 0.1.0 (stored-row layout 1) still open, search, index and delete.

The collections are written here with pymilvus exactly as 0.1.0 wrote them (settings JSON without a
layout; one JSON column `face_box` carrying {"box", "faces", "t"}), into a real Milvus Lite file,
and then served by the current server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus import MilvusClient

from revsearch.client import ImageInput
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import encode, synthetic_image, write_old_collection

DIM = 128  # face_dlib's


def _old_spec(name: str, crop_mode: str, media_type: str) -> str:
    return json.dumps({"revsearch_collection": 1, "name": name, "model": "face_dlib", "model_version": "1",
                       "dimension": DIM, "crop_mode": crop_mode, "index_kind": "milvus", "created_at_ms": 1,
                       "description": "written by 0.1.0", "model_trained": True,
                       "face_options": {"margin": 0.2, "min_face_size": 20, "min_confidence": 0.9,
                                        "whole_image_if_no_face": False, "max_faces": 16},
                       "media_type": media_type, "video_sampling": {"frames": 5, "mode": "uniform", "seed": 0}})


def _row(id_: str, vector: np.ndarray, face_json: dict, sha: str) -> dict:
    return {"id": id_, "vector": vector.tolist(), "uri": f"old://{id_}", "sha256": sha, "model": "face_dlib",
            "model_version": "1", "created_at_ms": 1, "metadata": {"from": "0.1.0"}, "face_box": face_json}


def _unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def old_server(start_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("old_layout")
    rng = np.random.default_rng(1)
    faces, frames, means = _unit(rng, 3), _unit(rng, 3), _unit(rng, 2)
    client = MilvusClient(str(data / "milvus.db"))
    box = [10.0, 20.0, 50.0, 70.0, 0.99]
    write_old_collection(client, "oldfaces", _old_spec("oldfaces", "all", "image"), DIM, 1, [
        _row("crowd~0", faces[0], {"box": box, "faces": 2}, "a" * 64),
        _row("crowd~1", faces[1], {"box": [60.0, 20.0, 90.0, 60.0, 0.95]}, "a" * 64),
        _row("solo~0", faces[2], {"box": box, "faces": 1}, "b" * 64)])
    write_old_collection(client, "oldvideos", _old_spec("oldvideos", "all", "video"), DIM, 1, [
        _row("clip~0", frames[0], {"box": box, "faces": 2, "t": 0.5}, "c" * 64),
        _row("clip~1", frames[1], {"box": box, "faces": 2, "t": 1.5}, "c" * 64),
        _row("other~0", frames[2], {"box": box, "faces": 1, "t": 2.0}, "d" * 64)])
    write_old_collection(client, "oldvideos__means", "mean vectors of videos in oldvideos", DIM, 1, [
        _row("clip", means[0], {"faces": 2}, "c" * 64), _row("other", means[1], {"faces": 1}, "d" * 64)])
    _layout2_photos(client, rng)
    client.close()
    return start_server(fakes=True, data_dir=data), faces, frames


PHOTO_DIM = 2048  # resnet50's


def _layout2_photos(client: MilvusClient, rng) -> None:
    """A whole-image resnet50 collection as the release before copy detection wrote it: stored-row
    layout 2 (face_count, timestamp_s columns; no local_features) and settings without copy_detection."""
    spec = json.dumps({"revsearch_collection": 1, "name": "oldphotos", "model": "resnet50", "model_version": "1",
                       "dimension": PHOTO_DIM, "crop_mode": "none", "index_kind": "milvus", "created_at_ms": 1,
                       "description": "written before copy detection", "model_trained": False,
                       "face_options": {"margin": 0.2, "min_face_size": 20, "min_confidence": 0.9,
                                        "whole_image_if_no_face": False, "max_faces": 16},
                       "media_type": "image", "video_sampling": {"frames": 5, "mode": "uniform", "seed": 0},
                       "layout": 2})
    vectors = rng.normal(size=(2, PHOTO_DIM)).astype(np.float32)
    write_old_collection(client, "oldphotos", spec, PHOTO_DIM, 2, [
        {"id": f"p{n}", "vector": (v / np.linalg.norm(v)).tolist(), "uri": f"old://p{n}", "sha256": f"{n:064x}",
         "model": "resnet50", "model_version": "1", "created_at_ms": 1, "metadata": {}, "face_box": {},
         "face_count": 0, "timestamp_s": -1.0} for n, v in enumerate(vectors)])


@pytest.fixture(scope="module")
def client(old_server):
    from revsearch import SearchClient

    with SearchClient(old_server[0].address, timeout=60) as c:
        yield c


def test_an_old_face_collection_is_listed_described_and_searched_with_its_face_boxes(client, old_server):
    _, faces, _ = old_server
    assert {c.name for c in client.list_collections()} >= {"oldfaces", "oldvideos"}
    described = client.describe_collection("oldfaces")
    assert described.item_count == 3 and described.crop_mode == pb.CROP_MODE_ALL_FACES
    hits = client.search("oldfaces", vector=faces[1].tolist(), top_k=2).hits
    assert hits[0].id == "crowd" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].face_box.x_min, hits[0].face_box.y_max) == (60.0, 60.0)
    assert [h.id for h in client.search("oldfaces", item_id="solo", top_k=1).hits] == ["solo"]


def test_new_images_go_into_an_old_collection_and_deletes_remove_every_row(client):
    image = encode(synthetic_image(3), "JPEG", quality=90)
    [result] = list(client.index_images("oldfaces", [ImageInput(image=image, id="newface")]))
    assert result.status == pb.ITEM_STATUS_INDEXED and result.face_box.confidence == pytest.approx(0.99)
    assert client.search("oldfaces", image=image, top_k=1).hits[0].id == "newface"
    deleted = client.delete("oldfaces", ["crowd", "newface", "missing"])
    assert list(deleted.deleted_ids) == ["crowd", "newface"] and list(deleted.not_found_ids) == ["missing"]
    assert client.describe_collection("oldfaces").item_count == 1  # crowd's two rows and newface's one gone


def test_an_old_video_collection_finds_videos_with_their_frame_times_and_deletes_them(client):
    result = client.search_videos("oldvideos", image=encode(synthetic_image(5), "JPEG", quality=90), top_k=2,
                                  ranking="frames")
    times = {h.id: sorted(m.timestamp_s for m in h.matches) for h in result.hits}
    assert times == {"clip": [0.5, 1.5], "other": [2.0]}
    mean_ranked = client.search_videos("oldvideos", image=encode(synthetic_image(5), "JPEG", quality=90), top_k=2,
                                       ranking="mean_vector")
    assert {h.id for h in mean_ranked.hits} == {"clip", "other"}
    deleted = client.delete("oldvideos", ["clip"])
    assert list(deleted.deleted_ids) == ["clip"]
    assert client.describe_collection("oldvideos").item_count == 1


def test_a_collection_from_before_copy_detection_keeps_working_and_says_it_has_no_local_features(client):
    described = client.describe_collection("oldphotos")
    assert not described.copy_detection and "no local features" in described.copy_detection_detail
    image = encode(synthetic_image(7), "JPEG", quality=90)
    [result] = list(client.index_images("oldphotos", [ImageInput(image=image, id="newphoto")]))
    assert result.status == pb.ITEM_STATUS_INDEXED
    for switch in (None, True, False):  # asked for or not, the global vector answers
        hits = client.search("oldphotos", image=image, top_k=3, copy_detection=switch).hits
        assert hits[0].id == "newphoto" and all(h.matched_keypoints == 0 for h in hits)
    assert list(client.delete("oldphotos", ["newphoto"]).deleted_ids) == ["newphoto"]
    assert client.describe_collection("oldphotos").item_count == 2
