"""MilvusIndex writes a few rows as row dicts and many (index.milvus.COLUMN_WRITE_ROWS or more) field
by field, pymilvus's cheaper column form: both must store the same thing. Each layout and vector
type, on Milvus Lite and on the embedded Milvus 2.3 server, reads back every field of every row
written either way, hostile strings, filter-key columns, face fields and local features of format 3
(every character 0-127) included."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from revsearch_server.copies import seven_bit_encode
from revsearch_server.domain import FaceBox
from revsearch_server.index.base import LAYOUT_FACE_COLUMNS, LAYOUT_JSON_FACE_FIELDS, LAYOUT_LOCAL_FEATURES, Record
from revsearch_server.index.milvus import COLUMN_WRITE_ROWS, MilvusStore
from revsearch_testkit.chaos import start_embedded_milvus, stop_embedded_milvus

pytestmark = pytest.mark.integration

DIM = 16
ODD = ['say "hi"', "back\\slash", "ünï", "😀", "", "line\nbreak"]
# Local features in format 3 use every character 0-127, NUL and control characters included.
SEVEN_BIT = "3:" + seven_bit_encode(bytes(range(256)) * 3)


def records(n: int, prefix: str) -> list[Record]:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Record(id=f"{prefix}{i:03d}", vector=vectors[i], uri=f"s3://b/{ODD[i % len(ODD)]}/{i}",
                   sha256=f"{i:064x}", model="m", model_version="1", created_at_ms=1_700_000_000_000 + i,
                   metadata={"tenant": f"t{i % 3}", "n": i, "tag": ODD[i % len(ODD)], "nested": {"x": [i, None]}},
                   face_box=FaceBox(i, 2, 30 + i, 40, 0.5 + i / 1000) if i % 2 else None,
                   face_count=1 + i % 4 if i % 3 else None, timestamp_s=i / 10 if i % 5 else None,
                   local_features=(f"feat{i}" if i % 4 == 1 else SEVEN_BIT + str(i)) if i % 2 else None)
            for i in range(n)]


def stored(r: Record) -> tuple:
    return (r.id, r.uri, r.sha256, r.model, r.model_version, r.created_at_ms, r.metadata, r.face_box,
            r.face_count, r.timestamp_s, r.local_features or None)


async def write_both_ways_and_read(uri: str, layout: int, float16: bool) -> None:
    pool = ThreadPoolExecutor(4)
    store = MilvusStore(uri, token="", timeout_s=60, consistency="Session", pool=pool)
    try:
        await store.start()
        name = f"forms_{layout}_{int(float16)}"
        await store.create(name, DIM, "write forms", layout=layout, float16=float16, filter_keys=("tenant", "tag"))
        index = store.index(name, DIM, layout, float16, filter_keys=("tenant", "tag"))
        few, many = records(COLUMN_WRITE_ROWS - 1, "r"), records(COLUMN_WRITE_ROWS + 6, "c")
        await index.insert(few)  # row dicts
        await index.insert(many)  # columns
        got = await index.get([r.id for r in few + many], vectors=True)
        assert len(got) == len(few) + len(many)
        for r in few + many:
            g = got[r.id]
            if layout < LAYOUT_LOCAL_FEATURES:  # no features column: nothing of them is kept
                r = replace(r, local_features=None)
            assert stored(g) == stored(r), r.id
            assert np.allclose(g.vector, r.vector, atol=2e-3 if float16 else 1e-6)
        # The filter-key columns hold the same values either way: a filter on them finds both forms.
        hits = (await index.with_filter(_tenant_is("t1")).search(few[1].vector[None, :], 200))[0]
        assert {h.id for h in hits} == {r.id for r in few + many if r.metadata["tenant"] == "t1"}
        await store.drop(name)
    finally:
        await store.close()
        pool.shutdown()


def _tenant_is(value: str):
    from revsearch_server.filters import parse_filter
    from revsearch_server.index.base import RowFilter

    return RowFilter(parse_filter(f'metadata.tenant = "{value}"'), multi_row=False)


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    proc, uri = start_embedded_milvus(tmp_path_factory.mktemp("forms-milvus-server"), timeout_s=120)
    yield uri
    stop_embedded_milvus(proc)


@pytest.mark.parametrize("layout", [LAYOUT_JSON_FACE_FIELDS, LAYOUT_FACE_COLUMNS, LAYOUT_LOCAL_FEATURES])
@pytest.mark.parametrize("float16", [False, True])
def test_row_and_column_writes_store_the_same_rows_on_milvus_lite(tmp_path, layout, float16):
    asyncio.run(write_both_ways_and_read(str(tmp_path / "lite.db"), layout, float16))


@pytest.mark.parametrize("layout", [LAYOUT_FACE_COLUMNS, LAYOUT_LOCAL_FEATURES])
def test_row_and_column_writes_store_the_same_rows_on_a_milvus_2_3_server(server_uri, layout):
    asyncio.run(write_both_ways_and_read(server_uri, layout, False))


async def write_vectors_only_and_search(uri: str, float16: bool) -> None:
    """A vectors-only collection (crop views): a key and a vector a row, both write forms, searched,
    read back and deleted like any other."""
    pool = ThreadPoolExecutor(4)
    store = MilvusStore(uri, token="", timeout_s=60, consistency="Session", pool=pool)
    try:
        await store.start()
        name = f"views_only_{int(float16)}"
        await store.create(name, DIM, "crop vectors", layout=LAYOUT_LOCAL_FEATURES, float16=float16, vectors_only=True)
        described = await store.call("describe_collection", f"revsearch_{name}")
        assert sorted(f["name"] for f in described["fields"]) == ["id", "vector"]
        index = store.index(name, DIM, LAYOUT_LOCAL_FEATURES, float16, vectors_only=True)
        few, many = records(COLUMN_WRITE_ROWS - 1, "r"), records(COLUMN_WRITE_ROWS + 6, "c")
        await index.insert(few)  # row dicts
        await index.insert(many)  # columns
        hits = (await index.search(many[3].vector[None, :], 1))[0]
        assert hits[0].id == many[3].id and hits[0].uri == "" and hits[0].metadata == {}
        got = await index.get([few[2].id, many[4].id], vectors=True)
        assert np.allclose(got[many[4].id].vector, many[4].vector, atol=2e-3 if float16 else 1e-6)
        assert await index.count() == len(few) + len(many)
        assert await index.delete([few[0].id, "absent"]) == [few[0].id]
        await store.drop(name)
    finally:
        await store.close()
        pool.shutdown()


@pytest.mark.parametrize("float16", [False, True])
def test_a_vectors_only_collection_stores_keys_and_vectors_alone_on_milvus_lite(tmp_path, float16):
    asyncio.run(write_vectors_only_and_search(str(tmp_path / "lite.db"), float16))


def test_a_vectors_only_collection_stores_keys_and_vectors_alone_on_a_milvus_2_3_server(server_uri):
    asyncio.run(write_vectors_only_and_search(server_uri, False))


@contextlib.asynccontextmanager
async def opened_store(uri: str):
    """A started MilvusStore of its own pool, closed (and its pool shut down) after."""
    pool = ThreadPoolExecutor(4)
    store = MilvusStore(uri, token="", timeout_s=60, consistency="Session", pool=pool)
    try:
        await store.start()
        yield store
    finally:
        await store.close()
        pool.shutdown()


def count_queries(store: MilvusStore) -> list[str]:
    """The filters of the queries the store makes from now on (a list that grows)."""
    queries: list[str] = []
    call = store.call

    async def counted(method: str, *args, **kwargs):
        if method == "query":
            queries.append(kwargs.get("filter", ""))
        return await call(method, *args, **kwargs)

    store.call = counted
    return queries


async def get_concurrently(uri: str) -> None:
    """Gets of a few rows each, made while one runs, go to Milvus as one query (copy detection fetches
    its candidates' rows two or three times a search), and each caller gets its own rows alone;
    a large get goes alone."""
    pool = ThreadPoolExecutor(4)
    store = MilvusStore(uri, token="", timeout_s=60, consistency="Session", pool=pool)
    try:
        await store.start()
        await store.create("joined_gets", DIM, "gets", layout=LAYOUT_LOCAL_FEATURES, float16=False)
        index = store.index("joined_gets", DIM, LAYOUT_LOCAL_FEATURES, False)
        rows = records(80, "g")
        await index.insert(rows)
        queries = count_queries(store)
        asks = [[rows[i].id, rows[(i * 7) % 80].id, f"absent{i}"] for i in range(12)]
        answers = await asyncio.gather(*(index.get(ids) for ids in asks))
        assert len(queries) < len(asks)  # joined: the first alone, the others together
        for ids, got in zip(asks, answers):
            assert sorted(got) == sorted(i for i in set(ids) if not i.startswith("absent"))
            for i, record in got.items():
                assert stored(record) == stored(next(r for r in rows if r.id == i))
        queries.clear()
        everything = await index.get([r.id for r in rows], vectors=False)  # over _JOINED_GET ids
        assert len(everything) == 80 and len(queries) == 1
        assert all(r.local_features is None and r.vector.size == 0 for r in everything.values())
        await store.drop("joined_gets")
    finally:
        await store.close()
        pool.shutdown()


def test_concurrent_gets_of_a_few_rows_are_one_query_and_each_caller_gets_its_own_on_milvus_lite(tmp_path):
    asyncio.run(get_concurrently(str(tmp_path / "lite.db")))


def test_concurrent_gets_of_a_few_rows_are_one_query_and_each_caller_gets_its_own_on_a_milvus_2_3_server(server_uri):
    asyncio.run(get_concurrently(server_uri))


async def look_up_owners_concurrently(uri: str) -> None:
    """IndexImages's check before it writes, stored digests and taken ids, is one query (joined with
    concurrent ones), and each caller gets the answer for what it asked alone: a digest stored under
    another id, an id stored with another digest, and neither."""
    async with opened_store(uri) as store:
        await store.create("owners", DIM, "owners", layout=LAYOUT_LOCAL_FEATURES, float16=False)
        index = store.index("owners", DIM, LAYOUT_LOCAL_FEATURES, False)
        rows = records(40, "o")
        await index.insert(rows)
        queries = count_queries(store)
        asks = [([rows[i].sha256, f"{1000 + i:064x}"], [rows[(i + 1) % 40].id, f"new{i}"]) for i in range(10)]
        answers = await asyncio.gather(*(index.owners(digests, ids) for digests, ids in asks))
        assert len(queries) < len(asks)
        for i, (by_digest, taken) in enumerate(answers):
            assert by_digest == {rows[i].sha256: rows[i].id}
            assert taken == {rows[(i + 1) % 40].id}
        assert await index.owners([], ["o001"]) == ({}, {"o001"})
        assert await index.owners([rows[2].sha256], []) == ({rows[2].sha256: "o002"}, set())
        await store.drop("owners")


def test_stored_digests_and_taken_ids_are_looked_up_in_one_query_on_milvus_lite(tmp_path):
    asyncio.run(look_up_owners_concurrently(str(tmp_path / "lite.db")))


def test_stored_digests_and_taken_ids_are_looked_up_in_one_query_on_a_milvus_2_3_server(server_uri):
    asyncio.run(look_up_owners_concurrently(server_uri))
