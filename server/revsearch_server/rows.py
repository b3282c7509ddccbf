"""How items map to stored rows when one item has several vectors (crop mode "all": one per face).

Such an item's rows are keyed `<item id>~<k>` (k = 0 for its most prominent face). Item ids cannot
contain "~", so row keys never collide with item ids, and the item id of a row is the text before
the "~". Row 0 always exists and records how many rows its item has, so a delete finds them all.
"""

from __future__ import annotations

from dataclasses import replace

from .index.base import Hit

SEPARATOR = "~"
# Searches of such items fetch more rows than items; Milvus caps a search's limit at 16384.
MAX_ROW_FETCH = 16384


def row_id(item_id: str, k: int) -> str:
    return f"{item_id}{SEPARATOR}{k}"


def item_of(row: str) -> str:
    return row.split(SEPARATOR, 1)[0]


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
