"""Face collections through the server: MTCNN finds the face, the face model finds the person,
images without a face say so, and face options are validated."""

import grpc
import numpy as np
import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import InvalidArgumentError
from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc
from tests.helpers import LFW, ServerThread, base_settings, encode, synthetic_image

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
