"""The same server against a real Milvus server (embedded Milvus 2.3 standalone) instead of Lite:
acknowledged inserts are searchable at once (Session consistency), deletes and duplicates behave
as on Lite, and a revsearch restart keeps the data."""

import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import NotFoundError
from revsearch.v1 import search_service_pb2 as pb
from revsearch_testkit.chaos import start_embedded_milvus, stop_embedded_milvus
from tests.helpers import ServerThread, base_settings, lfw_images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    try:
        proc, uri = start_embedded_milvus(tmp_path_factory.mktemp("milvus-server"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield uri
    stop_embedded_milvus(proc)


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


def test_each_vector_index_type_reaches_the_milvus_server_with_its_parameters_and_finds_imported_vectors(
        tmp_path, milvus_uri):
    """HNSW, IVF_SQ8, IVF_FLAT, DISKANN and FLAT as asked: Milvus's own description of the index has the
    parameters; imported vectors are found (also after a flush seals and indexes them); a request's breadth
    out of the index's range is INVALID_ARGUMENT."""
    import numpy as np
    from pymilvus import MilvusClient

    from revsearch.client import VectorInput
    from revsearch.errors import InvalidArgumentError

    asked = {"idx_hnsw": {"type": "hnsw", "hnsw_m": 8, "hnsw_ef_construction": 64, "search_breadth": 32},
             "idx_ivf_sq8": {"type": "ivf_sq8", "ivf_nlist": 16, "search_breadth": 16},
             "idx_ivf_flat": {"type": "ivf_flat", "ivf_nlist": 16},
             "idx_diskann": {"type": "diskann"}, "idx_flat": {"type": "flat"}}
    expected = {"idx_hnsw": ("HNSW", {"M": "8", "efConstruction": "64"}), "idx_ivf_sq8": ("IVF_SQ8", {"nlist": "16"}),
                "idx_ivf_flat": ("IVF_FLAT", {"nlist": "16"}), "idx_diskann": ("DISKANN", {}), "idx_flat": ("FLAT", {})}
    vectors = np.random.default_rng(4).standard_normal((3000, 2048)).astype(np.float32)
    items = [VectorInput(id=f"i{n}", vector=v) for n, v in enumerate(vectors)]
    milvus = MilvusClient(milvus_uri)
    settings = base_settings(tmp_path, milvus_uri=milvus_uri)
    with ServerThread(settings) as srv, SearchClient(srv.address, timeout=120) as client:
        info = client.info()
        assert list(info.vector_index_types) == [pb.VECTOR_INDEX_TYPE_FLAT, pb.VECTOR_INDEX_TYPE_HNSW,
                                                 pb.VECTOR_INDEX_TYPE_IVF_FLAT, pb.VECTOR_INDEX_TYPE_IVF_SQ8,
                                                 pb.VECTOR_INDEX_TYPE_DISKANN]
        assert info.default_vector_index == pb.VECTOR_INDEX_TYPE_HNSW
        default = client.create_collection("idx_default").collection
        assert default.vector_index.type == pb.VECTOR_INDEX_TYPE_HNSW and default.vector_index.hnsw_m == 16
        assert default.vector_index_detail == "HNSW (M 16, efConstruction 200), searched with ef 128"
        for name, options in asked.items():
            coll = client.create_collection(name, vector_index=options).collection
            index_type, params = expected[name]
            described = milvus.describe_index(f"revsearch_{name}", "vector")
            assert described["index_type"] == index_type and described["metric_type"] == "COSINE"
            assert {k: described[k] for k in params} == params
            assert coll.vector_index_detail.startswith(index_type)
            resp = client.import_vectors(name, items, model=coll.model, model_version=coll.model_version)
            assert resp.imported == 3000
            assert client.search(name, vector=vectors[2999], top_k=3).hits[0].id == "i2999"
            milvus.flush(f"revsearch_{name}")
            found = client.batch_search(name, [vectors[n] for n in (0, 1500, 2999)], top_k=5)
            assert [r.hits[0].id for r in found.results] == ["i0", "i1500", "i2999"]
        assert client.search("idx_hnsw", vector=vectors[5], top_k=10, search_breadth=200).hits[0].id == "i5"
        with pytest.raises(InvalidArgumentError, match="at most its nlist 16"):
            client.search("idx_ivf_sq8", vector=vectors[5], search_breadth=17)
        with pytest.raises(InvalidArgumentError, match="ef of this HNSW index"):
            client.search("idx_hnsw", vector=vectors[5], search_breadth=40000)
        with pytest.raises(InvalidArgumentError, match="does not apply to a DISKANN index"):
            client.create_collection("idx_bad", vector_index={"type": "diskann", "hnsw_m": 8})
        for name in [*asked, "idx_default"]:
            client.drop_collection(name)
    milvus.close()


def test_two_replicas_over_one_milvus_server_see_each_others_writes_deletes_and_drops(tmp_path, milvus_uri):
    """What users of several replicas rely on: each reads its own writes; the same images indexed through
    both at once are stored once; a delete through one and a drop and re-creation through one are seen
    by the other."""
    from concurrent.futures import ThreadPoolExecutor

    files = lfw_images(12)
    one, two = base_settings(tmp_path / "one", milvus_uri=milvus_uri), base_settings(tmp_path / "two",
                                                                                     milvus_uri=milvus_uri)
    with ServerThread(one) as a, ServerThread(two) as b, SearchClient(a.address, timeout=120) as ca, \
            SearchClient(b.address, timeout=120) as cb:
        ca.create_collection("replicas")
        assert cb.create_collection("replicas", exist_ok=True).created is False
        # Read-your-writes through each replica.
        first = list(ca.index_images("replicas", [ImageInput.from_path(files[0])]))[0]
        assert ca.search("replicas", image=files[0].read_bytes(), top_k=1).hits[0].id == first.id
        # The same images through both replicas at once: stored once each, under one id each.
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: list(c.index_images("replicas", [ImageInput.from_path(f)
                                                                              for f in files[1:]])), (ca, cb)))
        for r_a, r_b in zip(*results):
            assert r_a.id == r_b.id and {r_a.status, r_b.status} <= {pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE}
        assert ca.describe_collection("replicas").item_count == len(files)
        assert cb.describe_collection("replicas").item_count == len(files)
        # A delete through one replica: the other no longer finds the item.
        victim = results[0][3].id
        assert list(ca.delete("replicas", [victim]).deleted_ids) == [victim]
        assert cb.search("replicas", image=files[4].read_bytes(), top_k=1).hits[0].id != victim
        assert cb.describe_collection("replicas").item_count == len(files) - 1
        # Dropped and re-created (another model, another dimension) through one: the other follows.
        ca.drop_collection("replicas")
        with pytest.raises(NotFoundError):
            cb.search("replicas", image=files[0].read_bytes(), top_k=1)
        again = ca.create_collection("replicas", model="resnet50_int8")
        list(ca.index_images("replicas", [ImageInput.from_path(files[2])]))
        # No wait: the other replica forgot the old settings when Milvus said the collection was gone.
        hit = cb.search("replicas", image=files[2].read_bytes(), top_k=1).hits[0]
        assert cb.describe_collection("replicas").model == again.collection.model and hit.score > 0.99
        ca.drop_collection("replicas")


def test_filters_paging_and_updates_behave_on_a_milvus_server_as_on_lite(tmp_path, milvus_uri):
    """The Milvus 2.3 server evaluates the translated filters (HNSW, the server's default index), answers
    queries with a limit in primary-key order (ListImages' paging relies on it), and an upsert leaves no
    moment in which the updated item is missing from search."""
    import threading

    import numpy as np

    from revsearch.client import VectorInput, struct_to_dict

    with ServerThread(base_settings(tmp_path, milvus_uri=milvus_uri)) as srv, \
            SearchClient(srv.address, timeout=120) as client:
        c = client.create_collection("items_remote").collection
        vectors = np.random.default_rng(9).standard_normal((300, c.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        order = np.random.default_rng(1).permutation(300)  # written out of id order
        client.import_vectors("items_remote", [VectorInput(id=f"r{i:03d}", vector=vectors[i],
                                                           metadata={"tenant": f"t{i % 4}", "n": int(i)})
                                               for i in order], model=c.model, model_version=c.model_version)
        hits = client.search("items_remote", vector=vectors[5], top_k=10, filter='metadata.tenant = "t1" AND metadata.n < 150').hits
        keep = [i for i in range(300) if i % 4 == 1 and i < 150]
        expected = [f"r{keep[j]:03d}" for j in np.argsort(-(vectors[keep] @ vectors[5]))[:10]]
        assert [h.id for h in hits] == expected
        assert [i.id for i in client.iter_images("items_remote", page_size=37)] == [f"r{i:03d}" for i in range(300)]
        assert [i.id for i in client.iter_images("items_remote", filter='metadata.tenant = "t2"', page_size=9)] == \
            [f"r{i:03d}" for i in range(2, 300, 4)]
        stop, misses = threading.Event(), []

        def search():
            while not stop.is_set():
                found = client.search("items_remote", vector=vectors[77], top_k=1).hits
                if not found or found[0].id != "r077":
                    misses.append(list(found))

        t = threading.Thread(target=search)
        t.start()
        for n in range(20):
            client.update_images("items_remote", [{"id": "r077", "metadata": {"v": n}}], ["metadata.v"])
        stop.set()
        t.join()
        assert misses == []
        assert struct_to_dict(client.get_images("items_remote", ["r077"]).images[0].metadata) == {
            "tenant": "t1", "n": 77, "v": 19}
