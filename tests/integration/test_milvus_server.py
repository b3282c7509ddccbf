"""The same server against a real Milvus server (embedded Milvus 2.3 standalone) instead of Lite:
acknowledged inserts are searchable at once (Session consistency), deletes and duplicates behave
as on Lite, and a revsearch restart keeps the data."""

import subprocess
import sys
import time

import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import NotFoundError
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import ServerThread, base_settings, free_port, lfw_images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    base = tmp_path_factory.mktemp("milvus-server")
    proc = subprocess.Popen([sys.executable, "-m", "revsearch.chaos", "milvus-server", str(base), str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    port = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY"):
            port = int(line.split()[1])
            break
    if port is None:
        proc.kill()
        pytest.fail(f"embedded Milvus server did not start (rc={proc.poll()})")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_index_search_delete_and_restart_against_a_milvus_server(tmp_path, milvus_uri):
    files = lfw_images(24)
    settings = base_settings(tmp_path, milvus_uri=milvus_uri)
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=120) as client:
        assert client.info().vector_store == f"milvus:{milvus_uri}"
        client.create_collection("remote")
        results = list(client.index_images("remote", [ImageInput.from_path(f) for f in files]))
        assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * len(files)
        # Searchable as soon as acknowledged, without Strong consistency.
        for i in (0, 11, 23):
            hit = client.search("remote", image=files[i].read_bytes(), top_k=3).hits[0]
            assert hit.id == results[i].id and hit.score >= 0.99
        again = list(client.index_images("remote", [ImageInput.from_path(files[4])]))
        assert again[0].status == pb.ITEM_STATUS_DUPLICATE and again[0].id == results[4].id
        assert list(client.delete("remote", [results[7].id]).deleted_ids) == [results[7].id]
        assert client.search("remote", image=files[7].read_bytes(), top_k=1).hits[0].id != results[7].id
        assert client.describe_collection("remote").item_count == len(files) - 1
    # Two server processes on one Milvus share the catalog; a drop by one is a NOT_FOUND for the other.
    other = base_settings(tmp_path / "other", milvus_uri=milvus_uri)
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=120) as client, \
            ServerThread(other) as srv2, SearchClient(srv2.address, timeout=120) as client2:
        assert [c.name for c in client.list_collections()] == ["remote"]
        assert client.describe_collection("remote").item_count == len(files) - 1
        assert client.search("remote", image=files[11].read_bytes(), top_k=1).hits[0].id == results[11].id
        assert client2.search("remote", image=files[12].read_bytes(), top_k=1).hits[0].id == results[12].id
        client2.drop_collection("remote")
        with pytest.raises(NotFoundError):
            client.search("remote", image=files[11].read_bytes(), top_k=1)


def test_a_compact_copy_detection_collection_on_a_milvus_2_3_server_stores_float32_and_finds_copies(
        tmp_path, milvus_uri):
    """Milvus 2.3 has no FLOAT16_VECTOR: the compact collection keeps its 128-d vectors as float32
    there (and says so), and copy detection works the same."""
    from pathlib import Path

    from revsearch.copy_edits import edited_bytes
    from revsearch_server.models import BUILD_INFO

    root = Path(__file__).resolve().parents[2]
    if not (root / "model_repository" / "efficientnet_lite0" / BUILD_INFO).is_file():
        pytest.skip("efficientnet_lite0 is not built (make models)")
    photos = sorted((root.parent / "shared" / "data" / "photos").glob("*.jpg"))[::25][:8]
    settings = base_settings(tmp_path, milvus_uri=milvus_uri)
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=120) as client:
        created = client.create_collection("remote_copies", model="efficientnet_lite0").collection
        assert created.copy_detection and created.dimension == 128 and "float32" in created.copy_detection_detail
        ids = [r.id for r in client.index_images("remote_copies", [ImageInput.from_path(p) for p in photos])]
        for n in (1, 6):
            hit = client.search("remote_copies", image=edited_bytes(photos[n].read_bytes(), "crop50"), top_k=3).hits[0]
            assert hit.id == ids[n] and hit.uri == str(photos[n])
        client.drop_collection("remote_copies")
