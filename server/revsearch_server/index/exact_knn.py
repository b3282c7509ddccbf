"""Exact brute-force k-nearest-neighbour search in numpy: the original project's baseline.

Euclidean distance over L2-normalised vectors, so the ranking equals cosine ranking and the
reported score is the cosine (1 - d^2 / 2). Persisted under the data directory as append-only
segment files plus a tombstone list, each written to a temporary file and renamed into place,
so a crash never leaves half a batch. One server process owns a directory.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from ..domain import FaceBox
from .base import Hit, Record, RowFilter

_RECORD_FIELDS = ("id", "uri", "sha256", "model", "model_version", "created_at_ms", "metadata", "face_box",
                  "face_count", "timestamp_s", "local_features")  # segments written before local_features lack it


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ExactKnnIndex:
    def __init__(self, directory: Path, dimension: int, pool: Executor | None = None):
        """pool: where file writes and the matrix product run (pools.py's store pool in the server;
        None: the event loop's default executor)."""
        self._pool = pool
        self._dir = directory
        self._dim = dimension
        self._lock = asyncio.Lock()
        self._records: dict[str, Record] = {}
        self._matrix: np.ndarray | None = None
        self._ids: list[str] = []
        self._tombstones: set[str] = set()
        self._sorted: list[str] | None = None  # the ids in order, for list_rows (None: to be rebuilt)
        self._load()

    @property
    def search_key(self) -> int:
        # The catalog keeps one ExactKnnIndex per collection, so the object is the collection.
        return id(self)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        tomb_file = self._dir / "tombstones.json"
        if tomb_file.exists():
            self._tombstones = set(json.loads(tomb_file.read_text()))
        for seg in sorted(self._dir.glob("seg-*.npz")):
            with np.load(seg, allow_pickle=False) as data:
                vectors = data["vectors"]
                metas = json.loads(str(data["records"]))
            for meta, vec in zip(metas, vectors):
                meta["face_box"] = FaceBox.from_list(meta.get("face_box"))  # stored as a list of five
                rec = Record(vector=vec.astype(np.float32), **meta)
                # A later segment holding the same id (re-indexed after a delete) wins.
                self._records[rec.id] = rec
        for dead in self._tombstones:
            self._records.pop(dead, None)
        self._matrix = None

    def _write_segment(self, records: list[Record]) -> None:
        name = f"seg-{time.time_ns():020d}.npz"
        vectors = np.stack([r.vector for r in records]).astype(np.float32)
        metas = json.dumps([{k: getattr(r, k) for k in _RECORD_FIELDS} | {"face_box": r.face_box and r.face_box.to_list()}
                            for r in records])
        _atomic_write(self._dir / name, lambda f: np.savez(f, vectors=vectors, records=np.array(metas)))

    def _write_tombstones(self) -> None:
        data = json.dumps(sorted(self._tombstones)).encode()
        _atomic_write(self._dir / "tombstones.json", lambda f: f.write(data))

    # -- VectorIndex -------------------------------------------------------------------------
    async def insert(self, records: list[Record]) -> None:
        if not records:
            return
        async with self._lock:
            await self._run(self._write_segment, records)
            # An id deleted earlier and indexed again must not be hidden by its old tombstone.
            revived = {r.id for r in records} & self._tombstones
            if revived:
                self._tombstones -= revived
                await self._run(self._write_tombstones)
            for r in records:
                self._records[r.id] = r
            self._matrix = self._sorted = None

    async def replace(self, records: list[Record]) -> None:
        """A new segment with the rows' new values (the latest segment wins on load), swapped in at once."""
        await self.insert(records)

    def _snapshot(self) -> tuple[np.ndarray, list[str]]:
        if self._matrix is None:
            self._ids = list(self._records)
            self._matrix = (np.stack([self._records[i].vector for i in self._ids]) if self._ids
                            else np.zeros((0, self._dim), np.float32))
        return self._matrix, self._ids

    def with_breadth(self, breadth: int | None) -> "ExactKnnIndex":
        """Exact: no breadth to set (a request's is ignored)."""
        return self

    def with_filter(self, where: RowFilter | None) -> "ExactKnnIndex | FilteredExactKnn":
        return self if where is None else FilteredExactKnn(self, where)

    async def search(self, queries: np.ndarray, top_k: int) -> list[list[Hit]]:
        matrix, ids = self._snapshot()
        records = self._records
        return await self._run(_knn, matrix, ids, records, queries, top_k)

    async def search_where(self, queries: np.ndarray, top_k: int, where: RowFilter) -> list[list[Hit]]:
        """Exact search of the rows that match (the baseline filtered searches are measured against)."""
        matrix, ids = self._snapshot()
        records = self._records

        def run():
            keep = [j for j, i in enumerate(ids) if i in records and where.matches(records[i])]
            return _knn(matrix[keep], [ids[j] for j in keep], records, queries, top_k)

        return await self._run(run)

    async def list_rows(self, after: str, limit: int, where: RowFilter | None = None,
                        vectors: bool = False) -> list[Record]:
        if self._sorted is None:
            self._sorted = sorted(self._records)
        ordered, records, out = self._sorted, self._records, []
        for n in range(bisect.bisect_right(ordered, after), len(ordered)):  # no copy of the tail per page
            r = records.get(ordered[n])
            if r is not None and (where is None or where.matches(r)):
                out.append(r)
                if len(out) == limit:
                    break
        return out

    async def ids_for_sha256(self, digests: list[str]) -> dict[str, str]:
        wanted = set(digests)
        return {r.sha256: r.id for r in self._records.values() if r.sha256 in wanted}

    async def get(self, ids: list[str], vectors: bool = True) -> dict[str, Record]:
        return {i: self._records[i] for i in ids if i in self._records}

    async def existing_ids(self, ids: list[str], recent: bool = True) -> set[str]:
        return {i for i in ids if i in self._records}

    async def owners(self, digests: list[str], ids: list[str]) -> tuple[dict[str, str], set[str]]:
        return await self.ids_for_sha256(digests), await self.existing_ids(ids)

    async def delete(self, ids: list[str]) -> list[str]:
        async with self._lock:
            existing = [i for i in dict.fromkeys(ids) if i in self._records]
            if existing:
                self._tombstones.update(existing)
                await self._run(self._write_tombstones)
                for i in existing:
                    del self._records[i]
                self._matrix = self._sorted = None
            return existing

    async def count(self) -> int:
        return len(self._records)

    async def count_imported(self) -> int:
        return sum(1 for r in self._records.values() if not r.sha256)


class FilteredExactKnn:
    """An ExactKnnIndex whose searches see only the rows that match a filter (with_filter)."""

    def __init__(self, base: ExactKnnIndex, where: RowFilter):
        self._base, self._where = base, where

    def __getattr__(self, name):  # every other method is the collection's own
        return getattr(self._base, name)

    @property
    def search_key(self) -> tuple:
        return (self._base.search_key, self._where.key)

    def with_filter(self, where: RowFilter | None):
        return self._base.with_filter(where)

    def with_breadth(self, breadth: int | None) -> "FilteredExactKnn":
        return self

    async def search(self, queries: np.ndarray, top_k: int) -> list[list[Hit]]:
        return await self._base.search_where(queries, top_k, self._where)


def _knn(matrix: np.ndarray, ids: list[str], records: dict[str, Record], queries: np.ndarray,
         top_k: int) -> list[list[Hit]]:
    if matrix.shape[0] == 0:
        return [[] for _ in range(len(queries))]
    # Squared Euclidean distance, expanded: |q|^2 + |x|^2 - 2 q.x
    d2 = (np.sum(queries ** 2, axis=1, keepdims=True) + np.sum(matrix ** 2, axis=1)[None, :]
          - 2.0 * queries @ matrix.T)
    k = min(top_k, matrix.shape[0])
    results = []
    for row in d2:
        top = np.argpartition(row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        top = top[np.lexsort((top, row[top]))]  # by distance, ties by insertion order
        hits = []
        for j in top:
            rec = records.get(ids[j])
            if rec is None:  # deleted after the snapshot was taken
                continue
            hits.append(Hit(id=rec.id, uri=rec.uri, score=float(1.0 - row[j] / 2.0), sha256=rec.sha256,
                            metadata=rec.metadata, face_box=rec.face_box, timestamp_s=rec.timestamp_s))
        results.append(hits)
    return results
