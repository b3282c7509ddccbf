"""Face collections through the server: MTCNN finds the face, the face model finds the person,
images without a face say so, and face options are validated."""

import grpc
import numpy as np
import pytest
from PIL import Image

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import InvalidArgumentError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from tests.helpers import (CROWD_CLIP, CROWD_FRAME, LFW, ServerThread, base_settings, encode, synthetic_image,
                           video_frame)

PEOPLE = ["Colin_Powell", "Vladimir_Putin", "Tony_Blair", "Venus_Williams"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(base_settings(tmp_path_factory.mktemp("faces"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(server.address, timeout=120) as c:
        yield c


def _photos(person: str, n: int):
    return sorted((LFW / person).glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def people(client):
    """Four people, three photos each indexed; a fourth photo of each kept as the query."""
    client.create_collection("faces", model="face_dlib", crop_mode="largest")
    items, queries = [], {}
    for person in PEOPLE:
        photos = _photos(person, 4)
        items += [ImageInput.from_path(p, metadata={"person": person}) for p in photos[:3]]
        queries[person] = photos[3]
    results = list(client.index_images("faces", items))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(items)
    for r in results:  # the face box lies inside the 250x250 LFW image, around its centre
        assert 0 <= r.face_box.x_min < 125 < r.face_box.x_max <= 250 and r.face_box.confidence >= 0.9
    return queries


def test_a_new_photo_of_a_person_finds_that_person_first(client, people):
    for person, query in people.items():
        resp = client.search("faces", image=query.read_bytes(), top_k=3)
        assert [h.metadata["person"] for h in resp.hits] == [person] * 3, person
        assert resp.hits[0].score > 0.8 and resp.query_face_box.confidence >= 0.9
        assert resp.hits[0].face_box.x_max > resp.hits[0].face_box.x_min


def test_an_image_without_a_face_gets_its_own_status_and_is_not_stored(client, people):
    before = client.describe_collection("faces").item_count
    [result] = list(client.index_images("faces", [ImageInput(image=encode(synthetic_image(11)), uri="noise")]))
    assert result.status == pb.ITEM_STATUS_NO_FACE and "no face" in result.error.message
    assert client.describe_collection("faces").item_count == before
    with pytest.raises(InvalidArgumentError, match="no face"):
        client.search("faces", image=encode(synthetic_image(11)))


def test_whole_image_fallback_stores_images_without_a_face(client):
    client.create_collection("faces_fallback", model="face_dlib", crop_mode="largest")
    with grpc.insecure_channel(client.target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.DropCollection(pb.DropCollectionRequest(name="faces_fallback"), timeout=30)
        created = stub.CreateCollection(pb.CreateCollectionRequest(
            name="faces_fallback", model="face_dlib", crop_mode=pb.CROP_MODE_LARGEST_FACE,
            face_options=pb.FaceOptions(whole_image_if_no_face=True, min_face_size=40)), timeout=30)
    options = created.collection.face_options
    assert options.whole_image_if_no_face and options.min_face_size == 40 and options.margin == pytest.approx(0.2)
    [result] = list(client.index_images("faces_fallback", [ImageInput(image=encode(synthetic_image(12)))]))
    assert result.status == pb.ITEM_STATUS_INDEXED and not result.HasField("face_box")


def test_face_options_out_of_range_or_without_a_face_mode_are_invalid(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        for request, text in [
            (pb.CreateCollectionRequest(name="bad1", crop_mode=pb.CROP_MODE_LARGEST_FACE,
                                        face_options=pb.FaceOptions(margin=2.0)), "margin"),
            (pb.CreateCollectionRequest(name="bad2", crop_mode=pb.CROP_MODE_LARGEST_FACE,
                                        face_options=pb.FaceOptions(min_confidence=1.5)), "min_confidence"),
            (pb.CreateCollectionRequest(name="bad3", face_options=pb.FaceOptions(min_face_size=30)), "face crop modes"),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateCollection(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in info.value.details()


def test_resnet50_on_face_crops_and_embedding_with_the_face_model(client, people):
    client.create_collection("faces_resnet", model="resnet50", crop_mode="largest")
    [result] = list(client.index_images("faces_resnet", [ImageInput.from_path(people["Tony_Blair"])]))
    assert result.status == pb.ITEM_STATUS_INDEXED and result.face_box.confidence >= 0.9
    resp = client.embed(people["Tony_Blair"].read_bytes(), model="face_dlib")
    assert len(resp.vector) == 128 and resp.model_trained
    assert abs(np.linalg.norm(resp.vector) - 1.0) < 1e-4


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _box(fb) -> tuple[float, float, float, float]:
    return fb.x_min, fb.y_min, fb.x_max, fb.y_max


@pytest.fixture(scope="module")
def crowd(client):
    """A street-crowd video frame (1920x1080) indexed with a vector per face, beside three portraits."""
    frame = Image.fromarray(video_frame(CROWD_CLIP, CROWD_FRAME))
    client.create_collection("crowd", model="face_dlib", crop_mode="all")
    portraits = [ImageInput.from_path(_photos(p, 1)[0], id=f"portrait_{n}") for n, p in enumerate(PEOPLE[:3])]
    results = list(client.index_images("crowd", [ImageInput(image=encode(frame, quality=95), id="crowd_frame"),
                                                 *portraits]))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * 4
    return frame, results[0]


def test_all_mode_stores_a_vector_for_every_face_of_a_crowd_frame(client, crowd):
    _, result = crowd
    boxes = [_box(b) for b in result.face_boxes]
    assert len(boxes) >= 5  # the frame shows seven people; MTCNN finds at least five at min size 20
    assert _box(result.face_box) == boxes[0]
    assert all(0 <= x0 < x1 <= 1920 and 0 <= y0 < y1 <= 1080 for x0, y0, x1, y1 in boxes)
    assert all(_iou(a, b) < 0.3 for i, a in enumerate(boxes) for b in boxes[i + 1:])  # distinct faces
    assert client.describe_collection("crowd").item_count == len(boxes) + 3  # one vector per face


def test_a_group_photo_is_found_by_any_of_its_people_at_that_persons_face(client, crowd):
    frame, result = crowd
    for face in list(result.face_boxes)[1:4]:  # not the most prominent face
        x0, y0, x1, y1 = _box(face)
        side = 2.5 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        query = frame.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))
        query = query.resize((250, 250), Image.BILINEAR)
        resp = client.search("crowd", image=encode(query, quality=95), top_k=4)
        assert resp.hits[0].id == "crowd_frame" and resp.hits[0].score > 0.9
        assert _iou(_box(resp.hits[0].face_box), (x0, y0, x1, y1)) > 0.8  # the hit says where the person is
        assert len({h.id for h in resp.hits}) == len(resp.hits) == 4  # each image once, not once per face


def test_deleting_a_group_photo_removes_all_its_faces_and_it_can_be_indexed_again(client, crowd):
    frame, result = crowd
    before = client.describe_collection("crowd").item_count
    resp = client.delete("crowd", ["crowd_frame", "never_stored"])
    assert list(resp.deleted_ids) == ["crowd_frame"] and list(resp.not_found_ids) == ["never_stored"]
    assert client.describe_collection("crowd").item_count == before - len(result.face_boxes)
    hits = client.search("crowd", vector=client.embed(encode(frame, quality=95), collection="crowd").vector).hits
    assert "crowd_frame" not in {h.id for h in hits}
    item = ImageInput(image=encode(frame, quality=95), id="crowd_frame")
    again, duplicate = list(client.index_images("crowd", [item])), list(client.index_images("crowd", [item]))
    assert again[0].status == pb.ITEM_STATUS_INDEXED and len(again[0].face_boxes) == len(result.face_boxes)
    assert duplicate[0].status == pb.ITEM_STATUS_DUPLICATE and duplicate[0].id == "crowd_frame"


def test_max_faces_limits_the_faces_stored_per_image(client, crowd):
    frame, _ = crowd
    client.create_collection("crowd_two", model="face_dlib", crop_mode="all", face_options={"max_faces": 2})
    [result] = list(client.index_images("crowd_two", [ImageInput(image=encode(frame, quality=95))]))
    assert len(result.face_boxes) == 2 and client.describe_collection("crowd_two").item_count == 2
    with pytest.raises(InvalidArgumentError, match="max_faces"):
        client.create_collection("crowd_bad", model="face_dlib", crop_mode="all", face_options={"max_faces": 65})
