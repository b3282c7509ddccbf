"""What a stored item is, what a hit is, and the interfaces every vector store and index implement."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from collections.abc import Hashable
from typing import Protocol

import numpy as np

from ..domain import FaceBox
from ..filters import Filter, FilterFields
from ..rows import item_of
from ..vector_index import IndexType, VectorIndexSpec

log = logging.getLogger(__name__)

# Stored-row layouts of a collection (index/milvus.py describes them); new collections get the current one.
LAYOUT_JSON_FACE_FIELDS, LAYOUT_FACE_COLUMNS, LAYOUT_LOCAL_FEATURES = 1, 2, 3
CURRENT_LAYOUT = LAYOUT_LOCAL_FEATURES


@dataclass
class Record:
    id: str
    vector: np.ndarray  # float32 [D], L2-normalised
    uri: str
    sha256: str
    model: str
    model_version: str
    created_at_ms: int
    metadata: dict = field(default_factory=dict)
    # The face the vector came from, if any.
    face_box: FaceBox | None = None
    # Crop mode "all" and videos: how many rows the record's item has; set on its row 0.
    face_count: int | None = None
    # Videos: time of the sampled frame the vector came from, seconds.
    timestamp_s: float | None = None
    # Copy detection: the item's local features (copies.LocalFeatures.encode), None without them.
    local_features: str | None = None


@dataclass
class Hit:
    id: str
    uri: str
    score: float  # cosine similarity, higher is better
    sha256: str
    metadata: dict
    face_box: FaceBox | None
    timestamp_s: float | None = None
    # Copy detection: the query's keypoints that matched the item's (copies.py); 0 when not verified.
    matched_keypoints: int = 0


@dataclass(frozen=True)
class RowFilter:
    """A request's filter (filters.py) bound to how a collection keys its rows: in collections with
    several rows per item (crop mode "all", video frames) `id` means the item's id, not the row's."""
    filter: Filter
    multi_row: bool = False

    def milvus(self, lite: bool = False, columns: dict[str, str] | None = None) -> str:
        """The Milvus expression (lite: FilterError for what Milvus Lite cannot evaluate; columns: the
        collection's filter columns by metadata key; filters.py)."""
        return self.filter.to_milvus(self.multi_row, lite=lite, columns=columns)

    @property
    def key(self) -> tuple[str, bool]:
        return self.filter.digest, self.multi_row

    def matches(self, record: Record) -> bool:
        item = item_of(record.id) if self.multi_row else record.id
        return self.filter.matches(FilterFields(id=item, uri=record.uri, created_at_ms=record.created_at_ms,
                                                metadata=record.metadata or {}))


class VectorIndex(Protocol):
    """One collection's vectors. Every method may raise errors.Unavailable."""

    async def insert(self, records: list[Record]) -> None:
        """Stores all records or none of them."""

    async def replace(self, records: list[Record]) -> None:
        """Rewrites stored rows (new field values, same keys) in one write: each row is searchable
        throughout, with its old values or its new ones. On failure nothing is removed (unlike insert)."""

    async def search(self, queries: np.ndarray, top_k: int) -> list[list[Hit]]:
        """queries: float32 [Q, D], L2-normalised; best hit first."""

    @property
    def search_key(self) -> Hashable:
        """Equal for index objects that search the same stored vectors the same way (concurrent
        searches with equal keys may share a call: index/coalescer.py)."""

    def with_breadth(self, breadth: int | None) -> "VectorIndex":
        """This index searched with a request's breadth (None: the collection's); INVALID_ARGUMENT
        out of the index's range (vector_index.VectorIndexSpec.breadth). Exact indexes ignore it."""

    def with_filter(self, where: RowFilter | None) -> "VectorIndex":
        """This index with its searches restricted to the rows that match (None: every row). The
        store filters while it searches, so k hits come back whenever k rows match."""

    async def ids_for_sha256(self, digests: list[str]) -> dict[str, str]:
        """sha256 -> stored id, for the digests already in the collection."""

    async def get(self, ids: list[str], vectors: bool = True) -> dict[str, Record]:
        """The stored records among ids (with vectors and local features; vectors=False: without
        either, their vector an empty array)."""

    async def list_rows(self, after: str, limit: int, where: RowFilter | None = None,
                        vectors: bool = False) -> list[Record]:
        """Up to limit rows with a key greater than `after` ("" for the first), in key order, that
        match where; vectors as in get."""

    async def owners(self, digests: list[str], ids: list[str]) -> tuple[dict[str, str], set[str]]:
        """ids_for_sha256(digests) and existing_ids(ids) in one lookup (what IndexImages checks for
        each batch before it writes)."""

    async def existing_ids(self, ids: list[str], recent: bool = True) -> set[str]:
        """The ids among ids that are stored (without fetching their rows). recent=False may miss rows
        written in the last seconds, and answers without waiting for them (bulk imports)."""

    async def delete(self, ids: list[str]) -> list[str]:
        """Deletes; returns the ids that existed."""

    async def count(self) -> int: ...

    async def count_imported(self) -> int:
        """Rows stored by ImportVectors (no image: their sha256 is empty)."""


class VectorStore(Protocol):
    """Where collections live (Milvus Lite, a Milvus server): one object per server process,
    shared by every collection. Every method may raise errors.Unavailable."""

    def describe(self) -> str:
        """A line for logs and the info RPC, e.g. `milvus-lite:/path/milvus.db`."""

    def on_missing(self, callback) -> None:
        """Calls callback(collection name) when the store answers that a collection does not exist."""

    async def start(self) -> None:
        """Connects; raises errors.Unavailable when the store cannot be reached."""

    async def ping(self, timeout_s: float) -> bool:
        """Whether the store answers within timeout_s (the health check; never raises)."""

    async def create(self, name: str, dimension: int, description: str, layout: int, float16: bool = False,
                     vector_index: VectorIndexSpec | None = None, filter_keys: tuple[str, ...] = (),
                     vectors_only: bool = False) -> bool:
        """Creates a collection with the given stored-row layout (float16: its vectors stored as
        float16, where supports_float16 says the store can), vector index (None: the store's
        choice, as before the index could be chosen) and filter columns (metadata keys whose string
        values get a column of their own, filters.py); vectors_only: rows of a key and a vector alone
        (crop views); False when it exists already."""

    def index_types(self) -> tuple[IndexType, ...]:
        """The vector indexes the store builds."""

    def legacy_index(self) -> VectorIndexSpec:
        """What collections created before the index could be chosen use."""

    @property
    def default_index_type(self) -> IndexType:
        """The index of a collection created without one asked for."""

    async def supports_float16(self) -> bool:
        """Whether the store keeps and searches float16 vectors."""

    async def description(self, name: str) -> str | None:
        """The collection's description (revsearch keeps its settings there), None if absent."""

    async def descriptions(self) -> list[str]:
        """The descriptions of every revsearch collection in the store."""

    async def drop(self, name: str) -> None: ...

    def index(self, name: str, dimension: int, layout: int, float16: bool = False,
              vector_index: VectorIndexSpec | None = None, filter_keys: tuple[str, ...] = (),
              vectors_only: bool = False) -> VectorIndex:
        """The collection's index (cheap: no call to the store)."""

    async def close(self) -> None: ...


async def insert_or_undo(index: VectorIndex, records: list[Record]) -> None:
    """index.insert, all or nothing also when the caller is cancelled (client gone, deadline passed).

    A store's write cannot be taken back half-way (Milvus's call runs on in its thread), so the
    insert runs as its own task to its end; if the caller was cancelled meanwhile, the records
    are deleted again once the insert has finished (never before: a delete racing the write could
    miss rows that land after it). A failing insert cleans up after itself (VectorIndex.insert).
    """
    task = asyncio.ensure_future(index.insert(records))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        cleanup = asyncio.ensure_future(_undo_after(task, index, [r.id for r in records]))
        try:
            await asyncio.shield(cleanup)  # a second cancellation leaves it running on its own
        except asyncio.CancelledError:
            pass
        raise


async def _undo_after(insert: asyncio.Task, index: VectorIndex, ids: list[str]) -> None:
    try:
        await insert
    except BaseException:  # the failed insert removed what it wrote
        return
    try:
        await index.delete(ids)
        log.info("removed %d rows whose request was cancelled during their insert", len(ids))
    except Exception as exc:
        log.error("could not remove %d rows of a cancelled insert: %s", len(ids), exc)
