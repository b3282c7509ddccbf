"""Acknowledged writes survive a server restart, for Milvus Lite and the exact-KNN index."""

import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import ServerThread, base_settings, lfw_images

pytestmark = pytest.mark.integration


def test_indexed_and_deleted_items_are_as_left_after_a_restart(tmp_path):
    files = lfw_images(12)
    settings = base_settings(tmp_path)
    with ServerThread(settings) as srv, SearchClient(srv.address) as client:
        ids = {}
        for name, backend in (("kept", "milvus"), ("kept_knn", "exact_knn")):
            client.create_collection(name, index_backend=backend)
            results = list(client.index_images(name, [ImageInput.from_path(f) for f in files]))
            assert all(r.status == pb.ITEM_STATUS_INDEXED for r in results)
            client.delete(name, [results[0].id])
            ids[name] = [r.id for r in results]
    with ServerThread(settings) as srv, SearchClient(srv.address) as client:
        for name in ("kept", "kept_knn"):
            assert client.describe_collection(name).item_count == len(files) - 1
            hit = client.search(name, image=files[5].read_bytes(), top_k=1).hits[0]
            assert hit.id == ids[name][5] and hit.uri == str(files[5]) and hit.score >= 0.99
            assert client.search(name, image=files[0].read_bytes(), top_k=1).hits[0].id != ids[name][0]
            again = list(client.index_images(name, [ImageInput.from_path(files[3])]))
            assert again[0].status == pb.ITEM_STATUS_DUPLICATE
