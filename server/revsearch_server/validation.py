"""Checks of request values that every use case shares: ids, uris, metadata, top_k, query vectors.

Each raises errors.InvalidArgument with a message that says what to change.
"""

from __future__ import annotations

import json
import re

import numpy as np

from .domain import l2_normalize
from .errors import InvalidArgument

ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_URI = 2048
MAX_METADATA_BYTES = 16 * 1024
MAX_DELETE_IDS = 1000
MAX_BATCH_QUERIES = 64
MAX_IMPORT_ITEMS_PER_MESSAGE = 10_000
DEFAULT_TOP_K = 20


def default_id(digest: str) -> str:
    """Content-derived id: re-sending the same bytes maps to the same id, so retries are idempotent."""
    return digest[:32]


def validate_id(item_id: str) -> str:
    if not ID_RE.match(item_id):
        raise InvalidArgument(f"invalid id {item_id!r}: use 1-64 characters from A-Z a-z 0-9 . _ : -")
    return item_id


def validate_item_fields(item_id: str, uri: str, metadata: dict) -> None:
    """An item's id (optional: empty takes the content's id), uri and metadata."""
    if item_id:
        validate_id(item_id)
    if len(uri) > MAX_URI:
        raise InvalidArgument(f"uri is {len(uri)} characters; the limit is {MAX_URI}")
    size = len(json.dumps(metadata))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")


def resolve_top_k(top_k: int | None, max_top_k: int) -> int:
    if top_k is None:
        return min(DEFAULT_TOP_K, max_top_k)
    if top_k < 1 or top_k > max_top_k:
        raise InvalidArgument(f"top_k must be between 1 and {max_top_k}, got {top_k}")
    return top_k


def validate_query_vector(values, dimension: int) -> np.ndarray:
    """The query vector as float32 [1, D], L2-normalised."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (dimension,):
        raise InvalidArgument(f"query vector has {vector.size} values; this collection's vectors have "
                              f"{dimension}")
    if not np.all(np.isfinite(vector)):
        raise InvalidArgument("query vector contains NaN or infinite values")
    if not np.any(vector):
        raise InvalidArgument("query vector is all zeros; it has no direction to compare")
    return l2_normalize(vector[None, :])


def validate_delete_ids(ids: list[str]) -> list[str]:
    if not ids:
        raise InvalidArgument(f"ids is empty; give 1 to {MAX_DELETE_IDS} ids to delete")
    if len(ids) > MAX_DELETE_IDS:
        raise InvalidArgument(f"{len(ids)} ids given; delete at most {MAX_DELETE_IDS} per call")
    for i in ids:
        validate_id(i)
    return ids


def validate_min_score(min_score: float | None) -> None:
    """A search's minimum cosine similarity: -1..1 (None: no minimum)."""
    if min_score is not None and not (-1.0 <= min_score <= 1.0):  # NaN fails too
        raise InvalidArgument(f"min_score must be between -1 and 1 (a cosine similarity), got {min_score}")
