"""The exact brute-force index: correct ranking, durable segments, deletes."""

import asyncio

import numpy as np

from revsearch_server.index.base import Record
from revsearch_server.index.exact_knn import ExactKnnIndex


def _records(n: int, dim: int = 16, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [Record(id=f"id{i}", vector=vecs[i], uri=f"u{i}", sha256=f"{i:064x}", model="m", model_version="1",
                   created_at_ms=i) for i in range(n)]


def test_knn_ranks_by_cosine_like_a_full_sort(tmp_path):
    recs = _records(200)
    index = ExactKnnIndex(tmp_path, 16)
    asyncio.run(index.insert(recs))
    query = recs[7].vector[None, :]
    hits = asyncio.run(index.search(query, 10))[0]
    expected = np.argsort(-(np.stack([r.vector for r in recs]) @ query[0]))[:10]
    assert [h.id for h in hits] == [f"id{i}" for i in expected]
    assert hits[0].id == "id7" and abs(hits[0].score - 1.0) < 1e-5


def test_knn_data_and_deletes_survive_a_reload(tmp_path):
    recs = _records(50)
    index = ExactKnnIndex(tmp_path, 16)
    asyncio.run(index.insert(recs[:30]))
    asyncio.run(index.insert(recs[30:]))
    assert asyncio.run(index.delete(["id3", "missing"])) == ["id3"]
    reloaded = ExactKnnIndex(tmp_path, 16)
    assert asyncio.run(reloaded.count()) == 49
    assert "id3" not in asyncio.run(reloaded.get(["id3"]))
    assert asyncio.run(reloaded.ids_for_sha256([f"{5:064x}"])) == {f"{5:064x}": "id5"}
    assert asyncio.run(reloaded.owners([f"{5:064x}", f"{999:064x}"], ["id6", "nope"])) == ({f"{5:064x}": "id5"}, {"id6"})


def test_an_id_indexed_again_after_delete_is_visible_after_reload(tmp_path):
    recs = _records(3)
    index = ExactKnnIndex(tmp_path, 16)
    asyncio.run(index.insert(recs))
    asyncio.run(index.delete(["id1"]))
    asyncio.run(index.insert([recs[1]]))
    assert "id1" in asyncio.run(ExactKnnIndex(tmp_path, 16).get(["id1"]))


def test_an_empty_index_returns_no_hits(tmp_path):
    hits = asyncio.run(ExactKnnIndex(tmp_path, 4).search(np.ones((2, 4), np.float32) / 2, 5))
    assert hits == [[], []]
