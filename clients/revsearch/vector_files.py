"""Files of precomputed vectors for `revsearch import` (ImportVectors), read a chunk at a time so a
million vectors never become one list of Python objects.

* `.npz` (numpy.savez): `ids` (strings) and `vectors` (2-D floats, one row per id); optional `uris`
  (strings), `metadata` (JSON object text per row), and `model` / `model_version` (0-d strings: what
  the vectors were computed with). Loaded without pickle.
* Parquet: columns `id` (string) and `vector` (list of floats); optional `uri` and `metadata` (JSON
  object text); the file's key-value metadata may say `revsearch.model` and `revsearch.model_version`.
  Needs pyarrow (requirements.txt; `pip install revsearch[parquet]`).

Every problem with a file is a ValueError whose message names the file and what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .client import VectorInput

CHUNK_ROWS = 10_000


@dataclass
class VectorFile:
    path: Path
    count: int
    dimension: int
    model: str  # "" when the file does not say
    model_version: str
    _chunks: Callable[[], Iterator[list[VectorInput]]]

    def items(self) -> Iterator[VectorInput]:
        for chunk in self._chunks():
            yield from chunk


def open_vectors(path: str | Path) -> VectorFile:
    """The file's items, count and model as the file states them; ValueError for a file that cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _npz(path)
    if suffix in (".parquet", ".pq"):
        return _parquet(path)
    raise ValueError(f"{path}: use a .npz (ids, vectors) or a .parquet (id, vector) file")


def _metadata(text, path: Path, row: int) -> dict:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: the metadata of row {row} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: the metadata of row {row} is not a JSON object")
    return value


def _npz(path: Path) -> VectorFile:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("ids", "vectors") if k not in data.files]
    if missing:
        raise ValueError(f"{path}: no array {missing[0]!r} (it has {', '.join(data.files) or 'none'}); an .npz "
                         "for import holds ids (strings) and vectors (one row per id)")
    ids, vectors = data["ids"], data["vectors"]
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(f"{path}: vectors must be a 2-D array of numbers, not {vectors.dtype} of shape {vectors.shape}")
    if ids.ndim != 1 or len(ids) != len(vectors):
        raise ValueError(f"{path}: {ids.size} ids for {len(vectors)} vectors; give one id per row")
    if ids.dtype.kind not in "US":
        raise ValueError(f"{path}: ids must be strings, not {ids.dtype}")
    uris = data["uris"] if "uris" in data.files else None
    metadata = data["metadata"] if "metadata" in data.files else None
    for name, column in (("uris", uris), ("metadata", metadata)):
        if column is not None and len(column) != len(ids):
            raise ValueError(f"{path}: {len(column)} {name} for {len(ids)} ids")

    def text(key: str) -> str:
        return str(data[key]) if key in data.files else ""

    def chunks() -> Iterator[list[VectorInput]]:
        for start in range(0, len(ids), CHUNK_ROWS):
            stop = min(len(ids), start + CHUNK_ROWS)
            block = np.asarray(vectors[start:stop], dtype=np.float32)
            yield [VectorInput(id=str(ids[i]), vector=block[i - start],
                               uri=str(uris[i]) if uris is not None else "",
                               metadata=_metadata(str(metadata[i]), path, i) if metadata is not None else {})
                   for i in range(start, stop)]

    return VectorFile(path, len(ids), vectors.shape[1], text("model"), text("model_version"), chunks)


def _parquet(path: Path) -> VectorFile:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or revsearch[parquet])") from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(handle.schema_arrow.names)
    missing = [c for c in ("id", "vector") if c not in names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (it has {', '.join(sorted(names))}); a Parquet file for "
                         "import has the columns id (string) and vector (list of floats)")
    columns = ["id", "vector"] + [c for c in ("uri", "metadata") if c in names]
    meta = handle.schema_arrow.metadata or {}
    dimension = 0

    def chunks() -> Iterator[list[VectorInput]]:
        row = 0
        for batch in handle.iter_batches(batch_size=CHUNK_ROWS, columns=columns):
            ids = batch.column("id").to_pylist()
            vectors = batch.column("vector")
            lengths = np.diff(vectors.offsets.to_numpy())
            flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            ends = np.cumsum(lengths)
            uris = batch.column("uri").to_pylist() if "uri" in columns else None
            metadata = batch.column("metadata").to_pylist() if "metadata" in columns else None
            yield [VectorInput(id=str(ids[i]) if ids[i] is not None else "", vector=flat[ends[i] - lengths[i]:ends[i]],
                               uri=(uris[i] or "") if uris else "",
                               metadata=_metadata(metadata[i], path, row + i) if metadata else {})
                   for i in range(len(ids))]
            row += len(ids)

    if handle.metadata.num_rows:
        first = next(handle.iter_batches(batch_size=1, columns=["vector"]))
        dimension = len(first.column("vector")[0].values)
    return VectorFile(path, handle.metadata.num_rows, dimension, meta.get(b"revsearch.model", b"").decode(),
                      meta.get(b"revsearch.model_version", b"").decode(), chunks)
