"""Milvus as the vector store: embedded Milvus Lite by default, or a Milvus server/cluster.

pymilvus is synchronous, so calls run in a small thread pool and each carries a deadline
(`timeout`); a failure to reach Milvus becomes errors.Unavailable, never a hang.
Searches use a configurable consistency level (Session by default: this process reads its own
acknowledged writes without paying for Strong consistency's wait on every search).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import NotFound, Unavailable
from .base import Hit, Record

log = logging.getLogger(__name__)

PREFIX = "revsearch_"
_MISSING_COLLECTION = re.compile(r"collection not found|can't find collection|CollectionNotExists", re.I)
OUTPUT_FIELDS = ["uri", "sha256", "metadata", "face_box"]
# Row keys: a 64-character item id plus "~<face>" in crop mode "all" (see rows.py).
_ID_MAX, _URI_MAX = 80, 2048


def milvus_name(name: str) -> str:
    # A prefix keeps our collections apart from others in a shared Milvus cluster.
    return PREFIX + name


def call_timeout(seconds: float) -> int:
    """A pymilvus `timeout`: whole seconds (rounded up, at least 1).

    pymilvus bounds its retries of an unreachable server (UNAVAILABLE) by `timeout` only when it
    is an int; with a float it retries 75 times with back-off up to 3 s, minutes per call, so a
    Milvus that goes away would hang every call. With an int, a call ends within about twice
    the timeout (its retries, then its last attempt)."""
    return max(1, math.ceil(seconds))


def _quote_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


class MilvusStore:
    """Owns the connection; hands out per-collection indexes."""

    def __init__(self, uri: str, token: str, timeout_s: float, consistency: str, search_ef: int = 256):
        self.uri = uri
        self._token = token
        self._timeout_s = timeout_s
        self.consistency = consistency
        # HNSW (a server's AUTOINDEX) with Milvus' default ef gave recall@20 of 0.14-0.32 on 10k-1M
        # synthetic vectors (benchmarks/results/search_scaling.md); ef 256 gave 1.0 at 2k.
        self.search_ef = search_ef
        # Milvus Lite: FLAT (exact; its AUTOINDEX drops raw vectors from growing segments, which
        # breaks fetching a stored vector). A Milvus server: AUTOINDEX (HNSW there).
        self.index_type = "FLAT" if self.is_lite else "AUTOINDEX"
        self._client = None
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="milvus")

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")

    def describe(self) -> str:
        return f"milvus-lite:{self.uri}" if self.is_lite else f"milvus:{self.uri}"

    def _connect(self):
        from pymilvus import MilvusClient

        with self._client_lock:
            if self._client is None:
                self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self._timeout_s)
            return self._client

    async def call(self, method: str, *args, **kwargs):
        """Runs client.<method> in the pool with the deadline; maps failures to Unavailable."""
        kwargs["timeout"] = call_timeout(kwargs.get("timeout", self._timeout_s))

        def run():
            return getattr(self._connect(), method)(*args, **kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except Exception as exc:  # pymilvus raises many types; all but one mean the store failed us
            if _MISSING_COLLECTION.search(str(exc)):  # dropped by another server process meanwhile
                raise NotFound(f"collection {args[0].removeprefix(PREFIX)!r} does not exist (dropped)") from exc
            log.warning("milvus %s failed: %s", method, exc)
            raise Unavailable(f"vector store {self.describe()} failed during {method}: {_short(exc)}") from exc

    async def start(self) -> None:
        await self.call("list_collections")

    async def ping(self, timeout_s: float) -> bool:
        """Whether Milvus answers a cheap call within timeout_s (the health check; logs nothing)."""
        def run():
            return self._connect().list_collections(timeout=call_timeout(timeout_s))

        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, run)
            return True
        except Exception:
            return False

    async def create(self, name: str, dimension: int, description: str) -> bool:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_MAX)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("uri", DataType.VARCHAR, max_length=_URI_MAX)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("model", DataType.VARCHAR, max_length=128)
        schema.add_field("model_version", DataType.VARCHAR, max_length=64)
        schema.add_field("created_at_ms", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("face_box", DataType.JSON)
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=self.index_type, metric_type="COSINE")
        if await self.call("has_collection", milvus_name(name)):
            return False
        await self.call("create_collection", milvus_name(name), schema=schema, index_params=index_params,
                        consistency_level=self.consistency)
        return True

    async def description(self, name: str) -> str | None:
        if not await self.call("has_collection", milvus_name(name)):
            return None
        return (await self.call("describe_collection", milvus_name(name))).get("description", "")

    async def descriptions(self) -> list[str]:
        names = [n for n in await self.call("list_collections") if n.startswith(PREFIX)]
        out = []
        for n in names:
            out.append((await self.call("describe_collection", n)).get("description", ""))
        return out

    async def drop(self, name: str) -> None:
        await self.call("drop_collection", milvus_name(name))

    def index(self, name: str, dimension: int) -> "MilvusIndex":
        return MilvusIndex(self, milvus_name(name), dimension)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._client.close)
        self._pool.shutdown(wait=False)


class MilvusIndex:
    def __init__(self, store: MilvusStore, collection: str, dimension: int):
        self._store = store
        self._c = collection
        self._dim = dimension

    @property
    def search_key(self) -> tuple:
        # The catalog makes a MilvusIndex per call; what they search is the named collection.
        return ("milvus", self._c, self._dim)

    async def insert(self, records: list[Record]) -> None:
        if not records:
            return
        rows = [{
            "id": r.id, "vector": r.vector.tolist(), "uri": r.uri, "sha256": r.sha256, "model": r.model,
            "model_version": r.model_version, "created_at_ms": r.created_at_ms, "metadata": r.metadata,
            "face_box": _face_json(r),
        } for r in records]
        try:
            # Upsert, not insert: Milvus keeps both rows of a repeated primary key, so a retried or
            # racing write of the same content-derived id must replace, not add.
            await self._store.call("upsert", self._c, data=rows)
        except Unavailable:
            # The insert may have reached Milvus before the failure: remove whatever did, so a
            # failed item is not left half-indexed. Best effort; the ids are unacknowledged.
            try:
                await self._store.call("delete", self._c, ids=[r.id for r in records])
            except Unavailable:
                log.error("could not clean up %d unacknowledged rows in %s", len(records), self._c)
            raise

    async def search(self, queries: np.ndarray, top_k: int) -> list[list[Hit]]:
        results = await self._store.call(
            "search", self._c, data=[q.tolist() for q in queries], limit=top_k,
            output_fields=OUTPUT_FIELDS, search_params=self._search_params(top_k),
            consistency_level=self._store.consistency)
        return [[_hit(h) for h in hits] for hits in results]

    def _search_params(self, top_k: int) -> dict:
        if self._store.is_lite:  # FLAT: exact, no parameters
            return {"metric_type": "COSINE"}
        return {"metric_type": "COSINE", "params": {"ef": max(self._store.search_ef, top_k)}}

    async def ids_for_sha256(self, digests: list[str]) -> dict[str, str]:
        if not digests:
            return {}
        rows = await self._store.call("query", self._c, filter=f"sha256 in {_quote_list(digests)}",
                                      output_fields=["id", "sha256"],
                                      consistency_level=self._store.consistency)
        return {r["sha256"]: r["id"] for r in rows}

    async def get(self, ids: list[str]) -> dict[str, Record]:
        if not ids:
            return {}
        rows = await self._store.call("query", self._c, filter=f"id in {_quote_list(ids)}",
                                      output_fields=["*"], consistency_level=self._store.consistency)
        return {r["id"]: _record(r) for r in rows}

    async def existing_ids(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        rows = await self._store.call("query", self._c, filter=f"id in {_quote_list(ids)}", output_fields=["id"],
                                      consistency_level=self._store.consistency)
        return {r["id"] for r in rows}

    async def delete(self, ids: list[str]) -> list[str]:
        unique = list(dict.fromkeys(ids))
        found = await self.existing_ids(unique)
        existing = [i for i in unique if i in found]
        if existing:
            await self._store.call("delete", self._c, ids=existing)
            # pymilvus does not record a delete's timestamp for Session consistency, so a search
            # right after could still see the rows. One Strong read waits until the delete is
            # applied; searches after this answer, from any process, no longer return them.
            await self._store.call("query", self._c, filter=f"id in {_quote_list(existing)}",
                                   output_fields=["id"], consistency_level="Strong")
        return existing

    async def count(self) -> int:
        rows = await self._store.call("query", self._c, filter="", output_fields=["count(*)"],
                                      consistency_level=self._store.consistency)
        return int(rows[0]["count(*)"]) if rows else 0


def _face_json(r: Record) -> dict:
    out: dict = {"box": r.face_box} if r.face_box else {}
    if r.face_count is not None:
        out["faces"] = r.face_count
    if r.timestamp_s is not None:
        out["t"] = r.timestamp_s
    return out


def _face_count(value) -> int | None:
    return value.get("faces") if isinstance(value, dict) else None


def _timestamp(value) -> float | None:
    return value.get("t") if isinstance(value, dict) else None


def _face_box(value) -> list[float] | None:
    return (value or {}).get("box") if isinstance(value, dict) else None


def _hit(h: dict) -> Hit:
    e = h.get("entity", {})
    return Hit(id=str(h["id"]), uri=e.get("uri", ""), score=float(h["distance"]), sha256=e.get("sha256", ""),
               metadata=e.get("metadata") or {}, face_box=_face_box(e.get("face_box")),
               timestamp_s=_timestamp(e.get("face_box")))


def _record(r: dict) -> Record:
    return Record(id=r["id"], vector=np.asarray(r["vector"], dtype=np.float32), uri=r["uri"],
                  sha256=r["sha256"], model=r["model"], model_version=r["model_version"],
                  created_at_ms=int(r["created_at_ms"]), metadata=r.get("metadata") or {},
                  face_box=_face_box(r.get("face_box")), face_count=_face_count(r.get("face_box")),
                  timestamp_s=_timestamp(r.get("face_box")))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
