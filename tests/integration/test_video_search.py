"""Video collections through the real server (managed CPU Triton, Milvus Lite): chunked uploads, face
frames, the half-clip and photo-to-clip searches, and every kind of bad video getting its status."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from revsearch.video_evaluation import cut_in_halves
from tests.helpers import LFW, VIDEO, ServerThread, base_settings, encode, synthetic_image

TALKING = [f"video-retalking_face_{n}.mp4" for n in range(1, 6)]
HAMILTON = "face_recognition_short_hamilton_clip.mp4"
CROWD = "facenet-pytorch_examples_video.mp4"
PHOTO = "face_recognition_alex-lacamoire.png"
MESSAGE_LIMIT = 1024 * 1024  # smaller than the crowd clip (2.4 MB): only a chunked upload gets it through


def write_clip(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """RGB frames to an mp4 (MPEG-4 Part 2, which this OpenCV build writes and reads)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = base_settings(tmp_path_factory.mktemp("videos"), triton_url="",
                             max_receive_message_bytes=MESSAGE_LIMIT, max_video_bytes=3 * 1024 * 1024, max_video_duration_s=10.0, max_video_width=1920,
                             max_video_height=1080)
    with ServerThread(settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(server.address, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("halves")
    return {name: cut_in_halves(VIDEO / name, out) for name in TALKING}


@pytest.fixture(scope="module")
def library(client, clips):
    """Second halves of the five talking heads, the stage clip and the crowd clip, face pipeline."""
    created = client.create_collection("videos", media_type="video")
    assert created.collection.model == "face_dlib" and created.collection.crop_mode == pb.CROP_MODE_ALL_FACES
    ids = {}
    for name in TALKING:
        resp = client.index_video("videos", clips[name][1], id=Path(name).stem, metadata={"clip": name})
        assert resp.status == pb.ITEM_STATUS_INDEXED, name
        ids[name] = resp.id
    for name, vid in [(HAMILTON, "hamilton"), (CROWD, "crowd")]:
        # 256 KiB chunks of files up to 2.4 MB, through a server whose message limit is 1 MiB
        resp = client.index_video("videos", VIDEO / name, id=vid, chunk_bytes=256 * 1024)
        assert resp.status == pb.ITEM_STATUS_INDEXED, name
        ids[name] = resp
    return ids


def count(client) -> int:
    return client.describe_collection("videos").item_count


def test_indexing_reports_sampled_frames_with_their_faces_and_timestamps(library):
    hamilton = library[HAMILTON]
    assert hamilton.id == "hamilton" and abs(hamilton.duration_s - 9.18) < 0.1
    assert (hamilton.width, hamilton.height) == (640, 360)
    times = [f.timestamp_s for f in hamilton.frames]
    assert len(times) == 5 and times == sorted(times) and 0 < times[0] and times[-1] < hamilton.duration_s
    faces = sum(len(f.face_boxes) for f in hamilton.frames)
    assert faces >= 5 and hamilton.vector_count == faces + 1  # a row per face plus the mean vector


def test_a_chunked_upload_larger_than_the_message_limit_works(server, library):
    crowd = library[CROWD]
    assert (VIDEO / CROWD).stat().st_size > MESSAGE_LIMIT
    assert crowd.status == pb.ITEM_STATUS_INDEXED and (crowd.width, crowd.height) == (1920, 1080)
    assert max(len(f.face_boxes) for f in crowd.frames) >= 4  # a crowd: several faces per frame
    with grpc.insecure_channel(server.address) as channel:  # the same bytes as one message are refused
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SearchServiceStub(channel).EmbedImage(pb.EmbedImageRequest(image=(VIDEO / CROWD).read_bytes()),
                                                          timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("ranking", ["frames", "mean_vector"])
def test_the_first_half_of_a_clip_finds_its_second_half_first(client, clips, library, ranking):
    for name in TALKING:
        resp = client.search_videos("videos", clip=clips[name][0], top_k=3, ranking=ranking)
        assert resp.hits[0].id == library[name], (name, [h.id for h in resp.hits])
        assert resp.hits[0].score > resp.hits[1].score
        assert len(resp.query_frames) == 5 and all(len(f.face_boxes) == 1 for f in resp.query_frames)


def test_a_photo_finds_the_stage_clip_it_appears_in_and_says_when(client, library):
    resp = client.search_videos("videos", image=(VIDEO / PHOTO).read_bytes(), top_k=3)
    top = resp.hits[0]
    assert top.id == "hamilton" and top.uri.endswith(HAMILTON)
    assert top.score > 0.8 and top.score > resp.hits[1].score
    assert 1 <= len(top.matches) <= 3 and all(0 <= m.timestamp_s <= 9.2 for m in top.matches)
    assert top.matches[0].score == pytest.approx(top.score, abs=1e-4)
    assert top.matches[0].face_box.x_max > top.matches[0].face_box.x_min  # where in the frame


def test_re_uploading_a_video_is_a_duplicate_and_deleting_it_removes_all_its_vectors(client, clips, library):
    again = client.index_video("videos", clips[TALKING[0]][1])
    assert again.status == pb.ITEM_STATUS_DUPLICATE and again.id == library[TALKING[0]]
    assert again.duration_s > 1.0 and again.width > 0 and again.height > 0  # still describes the clip
    assert again.vector_count == 0 and len(again.frames) == 0  # nothing new was stored
    before = count(client)
    extra = client.index_video("videos", clips[TALKING[0]][0], id="extra")
    assert count(client) == before + extra.vector_count - 1  # item_count counts rows, not the mean
    assert list(client.delete("videos", ["extra"]).deleted_ids) == ["extra"]
    assert count(client) == before
    hits = client.search_videos("videos", clip=clips[TALKING[0]][0], top_k=10, ranking="mean_vector").hits
    assert "extra" not in {h.id for h in hits}


def _bad_uploads(tmp: Path) -> dict[str, tuple[bytes | Path, type, str]]:
    long_clip = write_clip(tmp / "long.mp4", [np.full((48, 64, 3), i % 255, np.uint8) for i in range(11 * 5)], 5.0)
    wide_clip = write_clip(tmp / "wide.mp4", [np.zeros((1088, 2000, 3), np.uint8)] * 2, 5.0)
    crowd = (VIDEO / CROWD).read_bytes()
    return {
        "an image": (encode(synthetic_image(1), "PNG"), InvalidArgumentError, "video"),
        "random bytes": (np.random.default_rng(0).bytes(50_000), InvalidArgumentError, "video"),
        "a truncated mp4": (crowd[: len(crowd) * 3 // 10], InvalidArgumentError, "truncated"),
        "an over-long clip": (long_clip, ResourceExhaustedError, "10"),
        "an over-wide clip": (wide_clip, ResourceExhaustedError, "2000"),
        "an over-size upload": (crowd + crowd, ResourceExhaustedError, "max-video-bytes"),
    }


def test_bad_videos_get_a_clear_status_and_store_nothing(client, library, tmp_path):
    before = count(client)
    for what, (video, error, text) in _bad_uploads(tmp_path).items():
        with pytest.raises(error) as info:
            client.index_video("videos", video)
        assert text in str(info.value), (what, str(info.value))
    with pytest.raises(ResourceExhaustedError, match="frames"):
        client.index_video("videos", VIDEO / TALKING[0], frames=65)
    assert count(client) == before
    assert client.search_videos("videos", image=(VIDEO / PHOTO).read_bytes(), top_k=1).hits[0].id == "hamilton"


def test_wrong_collections_and_missing_headers_are_invalid(client, library, server):
    with pytest.raises(NotFoundError):
        client.index_video("no_such_videos", VIDEO / TALKING[0])
    client.create_collection("stills", model="face_dlib", crop_mode="largest")
    with pytest.raises(InvalidArgumentError, match="holds images"):
        client.index_video("stills", VIDEO / TALKING[0])
    with pytest.raises(InvalidArgumentError, match="holds videos"):
        list(client.index_images("videos", [ImageInput.from_path(sorted((LFW / "Tony_Blair").glob("*.jpg"))[0])]))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.IndexVideo(iter([pb.IndexVideoRequest(chunk=b"abc")]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in info.value.details()
    with pytest.raises(InvalidArgumentError, match="no face"):
        client.search_videos("videos", image=encode(synthetic_image(3)))


def test_a_cancelled_upload_stores_nothing_and_the_server_keeps_serving(client, library, server):
    before = count(client)
    data = (VIDEO / TALKING[1]).read_bytes()
    sent_half = threading.Event()
    release = threading.Event()

    def requests():
        yield pb.IndexVideoRequest(header=pb.VideoHeader(collection="videos", id="cancelled"))
        yield pb.IndexVideoRequest(chunk=data[: len(data) // 2])
        sent_half.set()
        release.wait(30)  # the rest never comes: the client cancels first
        yield pb.IndexVideoRequest(chunk=data[len(data) // 2:])

    with grpc.insecure_channel(server.address) as channel:
        future = pb_grpc.SearchServiceStub(channel).IndexVideo.future(requests(), timeout=60)
        assert sent_half.wait(30)
        future.cancel()
        release.set()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
    assert count(client) == before
    assert client.search_videos("videos", image=(VIDEO / PHOTO).read_bytes(), top_k=1).hits[0].id == "hamilton"
