"""How items map to stored rows when one item has several vectors (crop mode "all": one per face).

Such an item's rows are keyed `<item id>~<k>` (k = 0 for its most prominent face). Item ids cannot
contain "~", so row keys never collide with item ids, and the item id of a row is the text before
the "~". Row 0 always exists and records how many rows its item has, so a delete finds them all.
This module is the one place for that key format: filters.py (`id =` as a key range),
index/base.py (RowFilter) and usecases/items.py (listing items in key order) build on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # index/base.py and filters.py build on this module's key format
    from .index.base import Hit

SEPARATOR = "~"
# Sorts after "~" and every character of an item id and of a row's k.
_PAST = "\x7f"
# Searches of such items fetch more rows than items; Milvus caps a search's limit at 16384.
MAX_ROW_FETCH = 16384


def row_id(item_id: str, k: int) -> str:
    return f"{item_id}{SEPARATOR}{k}"


def item_of(row: str) -> str:
    return row.split(SEPARATOR, 1)[0]


def index_of(row: str) -> int:
    """k of row "<item id>~<k>"."""
    return int(row.rsplit(SEPARATOR, 1)[1])


def rows_range(item_id: str) -> tuple[str, str]:
    """[low, high): the key range that holds exactly the rows of item_id (filters.py's `id =`)."""
    return item_id + SEPARATOR, item_id + _PAST


def past_rows(item_id: str) -> str:
    """A key after every row of item_id and before any other item's (where a listing resumes)."""
    return item_id + SEPARATOR + _PAST


def rows_of(item_id: str, count: int) -> list[str]:
    return [row_id(item_id, k) for k in range(max(1, count))]


def collapse_hits(hits: list[Hit], top_k: int) -> list[Hit]:
    """Row hits (best first) -> item hits: each item once, at its best row's score and face box."""
    seen: set[str] = set()
    out: list[Hit] = []
    for hit in hits:
        item = item_of(hit.id)
        if item in seen:
            continue
        seen.add(item)
        out.append(replace(hit, id=item))
        if len(out) == top_k:
            break
    return out
