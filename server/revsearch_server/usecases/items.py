"""Item use cases of image collections: read items by id, page through them, change their metadata.

Reads and writes the stored rows directly: nothing is embedded again. Items with several rows
(crop mode "all": one per face, rows.py) show as one item with every face box, and are updated
on every row. Knows nothing of gRPC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from ..collection_service import Collection, Collections
from ..domain import FaceBox, MediaType
from ..errors import InvalidArgument, NotFound, RevsearchError
from ..filters import parse_filter
from ..index.base import Record
from ..page_tokens import decode_page_token, encode_page_token
from ..rows import index_of, item_of, past_rows, row_id, rows_of
from ..validation import validate_id, validate_item_fields

MAX_GET_IDS = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Rows a multi-row listing reads per store call: Milvus caps a query's limit at 16,384.
_MAX_ROWS_PER_QUERY = 16384


@dataclass
class StoredImage:
    id: str
    uri: str
    metadata: dict
    sha256: str
    created_at_ms: int
    face_boxes: list[FaceBox] = field(default_factory=list)
    vector: np.ndarray | None = None  # only when asked for
    imported: bool = False  # stored by ImportVectors (no image)


@dataclass
class ImagePage:
    images: list[StoredImage]
    next_page_token: str  # "" on the last page
    page_size: int  # the size used (a request over the limit is capped)


@dataclass(frozen=True)
class ImageChange:
    """New values for one item; which of them apply is the call's mask."""
    id: str
    metadata: dict = field(default_factory=dict)
    uri: str = ""


@dataclass(frozen=True)
class UpdateMask:
    """AIP-134 paths: the whole metadata, some of its keys (each a path of nested keys), the uri."""
    metadata: bool = False
    keys: tuple[tuple[str, ...], ...] = ()
    uri: bool = False

    @staticmethod
    def parse(paths: list[str]) -> "UpdateMask | None":
        """None for no paths (the request's populated fields decide); INVALID_ARGUMENT for a path
        other than "uri", "metadata" and "metadata.<key>[.<key>...]" (a key with dots in backticks)."""
        if not paths:
            return None
        whole, keys, uri = False, [], False
        for path in paths:
            if path == "uri":
                uri = True
            elif path == "metadata":
                whole = True
            elif path.startswith("metadata."):
                keys.append(_key_path(path))
            else:
                raise InvalidArgument(f"update_mask path {path!r} cannot be updated; use \"metadata\", "
                                      "\"metadata.<key>\" or \"uri\"")
        return UpdateMask(whole, tuple(keys), uri)


class UpdateStatus(Enum):
    UPDATED = "updated"
    NOT_FOUND = "not_found"
    FAILED = "failed"


@dataclass
class UpdateOutcome:
    id: str
    status: UpdateStatus
    error: RevsearchError | None = None
    image: StoredImage | None = None


class ImageItems:
    def __init__(self, collections: Collections):
        self._collections = collections

    async def get(self, collection: str, ids: list[str], vectors: bool = False
                  ) -> tuple[list[StoredImage], list[str]]:
        """(the stored items in the order asked, the ids not stored)."""
        ids = _checked_ids(ids, "ids")
        c = await self._collections.open(collection, MediaType.IMAGE)
        found = await self._read(c, ids, vectors)
        return [found[i] for i in ids if i in found], [i for i in ids if i not in found]

    async def list(self, collection: str, filter_text: str = "", page_size: int = 0, page_token: str = "",
                   vectors: bool = False) -> ImagePage:
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        f = parse_filter(filter_text)
        digest = f.digest if f else ""
        after = decode_page_token(page_token, collection, digest) if page_token else ""
        c = await self._collections.open(collection, MediaType.IMAGE)
        where = c.row_filter(f)
        if c.multi_row:
            firsts, more = await self._first_rows(c, after, size, where)
            images = await self._with_faces(c, firsts, vectors)
        else:
            rows = await c.index.list_rows(after, size + 1, where, vectors)  # one more: is there a next page?
            more, rows = len(rows) > size, rows[:size]
            images = [_image(r, [r.face_box] if r.face_box else [], vectors) for r in rows]
        token = encode_page_token(collection, digest, images[-1].id) if more and images else ""
        return ImagePage(images, token, size)

    async def update(self, collection: str, changes: list[ImageChange], paths: list[str]) -> list[UpdateOutcome]:
        """One outcome per change. The items' rows are rewritten in one write with their vectors and
        local features as they are."""
        ids = _checked_ids([ch.id for ch in changes], "updates", unique=True)
        mask = UpdateMask.parse(paths)
        c = await self._collections.open(collection, MediaType.IMAGE)
        rows = await self._rows(c, ids)
        out, writes = [], []
        for ch in changes:
            current = rows.get(ch.id)
            if not current:
                out.append(UpdateOutcome(ch.id, UpdateStatus.NOT_FOUND,
                                         NotFound(f"no item with id {ch.id!r} in collection {c.name!r}")))
                continue
            m = mask or UpdateMask(metadata=True, uri=bool(ch.uri))
            metadata = _apply(current[0].metadata, ch.metadata, m)
            uri = ch.uri if m.uri else current[0].uri
            try:
                validate_item_fields("", uri, metadata)
            except RevsearchError as exc:
                out.append(UpdateOutcome(ch.id, UpdateStatus.FAILED, exc))
                continue
            new = [replace(r, metadata=metadata, uri=uri) for r in current]
            writes.extend(new)
            boxes = [r.face_box for r in new if r.face_box is not None]
            out.append(UpdateOutcome(ch.id, UpdateStatus.UPDATED, image=_image(new[0], boxes, False)))
        await c.index.replace(writes)  # all or nothing: an error here fails the whole call
        return out

    # -- reading rows -------------------------------------------------------------------------
    async def _read(self, c: Collection, ids: list[str], vectors: bool) -> dict[str, StoredImage]:
        if not c.multi_row:
            return {i: _image(r, [r.face_box] if r.face_box else [], vectors)
                    for i, r in (await c.index.get(ids, vectors)).items()}
        firsts = await c.index.get([row_id(i, 0) for i in ids], vectors)
        return {im.id: im for im in await self._with_faces(c, list(firsts.values()), vectors)}

    async def _rows(self, c: Collection, ids: list[str]) -> dict[str, list[Record]]:
        """Every stored row of each item (with vectors: an update writes them back as they are)."""
        if not c.multi_row:
            return {i: [r] for i, r in (await c.index.get(ids)).items()}
        firsts = await c.index.get([row_id(i, 0) for i in ids])
        rest = await c.index.get([k for r in firsts.values() for k in rows_of(item_of(r.id), r.face_count or 1)[1:]])
        out: dict[str, list[Record]] = {}
        for r in sorted([*firsts.values(), *rest.values()], key=lambda r: index_of(r.id)):
            out.setdefault(item_of(r.id), []).append(r)
        return out

    async def _first_rows(self, c: Collection, after: str, size: int, where) -> tuple[list[Record], bool]:
        """Row 0 of up to `size` items after item `after`, in key order, and whether more follow."""
        key = past_rows(after) if after else ""
        firsts: list[Record] = []
        per_query = min(_MAX_ROWS_PER_QUERY, (size + 1) * 8)
        while True:
            batch = await c.index.list_rows(key, per_query, where, vectors=False)
            for r in batch:
                if r.id == row_id(item_of(r.id), 0):
                    if len(firsts) == size:
                        return firsts, True
                    firsts.append(r)
            if len(batch) < per_query:
                return firsts, False
            key = batch[-1].id

    async def _with_faces(self, c: Collection, firsts: list[Record], vectors: bool) -> list[StoredImage]:
        """Multi-row items from their row 0 (vector: the most prominent face's) with every face box."""
        need = [k for r in firsts for k in rows_of(item_of(r.id), r.face_count or 1)[1:]]
        rest = await c.index.get(need, vectors=False) if need else {}
        out = []
        for r in firsts:
            keys = rows_of(item_of(r.id), r.face_count or 1)
            boxes = [b for b in [r.face_box] + [rest[k].face_box if k in rest else None for k in keys[1:]] if b]
            image = _image(r, boxes, vectors)
            image.id = item_of(r.id)
            out.append(image)
        return out


def _checked_ids(ids: list[str], name: str, unique: bool = False) -> list[str]:
    if not ids:
        raise InvalidArgument(f"{name} is empty; give 1 to {MAX_GET_IDS}")
    if len(ids) > MAX_GET_IDS:
        raise InvalidArgument(f"{len(ids)} {name} given; at most {MAX_GET_IDS} per call")
    for i in ids:
        if not i:
            raise InvalidArgument(f"{name}: an id is empty")
        validate_id(i)
    distinct = list(dict.fromkeys(ids))
    if unique and len(distinct) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InvalidArgument(f"{name}: id {twice[0]!r} is given more than once; send one update per id")
    return distinct


def _image(r: Record, boxes: list[FaceBox], vectors: bool) -> StoredImage:
    return StoredImage(id=r.id, uri=r.uri, metadata=r.metadata or {}, sha256=r.sha256, created_at_ms=r.created_at_ms,
                       face_boxes=boxes, vector=r.vector if vectors and r.vector.size else None,
                       imported=not r.sha256)


def _key_path(path: str) -> tuple[str, ...]:
    """"metadata.a.b" -> ("a", "b"); a segment in backticks may hold dots ("metadata.`a.b`")."""
    rest, keys = path[len("metadata."):], []
    while rest:
        if rest.startswith("`"):
            end = rest.find("`", 1)
            if end < 0:
                raise InvalidArgument(f"update_mask path {path!r}: a backtick is not closed")
            keys.append(rest[1:end])
            rest = rest[end + 1:]
            if rest and not rest.startswith("."):
                raise InvalidArgument(f"update_mask path {path!r}: expected \".\" after a quoted key")
            rest = rest[1:]
        else:
            key, _, rest = rest.partition(".")
            keys.append(key)
        if not keys[-1]:
            raise InvalidArgument(f"update_mask path {path!r} has an empty key")
    return tuple(keys)


def _apply(current: dict, given: dict, mask: UpdateMask) -> dict:
    """The metadata after the update: replaced (mask.metadata), then each masked key set from given,
    or removed where given lacks it."""
    out = copy.deepcopy(given if mask.metadata else current or {})
    for keys in mask.keys:
        value, present = given, True
        for k in keys:
            if isinstance(value, dict) and k in value:
                value = value[k]
            else:
                present = False
                break
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if not present:
                    node = None
                    break
                node[k] = {}
            node = node[k]
        if node is None:
            continue
        if present:
            node[keys[-1]] = copy.deepcopy(value)
        else:
            node.pop(keys[-1], None)
    return out
