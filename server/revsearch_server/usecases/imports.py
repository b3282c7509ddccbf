"""Import use case: vectors computed elsewhere (an archive embedded by a batch job) stored as items
of an image collection, a batch at a time as they arrive (ImportVectors). Knows nothing of gRPC.

Every item is checked on its own (id, uri, metadata, the vector's dimension, finite values, not all
zero); a bad one fails alone, with its position, and the rest goes on. An id given twice in one
import fails the second time (ALREADY_EXISTS). An id that is stored already (an earlier run of the
same import, or IndexImages) is skipped and counted as existing, so running a cut-off import again
stores the rest and never anything twice. Each write is all or nothing (index.base.insert_or_undo);
a store failure ends the import with UNAVAILABLE and keeps the batches written before it.

Imported rows have no image: an empty sha256 marks them (VectorIndex.count_imported), and on
copy-detection collections they have no crop vectors or local features, so copy detection finds
them by their global vector only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from ..collection_service import Collection, Collections
from ..domain import CropMode, MediaType
from ..errors import AlreadyExists, InvalidArgument, RevsearchError
from ..index.base import Record, insert_or_undo
from ..validation import validate_item_fields

# Failures listed in the answer (all are counted).
MAX_LISTED_FAILURES = 1000
# Rows per store write. Milvus Lite 2.5 took 500-row batches of 1280-d vectors at about 3,300 rows/s
# and 5,000-row batches at 70 rows/s (../shared/ENVIRONMENT.md); the 2.3 server 500 or 5,000 128-d
# rows at 19,000-22,000 rows/s.
WRITE_ROWS = 500


@dataclass(frozen=True)
class ImportHeader:
    collection: str
    model: str
    model_version: str


@dataclass
class VectorInput:
    position: int  # in the stream, over all messages
    id: str
    uri: str
    metadata: dict
    vector: np.ndarray | list[float]


@dataclass
class ImportFailure:
    position: int
    id: str
    error: RevsearchError


@dataclass
class ImportReport:
    received: int = 0
    imported: int = 0
    existing: int = 0
    failed: int = 0
    failures: list[ImportFailure] = field(default_factory=list)  # the first MAX_LISTED_FAILURES
    note: str = ""

    def fail(self, item: VectorInput, error: RevsearchError) -> None:
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(ImportFailure(item.position, item.id, error))


class ImportVectors:
    def __init__(self, collections: Collections, write_rows: int = WRITE_ROWS):
        self._collections = collections
        self._write_rows = max(1, write_rows)

    async def open(self, header: ImportHeader) -> Collection:
        """The collection the header names, if the vectors can go there: INVALID_ARGUMENT for a
        model or version that is not the collection's, a video collection or one of crop mode "all"."""
        c = await self._collections.open(header.collection, MediaType.IMAGE)
        spec = c.spec
        if not header.model or not header.model_version:
            raise InvalidArgument("the ImportVectors header needs model and model_version: the model the vectors "
                                  f"were computed with (collection {c.name!r}: {spec.model} version {spec.model_version})")
        if (header.model, header.model_version) != (spec.model, spec.model_version):
            raise InvalidArgument(f"the vectors come from {header.model} version {header.model_version}, but collection "
                                  f"{c.name!r} stores {spec.model} version {spec.model_version}: vectors of another "
                                  "model or version do not compare with its own; import into a collection of that model")
        if spec.crop_mode is CropMode.ALL_FACES:
            raise InvalidArgument(f"collection {c.name!r} stores every face of an image as its own row (crop mode "
                                  "'all'); imports go to collections of one vector per item")
        return c

    async def run(self, header: ImportHeader, batches: AsyncIterator[list[VectorInput]]) -> ImportReport:
        """Writes one batch while the next is checked (and asked which of its ids are stored): on the
        Milvus server the two take about as long."""
        c = await self.open(header)
        report = ImportReport(note=("imported items have no crop vectors or local features: copy detection finds "
                                    "them by their global vector only" if c.spec.copy_detection else ""))
        seen: set[str] = set()
        writing: asyncio.Task | None = None
        try:
            async for batch in batches:
                report.received += len(batch)
                for start in range(0, len(batch), self._write_rows):
                    records = await self._prepare(c, batch[start:start + self._write_rows], seen, report)
                    if writing is not None:
                        report.imported += await writing
                    writing = asyncio.ensure_future(self._write(c, records))
            if writing is not None:
                report.imported += await writing
                writing = None
        finally:
            if writing is not None:  # the stream failed or was cancelled: this write still ends whole or undone
                writing.cancel()
        return report

    @staticmethod
    async def _write(c: Collection, records: list[Record]) -> int:
        if records:
            await insert_or_undo(c.index, records)
        return len(records)

    async def _prepare(self, c: Collection, items: list[VectorInput], seen: set[str], report: ImportReport
                       ) -> list[Record]:
        """The records of the items that pass their checks and are not stored yet."""
        vectors = self._checked(c, items, report)
        fresh = []
        for item in items:
            if item.position not in vectors:
                continue
            if item.id in seen:
                report.fail(item, AlreadyExists(f"id {item.id!r} is given twice in this import (items {item.position} "
                                                "and an earlier one); each item once"))
                continue
            seen.add(item.id)
            fresh.append(item)
        # Not waiting for the writes just made (recent=False): this import's own ids are in `seen`, and a
        # row another writer stored a moment ago is upserted again, still once.
        stored = await c.index.existing_ids([i.id for i in fresh], recent=False) if fresh else set()
        report.existing += sum(1 for i in fresh if i.id in stored)
        now = int(time.time() * 1000)
        spec = c.spec
        return [Record(id=i.id, vector=vectors[i.position], uri=i.uri, sha256="", model=spec.model,
                       model_version=spec.model_version, created_at_ms=now, metadata=i.metadata)
                for i in fresh if i.id not in stored]

    @staticmethod
    def _checked(c: Collection, items: list[VectorInput], report: ImportReport) -> dict[int, np.ndarray]:
        """position -> the item's vector, L2-normalised, for the items that pass; the others fail."""
        dim = c.spec.dimension
        good: list[tuple[VectorInput, np.ndarray]] = []
        for item in items:
            try:
                if not item.id:
                    raise InvalidArgument(f"item {item.position} has no id: an imported item has no image to derive "
                                          "one from; give 1-64 characters from [A-Za-z0-9._:-]")
                validate_item_fields(item.id, item.uri, item.metadata)
                # fromiter: 4.9 instead of 7.4 µs for np.asarray on a protobuf repeated field of 128 floats
                vector = np.fromiter(item.vector, np.float32, len(item.vector))
                if vector.shape != (dim,):
                    raise InvalidArgument(f"item {item.position} ({item.id!r}): the vector has {vector.size} values; "
                                          f"collection {c.name!r} stores {dim} ({c.spec.model})")
                good.append((item, vector))
            except RevsearchError as exc:
                report.fail(item, exc)
        if not good:
            return {}
        matrix = np.stack([v for _, v in good]).astype(np.float64)  # checked together: one pass over the batch
        finite = np.isfinite(matrix).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], matrix, 0.0), axis=1)  # float64: no overflow
        out = {}
        for (item, _), ok, norm, row in zip(good, finite, norms, matrix):
            if not ok:
                report.fail(item, InvalidArgument(f"item {item.position} ({item.id!r}): the vector contains NaN or "
                                                  "infinite values"))
            elif norm == 0 or not np.isfinite(norm):
                report.fail(item, InvalidArgument(f"item {item.position} ({item.id!r}): the vector is all zeros; it "
                                                  "has no direction to compare"))
            else:
                out[item.position] = (row / norm).astype(np.float32)
        return out
