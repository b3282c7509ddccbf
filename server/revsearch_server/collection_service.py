"""Collections, a shared domain service: a name -> its settings, its index, its bound model and,
for videos, its index of mean vectors; creating, listing, dropping, deleting items.

Built on the catalog (catalog.py: settings and indexes over the vector store) and the served
models. Both the image and the video use cases open collections here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .catalog import Catalog, CollectionSpec
from .domain import CropMode, FaceOptions, IndexKind, MediaType
from .errors import InvalidArgument, NotFound
from .filters import Filter
from .index.base import RowFilter, VectorIndex
from .models import ModelSpec, ServedModels
from .rows import item_of, row_id, rows_of
from .validation import validate_delete_ids
from .vector_index import IndexRequest, VectorIndexSpec
from .video.sampling import SamplingOptions

@dataclass(frozen=True)
class Collection:
    """An open collection."""
    spec: CollectionSpec
    index: VectorIndex
    model: ModelSpec
    # Copy detection: the index of the items' crop vectors (None without copy detection).
    views: VectorIndex | None = None
    # A request's filter (with_filter): `index` searches only matching rows; the crop views carry no
    # fields, so their candidates are kept only when their item's row matches (usecases/images.py).
    where: RowFilter | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def multi_row(self) -> bool:
        """Whether an item may have several rows (crop mode "all", videos: rows.py keys them)."""
        return self.spec.crop_mode is CropMode.ALL_FACES or self.spec.is_video

    def row_filter(self, f: Filter | None) -> RowFilter | None:
        return None if f is None else RowFilter(f, self.multi_row)

    def with_filter(self, f: Filter | None) -> "Collection":
        """The collection searched for the items that match f only (None: every item)."""
        if f is None:
            return self
        where = self.row_filter(f)
        return replace(self, index=self.index.with_filter(where), where=where)

    def with_breadth(self, breadth: int | None) -> "Collection":
        """The collection searched with a request's breadth (None: its own; INVALID_ARGUMENT out of
        its index's range)."""
        if breadth is None:
            return self
        return replace(self, index=self.index.with_breadth(breadth),
                       views=self.views.with_breadth(breadth) if self.views is not None else None)


@dataclass(frozen=True)
class CollectionInfo:
    """What DescribeCollection shows: the settings, the counts and the index in use."""
    spec: CollectionSpec
    item_count: int
    imported_count: int
    vector_index: VectorIndexSpec
    vector_index_detail: str


class Collections:
    def __init__(self, catalog: Catalog, models: ServedModels):
        self._catalog = catalog
        self.models = models

    async def open(self, name: str, media: MediaType | None = None) -> Collection:
        """The collection, NOT_FOUND if it does not exist or its model is not served here, and
        INVALID_ARGUMENT if it holds another media type than `media`."""
        spec, index = await self._catalog.get(name)
        model = self.models.by_name.get(spec.model)
        if model is None:
            raise NotFound(f"collection {name!r} uses model {spec.model!r}, which this server does not "
                           f"serve (available: {', '.join(sorted(self.models.by_name))})")
        if media is MediaType.IMAGE and spec.is_video:
            raise InvalidArgument(f"collection {name!r} holds videos; index and search it with IndexVideo and "
                                  "SearchVideos (revsearch index-videos / search-video)")
        if media is MediaType.VIDEO and not spec.is_video:
            raise InvalidArgument(f"collection {name!r} holds images; index and search it with IndexImages and "
                                  "SearchImages, or create a collection with media type video")
        views = await self._catalog.views(spec) if spec.copy_detection else None
        return Collection(spec, index, model, views)

    async def means(self, collection: Collection) -> VectorIndex:
        """A video collection's index of one mean vector per video (ids: the video ids)."""
        return await self._catalog.means(collection.spec)

    async def create(self, name: str, model: ModelSpec, crop_mode: CropMode, index_kind: IndexKind,
                     description: str, exist_ok: bool, face_options: FaceOptions, media_type: MediaType,
                     sampling: SamplingOptions, copy_views: int = 0, vector_index: IndexRequest = IndexRequest(),
                     filter_keys: tuple[str, ...] = ()) -> tuple[CollectionSpec, bool]:
        """Creates it with settings already resolved (usecases/collections.py fills in defaults; the
        catalog the vector index's)."""
        return await self._catalog.create(name, model, crop_mode, index_kind, description, exist_ok, face_options,
                                          media_type, sampling, copy_views, vector_index, filter_keys)

    async def describe(self, name: str) -> CollectionInfo:
        """Settings, counts (two store calls) and the vector index in use."""
        spec, index = await self._catalog.get(name)
        return await self._info(spec, index)

    def empty(self, spec: CollectionSpec) -> CollectionInfo:
        """A collection just created: nothing stored, no store call needed."""
        return CollectionInfo(spec, 0, 0, *self._catalog.vector_index(spec))

    async def _info(self, spec: CollectionSpec, index: VectorIndex) -> CollectionInfo:
        imported = 0 if spec.is_video or spec.crop_mode is CropMode.ALL_FACES else await index.count_imported()
        return CollectionInfo(spec, await index.count(), imported, *self._catalog.vector_index(spec))

    async def list(self, visible: Callable[[str], bool] = lambda name: True) -> list[CollectionInfo]:
        """The collections whose names `visible` accepts (counted: two store calls each)."""
        out = []
        for spec in await self._catalog.list():
            if not visible(spec.name):
                continue
            _, index = await self._catalog.get(spec.name)
            out.append(await self._info(spec, index))
        return out

    async def drop(self, name: str) -> None:
        await self._catalog.drop(name)

    async def delete_items(self, name: str, ids: list[str]) -> tuple[list[str], list[str]]:
        """(deleted, not found) item ids, each once, in the order given. Items with several rows
        lose all of them, videos their mean vector too."""
        validate_delete_ids(ids)
        spec, index = await self._catalog.get(name)
        if spec.crop_mode is CropMode.ALL_FACES or spec.is_video:
            firsts = await index.get([row_id(i, 0) for i in dict.fromkeys(ids)], vectors=False)
            rows = [r for first in firsts.values() for r in rows_of(item_of(first.id), first.face_count or 1)]
            deleted = list(dict.fromkeys(item_of(r) for r in await index.delete(rows)))
            if spec.is_video:
                await (await self._catalog.means(spec)).delete(deleted)
        else:
            deleted = await index.delete(ids)
        if spec.copy_detection and deleted:  # their crop vectors too
            await (await self._catalog.views(spec)).delete(
                [row_id(i, k) for i in deleted for k in range(1, spec.copy_views + 1)])
        gone = set(deleted)
        return deleted, [i for i in dict.fromkeys(ids) if i not in gone]
