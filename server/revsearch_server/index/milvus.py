"""Milvus as the vector store: embedded Milvus Lite by default, or a Milvus server/cluster.

pymilvus is synchronous, so calls run in a small thread pool and each carries a deadline
(`timeout`); a failure to reach Milvus becomes errors.Unavailable, never a hang.
Searches use a configurable consistency level (Session by default: this process reads its own
acknowledged writes without paying for Strong consistency's wait on every search).

Failing fast: once a call finds the store unreachable, later calls fail at once with
Unavailable instead of each waiting out its deadline, and health says NOT_SERVING. A background
probe tries the store every PROBE_EVERY_S, through the read path (a query of the collection the
failed call used, not only a cheap list: a restarted Milvus server lists collections seconds
before it serves reads), and closes the circuit when it answers. Measured by
benchmarks/bench_chaos.py: calls failed in 7 ms at p99 while Milvus was down.

Stored-row layouts (a collection records its layout in its settings, catalog.py):
  1  (releases up to 0.1.0) one JSON column `face_box` carried {"box": [x0, y0, x1, y1, conf],
     "faces": face count, "t": frame timestamp}.
  2  `face_box` JSON holds only the box ({"x_min", ...} or {}); `face_count` (INT64, 0: none) and
     `timestamp_s` (DOUBLE, -1: none) are columns of their own. Milvus 2.3 servers have no
     nullable fields, hence the sentinels.
  3  layout 2 plus `local_features` (VARCHAR, "" for none): an item's compact local features for copy
     detection (copies.py; format 1, base64, about 14 KB; format 2, base85, about 3 KB). Searches never
     return it; `get` does.
Collections of any layout open, search, index and delete; new collections get layout 3.
The vector index (vector_index.py) is the collection's: FLAT on Milvus Lite (the only one it builds),
on a server what CreateCollection chose (HNSW by default); collections created before the choice
keep AUTOINDEX, searched with --milvus-search-ef. The index of a new collection is built as its
segments seal; until then Milvus searches the growing segment exactly, so imported rows are
searchable at once. Independently of the layout, a collection's vector field is FLOAT16_VECTOR when its settings say so
(copy-detection collections of the compact kind created where float16 pays: servers from Milvus 2.4, or
Milvus Lite with --milvus-float16 on; supports_float16, catalog.py): vectors go in and come out as
float16, queries are sent as float16.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import re
import threading
from contextlib import asynccontextmanager, nullcontext
from dataclasses import asdict
from concurrent.futures import Executor

import numpy as np

from ..domain import FaceBox
from ..errors import InvalidArgument, NotFound, Unavailable
from ..filters import column_value
from ..shared_call import CallJoiner
from ..vector_index import CHOOSABLE, SERVER_DEFAULT, IndexType, VectorIndexSpec
from .base import CURRENT_LAYOUT, LAYOUT_FACE_COLUMNS, LAYOUT_LOCAL_FEATURES, Hit, Record, RowFilter

log = logging.getLogger(__name__)

PREFIX = "revsearch_"
PROBE_EVERY_S = 1.0
_MISSING_COLLECTION = re.compile(r"collection not found|can't find collection|CollectionNotExists", re.I)
# Milvus refusing a filter expression (filters.py should never make one it refuses): the request's fault,
# not the store's, so it must not open the circuit.
_BAD_EXPRESSION = re.compile(r"invalid expr|cannot parse expression|unsupported expr|expr type check failed", re.I)
_NO_FACE_COUNT, _NO_TIMESTAMP = 0, -1.0
# Row keys: a 64-character item id plus "~<face>" in crop mode "all" (see rows.py).
_ID_MAX, _URI_MAX = 80, 2048
# New collections' local_features: copies.py writes format 2 only, at most 4,207 characters (280
# keypoints); format 1 (up to 14.4 KB) lives only in collections created before, which keep their schema
# (65,535). A tighter limit can let Milvus seal larger segments (a bare three-field schema: 82-86k rows
# a segment at 65,535, 165k at 8,192), but with the full schema an import still sealed segments of about
# 54k rows (benchmarks/results/scale.md): the 17 segments of a million items come from elsewhere.
_FEATURES_MAX = 8192
_JOINED_GET = 64  # ids a get may have and still join others (MilvusStore.joined_gets)
# Joined writes of at least this many rows go field by field: pymilvus packs a write of row dicts at
# about 40 µs a row of the client's CPU and one of columns at about 15 (bare pymilvus into the 2.3
# server, revsearch's schema, 500-row upserts: 15,200 against 20,200 rows/s), which pays for the
# schema read a column write needs; IndexImages' few-row writes keep the row form and no extra call.
COLUMN_WRITE_ROWS = 64
# A collection's filter columns (CreateCollection's filter_keys): "fk_<key>" holds the key's string value
# (filters.column_value); metadata is at most 16 KiB, so any string of it fits.
FILTER_COLUMN_PREFIX, _FILTER_VALUE_MAX = "fk_", 16 * 1024 + 1


def filter_columns(filter_keys: tuple[str, ...]) -> dict[str, str]:
    return {k: FILTER_COLUMN_PREFIX + k for k in filter_keys}


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


class RewriteGate:
    """Milvus Lite only: reads of a collection (searches, gets, listings) wait while one of its rows is
    rewritten (UpdateImages), and a rewrite waits for the reads in flight.

    Lite's upsert deletes the old row and then inserts the new one: a search between the two missed the
    item (tests/service/test_item_api.py caught 6 of about 60 concurrent searches missing it while it was
    updated 30 times). A Lite file belongs to one server process, so a lock in that process closes the
    window; the Milvus server applies an upsert at one timestamp and needs none."""

    def __init__(self):
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @asynccontextmanager
    async def read(self):
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing and not self._waiting_writers)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def write(self):
        async with self._cond:
            self._waiting_writers += 1
            try:
                await self._cond.wait_for(lambda: not self._writing and not self._readers)
            finally:
                self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            async with self._cond:
                self._writing = False
                self._cond.notify_all()


class MilvusStore:
    """Owns the connection; hands out per-collection indexes."""

    def __init__(self, uri: str, token: str, timeout_s: float, consistency: str, pool: Executor,
                 search_ef: int = 256, float16: str = "auto"):
        self.uri = uri
        self._token = token
        self._timeout_s = timeout_s
        self.consistency = consistency
        # The ef of collections created before the index could be chosen (AUTOINDEX, HNSW on a server):
        # Milvus's default ef gave recall@20 of 0.14-0.32 on 10k-1M synthetic vectors
        # (benchmarks/results/search_scaling.md); ef 256 gave 1.0 at 2k.
        self.search_ef = search_ef
        self._float16 = float16  # --milvus-float16: auto, on or off (supports_float16)
        self._client = None
        self._client_lock = threading.Lock()
        self._pool = pool  # pymilvus is synchronous; its calls run here (sized in pools.py)
        # The circuit: why the store is taken to be down (None: up), and when a call last tried it.
        self._down: str | None = None
        self._probe_collection: str | None = None
        self._probe_task: asyncio.Task | None = None
        # Concurrent writes and id lookups of one collection go to Milvus as one call while one runs:
        # one-image IndexImages calls from 16 callers made four Milvus round trips each.
        self.joined = CallJoiner()
        # Concurrent gets of a few rows each (copy detection fetches its candidates' rows, features
        # included, two or three times a search) go as one query too: at most 16 callers of up to
        # _JOINED_GET ids (about 1,000 rows of 4-5 KB) in one answer.
        self.joined_gets = CallJoiner(max_items=16)
        self._on_missing: list = []  # callbacks(name) for a collection Milvus says is gone
        self._gates: dict[str, RewriteGate] = {}  # Lite: per collection (RewriteGate)

    def reading(self, collection: str):
        """The context a read of the collection runs in (Lite: RewriteGate.read; a server: nothing)."""
        return self._gate(collection).read() if self.is_lite else nullcontext()

    def rewriting(self, collection: str):
        return self._gate(collection).write() if self.is_lite else nullcontext()

    def _gate(self, collection: str) -> RewriteGate:
        gate = self._gates.get(collection)
        if gate is None:
            gate = self._gates[collection] = RewriteGate()
        return gate

    def on_missing(self, callback) -> None:
        """callback(collection name) whenever Milvus answers that the collection does not exist (another
        server process dropped it): the catalog forgets its cached settings."""
        self._on_missing.append(callback)

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")

    def describe(self) -> str:
        return f"milvus-lite:{self.uri}" if self.is_lite else f"milvus:{self.uri}"

    def index_types(self) -> tuple[IndexType, ...]:
        """Milvus Lite builds FLAT whatever it is asked (exact; its AUTOINDEX also dropped raw vectors
        from growing segments, which broke fetching a stored vector); a server builds them all."""
        return (IndexType.FLAT,) if self.is_lite else CHOOSABLE

    @property
    def default_index_type(self) -> IndexType:
        return IndexType.FLAT if self.is_lite else SERVER_DEFAULT

    def legacy_index(self) -> VectorIndexSpec:
        """What collections created before the index could be chosen use: Lite's FLAT, a server's
        AUTOINDEX searched with --milvus-search-ef."""
        return VectorIndexSpec.legacy(self.is_lite, self.search_ef)

    def _connect(self):
        from pymilvus import MilvusClient

        with self._client_lock:
            if self._client is None:
                self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self._timeout_s)
            return self._client

    @property
    def is_down(self) -> bool:
        return self._down is not None

    async def call(self, method: str, *args, **kwargs):
        """Runs client.<method> in the pool with the deadline; maps failures to Unavailable."""
        kwargs["timeout"] = call_timeout(kwargs.get("timeout", self._timeout_s))
        if self._down is not None:
            self._ensure_probe()
            raise Unavailable(f"vector store {self.describe()} is unreachable ({self._down}); failing at once "
                              "until it answers again (retry shortly)")

        def run():
            if method == "upsert_columns":
                return self._upsert_columns(*args, **kwargs)
            return getattr(self._connect(), method)(*args, **kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except Exception as exc:  # pymilvus raises many types; all but one mean the store failed us
            if _MISSING_COLLECTION.search(str(exc)):  # dropped by another server process meanwhile
                name = args[0].removeprefix(PREFIX)
                for forget in self._on_missing:  # the catalog's cached settings of it are stale now
                    forget(name)
                raise NotFound(f"collection {name!r} does not exist (dropped)") from exc
            if _BAD_EXPRESSION.search(str(exc)):
                log.warning("milvus refused an expression during %s: %s", method, _short(exc))
                raise InvalidArgument("the vector store could not evaluate this filter; simplify it (the store said: "
                                      f"{_short(exc)[:200]})") from exc
            if self._down is None:
                log.warning("milvus %s failed: %s", method, exc)
            self._mark_down(_short(exc), args[0] if args and isinstance(args[0], str) else None)
            raise Unavailable(f"vector store {self.describe()} failed during {method}: {_short(exc)}") from exc

    def _upsert_columns(self, collection: str, entities: dict[str, list], timeout: float):
        """An upsert given field by field (pymilvus's column form, which MilvusClient does not offer):
        the collection's schema is read first, so a collection re-created meanwhile with other fields
        gets the right request or a clear refusal."""
        client = self._connect()
        schema = client.describe_collection(collection, timeout=timeout)
        missing = [f["name"] for f in schema["fields"] if f["name"] not in entities and not f.get("auto_id")]
        if missing:
            raise ValueError(f"collection {collection} has fields this write lacks: {missing}")
        fields = [{"name": f["name"], "type": f["type"], "values": entities[f["name"]]}
                  for f in schema["fields"] if f["name"] in entities]
        # MilvusClient keeps its connection (pymilvus' GrpcHandler) private; its upsert takes columns.
        return client._get_connection().upsert(collection, fields, timeout=timeout, schema=schema)

    def _mark_down(self, reason: str, collection: str | None = None) -> None:
        self._down = reason
        if collection and collection.startswith(PREFIX):
            self._probe_collection = collection
        self._ensure_probe()

    def _ensure_probe(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while self._down is not None:
            await asyncio.sleep(PROBE_EVERY_S)
            if await self._probe_once():
                self._up()

    async def _probe_once(self) -> bool:
        timeout = call_timeout(min(self._timeout_s, PROBE_EVERY_S))
        collection = self._probe_collection

        def run() -> bool:
            client = self._connect()
            client.list_collections(timeout=timeout)
            if collection:
                try:
                    client.query(collection, filter='id == ""', limit=1, output_fields=["id"],
                                 consistency_level=self.consistency, timeout=timeout)
                except Exception as exc:
                    if not _MISSING_COLLECTION.search(str(exc)):  # a dropped collection is no sign of trouble
                        raise
            return True

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except Exception:
            return False

    def _up(self) -> None:
        if self._down is not None:
            log.info("vector store %s answers again", self.describe())
            self._down = None

    async def start(self) -> None:
        await self.call("list_collections")

    async def ping(self, timeout_s: float) -> bool:
        """Whether Milvus answers a cheap call within timeout_s (the health check; logs nothing).
        While the circuit is open, False until the background probe has seen reads served."""
        if self._down is not None:
            self._ensure_probe()
            return False

        def run():
            return self._connect().list_collections(timeout=call_timeout(timeout_s))

        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except Exception as exc:
            self._mark_down(_short(exc))
            return False
        return True

    async def supports_float16(self) -> bool:
        """Whether new compact copy-detection collections store float16 vectors. Milvus servers from
        2.4 do (auto or on: half the vector bytes, searched natively); 2.3 has no FLOAT16_VECTOR. Milvus
        Lite 2.5 stores them but its FLAT search of float16 is 4-5x slower than of float32 (100k full
        copy-detection items: vector queries p50 50.6 vs 9.5 ms, copy-detection image searches 197 vs
        60 ms, for 686 vs 776 MB of store; benchmarks/results/scale_lite_full.md), so Lite keeps
        float32 unless --milvus-float16 is on."""
        if self._float16 == "off":
            return False
        if self.is_lite:
            return self._float16 == "on"
        version = str(await self.call("get_server_version"))
        match = re.search(r"(\d+)\.(\d+)", version)
        return bool(match) and (int(match.group(1)), int(match.group(2))) >= (2, 4)

    async def create(self, name: str, dimension: int, description: str, layout: int = CURRENT_LAYOUT,
                     float16: bool = False, vector_index: VectorIndexSpec | None = None,
                     filter_keys: tuple[str, ...] = (), vectors_only: bool = False) -> bool:
        """vector_index None: as collections were made before the index could be chosen. vectors_only:
        the key and the vector alone (crop views; their item's fields live on its row)."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_MAX)
        schema.add_field("vector", DataType.FLOAT16_VECTOR if float16 else DataType.FLOAT_VECTOR, dim=dimension)
        if not vectors_only:
            self._add_item_fields(schema, layout, filter_keys)
        index_params = MilvusClient.prepare_index_params()
        index_type, params = (vector_index or self.legacy_index()).milvus_index()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=params)
        if await self.call("has_collection", milvus_name(name)):
            return False
        await self.call("create_collection", milvus_name(name), schema=schema, index_params=index_params,
                        consistency_level=self.consistency)
        return True

    @staticmethod
    def _add_item_fields(schema, layout: int, filter_keys: tuple[str, ...]) -> None:
        from pymilvus import DataType

        schema.add_field("uri", DataType.VARCHAR, max_length=_URI_MAX)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("model", DataType.VARCHAR, max_length=128)
        schema.add_field("model_version", DataType.VARCHAR, max_length=64)
        schema.add_field("created_at_ms", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("face_box", DataType.JSON)
        if layout >= LAYOUT_FACE_COLUMNS:
            schema.add_field("face_count", DataType.INT64)
            schema.add_field("timestamp_s", DataType.DOUBLE)
        if layout >= LAYOUT_LOCAL_FEATURES:
            schema.add_field("local_features", DataType.VARCHAR, max_length=_FEATURES_MAX)
        for column in filter_columns(filter_keys).values():
            schema.add_field(column, DataType.VARCHAR, max_length=_FILTER_VALUE_MAX)

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

    def index(self, name: str, dimension: int, layout: int = CURRENT_LAYOUT, float16: bool = False,
              vector_index: VectorIndexSpec | None = None, filter_keys: tuple[str, ...] = (),
              vectors_only: bool = False) -> "MilvusIndex":
        return MilvusIndex(self, milvus_name(name), dimension, layout, float16, vector_index or self.legacy_index(),
                           filter_keys=filter_keys, vectors_only=vectors_only)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self._client is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._client.close)


class MilvusIndex:
    def __init__(self, store: MilvusStore, collection: str, dimension: int, layout: int = CURRENT_LAYOUT,
                 float16: bool = False, vector_index: VectorIndexSpec = VectorIndexSpec(), breadth: int = 0,
                 filter_keys: tuple[str, ...] = (), vectors_only: bool = False):
        self._store = store
        self.vector_index = vector_index
        self._breadth = breadth  # a request's search breadth (0: the collection's)
        self._where = ""  # a request's filter as a Milvus expression ("": every row)
        self._filter_columns = filter_columns(filter_keys)  # metadata key -> its column
        self._c = collection
        self._dim = dimension
        self._float16 = float16
        # vectors_only (crop views of compact copy collections): rows of a key and a vector, no other field.
        self._vectors_only = vectors_only
        self._columns = layout >= LAYOUT_FACE_COLUMNS
        self._features = layout >= LAYOUT_LOCAL_FEATURES and not vectors_only
        self._output = [] if vectors_only else ["uri", "sha256", "metadata", "face_box"] + (
            ["face_count", "timestamp_s"] if self._columns else [])

    @property
    def search_key(self) -> tuple:
        # The catalog makes a MilvusIndex per call; what they search is the named collection (with one
        # breadth: searches of another breadth go to the index separately).
        return ("milvus", self._c, self._dim, self._breadth, self._where)

    def with_breadth(self, breadth: int | None) -> "MilvusIndex":
        """This index searched with another breadth (vector_index.VectorIndexSpec.breadth checks it)."""
        b = self.vector_index.breadth(breadth)
        if breadth is None or b == self._breadth:
            return self
        clone = copy.copy(self)
        clone._breadth = b
        return clone

    def with_filter(self, where: RowFilter | None) -> "MilvusIndex":
        """This index with its searches filtered by Milvus itself (a pre-filter: its FLAT and graph
        searches skip rows that do not match, so top_k is the true top_k among those that do)."""
        expr = where.milvus(self._store.is_lite, self._filter_columns) if where is not None else ""
        if expr == self._where:
            return self
        clone = copy.copy(self)
        clone._where = expr
        return clone

    async def insert(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            # Upsert, not insert: Milvus keeps both rows of a repeated primary key, so a retried or
            # racing write of the same content-derived id must replace, not add. Joined with the
            # concurrent writes of this collection (each caller's rows stay all or nothing: a failed
            # joined write fails every caller, which removes its own rows below).
            await self._store.joined.call(("upsert", self._c), records, self._upsert)
        except Unavailable:
            # The insert may have reached Milvus before the failure: remove whatever did, so a
            # failed item is not left half-indexed. Best effort; the ids are unacknowledged.
            try:
                await self._store.call("delete", self._c, ids=[r.id for r in records])
            except Unavailable:
                log.error("could not clean up %d unacknowledged rows in %s", len(records), self._c)
            raise

    async def replace(self, records: list[Record]) -> None:
        # One upsert. A Milvus server applies its delete and insert at one timestamp; on Lite the reads of
        # the collection wait meanwhile (RewriteGate). Tests search while items are updated, on both.
        if not records:
            return
        async with self._store.rewriting(self._c):
            write = asyncio.ensure_future(self._store.call("upsert", self._c, data=self._rows(records)))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:  # the write runs on in its thread: hold the gate until it ends
                await asyncio.wait([write])
                raise

    def _rows(self, records: list[Record]) -> list[dict]:
        if self._vectors_only:
            return [{"id": r.id, "vector": self._vector_in(r.vector)} for r in records]
        return [{
            "id": r.id, "vector": self._vector_in(r.vector), "uri": r.uri, "sha256": r.sha256, "model": r.model,
            "model_version": r.model_version, "created_at_ms": r.created_at_ms, "metadata": r.metadata,
            **(_face_columns(r) if self._columns else {"face_box": _face_json_v1(r)}),
            **({"local_features": r.local_features or ""} if self._features else {}),
            **{column: column_value(r.metadata, key) for key, column in self._filter_columns.items()},
        } for r in records]

    async def _upsert(self, parts: list[list[Record]]) -> None:
        records = list({r.id: r for part in parts for r in part}.values())  # a key twice in one call: the last wins
        if len(records) >= COLUMN_WRITE_ROWS:
            await self._store.call("upsert_columns", self._c, entities=self._entities(records))
        else:
            await self._store.call("upsert", self._c, data=self._rows(records))

    def _entities(self, records: list[Record]) -> dict[str, list]:
        """The records field by field: the column form of _rows, built column by column (built from
        _rows' dicts instead, an import's server CPU went from 46 to 52 µs a row);
        tests/integration/test_milvus_write_forms.py keeps the two forms storing the same fields."""
        columns: dict[str, list] = {
            "id": [r.id for r in records],
            "vector": ([np.asarray(r.vector, dtype=np.float16).tobytes() for r in records] if self._float16
                       else np.asarray([r.vector for r in records], dtype=np.float32).tolist())}
        if self._vectors_only:
            return columns
        columns.update({
            "uri": [r.uri for r in records], "sha256": [r.sha256 for r in records],
            "model": [r.model for r in records], "model_version": [r.model_version for r in records],
            "created_at_ms": [r.created_at_ms for r in records], "metadata": [r.metadata for r in records]})
        if self._columns:
            faces = [_face_columns(r) for r in records]
            for name in ("face_box", "face_count", "timestamp_s"):
                columns[name] = [f[name] for f in faces]
        else:
            columns["face_box"] = [_face_json_v1(r) for r in records]
        if self._features:
            columns["local_features"] = [r.local_features or "" for r in records]
        for key, column in self._filter_columns.items():
            columns[column] = [column_value(r.metadata, key) for r in records]
        return columns

    async def _lookup(self, wanted: dict[str, list[str]], output: list[str], joiner: CallJoiner | None,
                      consistency: str = "") -> list[dict]:
        """Rows whose field is among its values, for any of wanted's fields (`id in [...] or sha256 in
        [...]`), joined by joiner with concurrent lookups of the same fields of this collection (each
        caller gets the rows of every value asked for meanwhile: a superset of its own); joiner None:
        this call goes alone."""
        level = consistency or self._store.consistency
        fields = tuple(sorted(f for f, values in wanted.items() if values))
        if not fields:
            return []

        async def run(parts: list[dict[str, list[str]]]) -> list[dict]:
            where = " or ".join(f"{f} in {_quote_list(sorted({v for part in parts for v in part[f]}))}" for f in fields)
            async with self._store.reading(self._c):  # an id being rewritten is still stored
                return await self._store.call("query", self._c, filter=where, output_fields=output,
                                              consistency_level=level)

        if joiner is None:
            return await run([wanted])
        return await joiner.call(("query", self._c, fields, tuple(output), level), wanted, run)

    async def search(self, queries: np.ndarray, top_k: int) -> list[list[Hit]]:
        async with self._store.reading(self._c):
            results = await self._store.call(
                "search", self._c, data=[self._vector_in(q) for q in queries], limit=top_k,
                output_fields=self._output, search_params=self._search_params(top_k),
                consistency_level=self._store.consistency, **({"filter": self._where} if self._where else {}))
        if self._vectors_only:  # crop views: the key and score alone (192 a copy-detection search)
            return [[Hit(str(h["id"]), "", float(h["distance"]), "", {}, None) for h in hits] for hits in results]
        return [[self._hit(h) for h in hits] for hits in results]

    def _search_params(self, top_k: int) -> dict:
        if self._store.is_lite:  # FLAT whatever the settings say: exact, no parameters
            return {"metric_type": "COSINE"}
        return self.vector_index.milvus_search_params(top_k, self._breadth or None)

    async def ids_for_sha256(self, digests: list[str]) -> dict[str, str]:
        if not digests:
            return {}
        wanted = set(digests)
        rows = await self._lookup({"sha256": digests}, ["id", "sha256"], self._store.joined)
        return {r["sha256"]: r["id"] for r in rows if r["sha256"] in wanted}

    async def owners(self, digests: list[str], ids: list[str]) -> tuple[dict[str, str], set[str]]:
        """One query for both (`sha256 in [...] or id in [...]`), joined with concurrent ones: the two
        lookups had been a quarter of the Milvus calls of one-image IndexImages calls."""
        rows = await self._lookup({"sha256": digests, "id": ids}, ["id", "sha256"], self._store.joined)
        wanted_digests, wanted_ids = set(digests), set(ids)
        return ({r["sha256"]: r["id"] for r in rows if r["sha256"] in wanted_digests},
                {r["id"] for r in rows if r["id"] in wanted_ids})

    async def get(self, ids: list[str], vectors: bool = True) -> dict[str, Record]:
        if not ids:
            return {}
        mine = set(ids)  # a joined answer holds the other callers' rows too
        # A few rows (copy detection's candidates) join concurrent gets; a large get (GetItems) goes alone.
        rows = await self._lookup({"id": ids}, self._fields(vectors),
                                  joiner=self._store.joined_gets if len(ids) <= _JOINED_GET else None)
        return {r["id"]: self._record(r) for r in rows if r["id"] in mine}

    async def list_rows(self, after: str, limit: int, where: RowFilter | None = None,
                        vectors: bool = False) -> list[Record]:
        # Keyset paging on the primary key: Milvus answers a query with a limit in primary-key order
        # (pymilvus's QueryIterator relies on it too; tests/integration check it on Lite and the server),
        # so `id > last` never skips or repeats a row that existed throughout, whatever is written meanwhile.
        expr = f"id > {json.dumps(after)}" if after else 'id != ""'
        if where is not None:
            expr = f"({expr}) and ({where.milvus(self._store.is_lite, self._filter_columns)})"
        async with self._store.reading(self._c):
            rows = await self._store.call("query", self._c, filter=expr, limit=limit,
                                          output_fields=self._fields(vectors), consistency_level=self._store.consistency)
        rows.sort(key=lambda r: r["id"])  # the page in key order whatever order the store sent it in
        return [self._record(r) for r in rows]

    def _fields(self, vectors: bool) -> list[str]:
        """Every stored field, or all but the vector and the local features (3-4 KB a row)."""
        if vectors:
            return ["*"]
        return ["id"] if self._vectors_only else ["id", "model", "model_version", "created_at_ms", *self._output]

    async def existing_ids(self, ids: list[str], recent: bool = True) -> set[str]:
        if not ids:
            return set()
        wanted = set(ids)
        # recent=False: Bounded consistency, which does not wait for this session's last writes to be
        # applied. On the Milvus 2.3 server a Session read after each write waited for it: imports that
        # asked which of 500 ids were stored ran at 1,400 rows/s; Bounded 12,000; writes alone 19,000.
        level = "" if recent else "Bounded"
        return {r["id"] for r in await self._lookup({"id": ids}, ["id"], self._store.joined, level) if r["id"] in wanted}

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
        return await self._count("")

    async def count_imported(self) -> int:
        return await self._count('sha256 == ""')

    async def _count(self, where: str) -> int:
        rows = await self._store.call("query", self._c, filter=where, output_fields=["count(*)"],
                                      consistency_level=self._store.consistency)
        return int(rows[0]["count(*)"]) if rows else 0


    def _faces(self, row: dict) -> tuple[FaceBox | None, int | None, float | None]:
        """(face box, face count, timestamp) of a stored row in either layout."""
        if self._columns:
            box = row.get("face_box") or {}
            count, t = row.get("face_count", _NO_FACE_COUNT), row.get("timestamp_s", _NO_TIMESTAMP)
            return (FaceBox(**box) if box else None, None if count == _NO_FACE_COUNT else int(count),
                    None if t is None or t < 0 else float(t))
        old = row.get("face_box")
        old = old if isinstance(old, dict) else {}
        return FaceBox.from_list(old.get("box")), old.get("faces"), old.get("t")

    def _vector_in(self, vector: np.ndarray):
        """A vector as pymilvus takes it for this collection's field: float16 array or list of floats."""
        return np.asarray(vector, dtype=np.float16) if self._float16 else vector.tolist()

    def _vector_out(self, value) -> np.ndarray:
        """A fetched vector as float32 (a FLOAT16_VECTOR comes back as its bytes in a one-item list)."""
        if self._float16:
            raw = value[0] if isinstance(value, list) else value
            return np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        return np.asarray(value, dtype=np.float32)

    def _hit(self, h: dict) -> Hit:
        e = h.get("entity", {})
        box, _, t = self._faces(e)
        return Hit(id=str(h["id"]), uri=e.get("uri", ""), score=float(h["distance"]), sha256=e.get("sha256", ""),
                   metadata=e.get("metadata") or {}, face_box=box, timestamp_s=t)

    def _record(self, r: dict) -> Record:
        box, count, t = self._faces(r)
        vector = self._vector_out(r["vector"]) if "vector" in r else np.zeros(0, np.float32)
        return Record(id=r["id"], vector=vector, uri=r.get("uri", ""),  # a vectors-only row has the key alone
                      sha256=r.get("sha256", ""), model=r.get("model", ""), model_version=r.get("model_version", ""),
                      created_at_ms=int(r.get("created_at_ms", 0)), metadata=r.get("metadata") or {},
                      face_box=box, face_count=count, timestamp_s=t, local_features=r.get("local_features") or None)


def _face_columns(r: Record) -> dict:
    return {"face_box": asdict(r.face_box) if r.face_box else {},
            "face_count": _NO_FACE_COUNT if r.face_count is None else r.face_count,
            "timestamp_s": _NO_TIMESTAMP if r.timestamp_s is None else r.timestamp_s}


def _face_json_v1(r: Record) -> dict:
    out: dict = {"box": r.face_box.to_list()} if r.face_box else {}
    if r.face_count is not None:
        out["faces"] = r.face_count
    if r.timestamp_s is not None:
        out["t"] = r.timestamp_s
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
