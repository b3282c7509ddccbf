"""The search pipeline: decode, embed, store and query. Knows nothing of gRPC.

The servicer validates transport-level things and maps results to messages; everything about
images, models, deduplication and collections happens here.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .catalog import Catalog, CollectionSpec, CropMode, IndexKind, MediaType
from .embedding.base import BackendKind
from .embedding.embedder import Embedder, l2_normalize
from .errors import AlreadyExists, InvalidArgument, NotFound, RevsearchError
from .faces.cropper import FaceCrop, FaceCropper, FaceOptions, NoFace
from .imaging import ImageLimits, preprocess, sha256_hex
from .index.base import Hit, Record, VectorIndex, insert_or_undo
from .index.coalescer import SearchCoalescer
from .models import ModelSpec
from .observability import Metrics, or_null
from .rows import collapse_hits, item_of, row_id, rows_of
from .video.sampling import SamplingOptions, VideoLimits

ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_URI = 2048
MAX_METADATA_BYTES = 16 * 1024
MAX_DELETE_IDS = 1000
MAX_BATCH_QUERIES = 64
DEFAULT_TOP_K = 20
VIDEO_DEFAULT_MODEL = "face_dlib"
# Crop mode "all" searches rows (faces) and returns items, so it fetches more rows than items;
# Milvus caps a search's limit at 16384.
MAX_ROW_FETCH = 16384


@dataclass
class IndexInput:
    id: str
    uri: str
    image: bytes
    metadata: dict = field(default_factory=dict)


@dataclass
class IndexOutcome:
    id: str
    uri: str
    status: str  # "indexed" | "duplicate" | "failed" | "no_face"
    error: RevsearchError | None = None
    # Every stored face, most prominent first (one for crop mode "largest", none without faces).
    face_boxes: list[list[float]] = field(default_factory=list)

    @property
    def face_box(self) -> list[float] | None:
        return self.face_boxes[0] if self.face_boxes else None


@dataclass
class Query:
    image: bytes | None = None
    vector: list[float] | np.ndarray | None = None
    item_id: str | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    model: ModelSpec
    backend: BackendKind | None
    query_face_box: list[float] | None = None


def default_id(digest: str) -> str:
    """Content-derived id: re-sending the same bytes maps to the same id, so retries are idempotent."""
    return digest[:32]


def validate_item_fields(item: IndexInput) -> None:
    if item.id and not ID_RE.match(item.id):
        raise InvalidArgument(f"invalid id {item.id!r}: use 1-64 characters from A-Z a-z 0-9 . _ : -")
    if len(item.uri) > MAX_URI:
        raise InvalidArgument(f"uri is {len(item.uri)} characters; the limit is {MAX_URI}")
    size = len(json.dumps(item.metadata))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")


def resolve_top_k(top_k: int | None, max_top_k: int) -> int:
    if top_k is None:
        return min(DEFAULT_TOP_K, max_top_k)
    if top_k < 1 or top_k > max_top_k:
        raise InvalidArgument(f"top_k must be between 1 and {max_top_k}, got {top_k}")
    return top_k


def validate_query_vector(values, dimension: int) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (dimension,):
        raise InvalidArgument(f"query vector has {vector.size} values; this collection's vectors have "
                              f"{dimension}")
    if not np.all(np.isfinite(vector)):
        raise InvalidArgument("query vector contains NaN or infinite values")
    if not np.any(vector):
        raise InvalidArgument("query vector is all zeros; it has no direction to compare")
    return l2_normalize(vector[None, :])


def check_crop_settings(model: ModelSpec, crop_mode: CropMode, face_options: FaceOptions | None) -> FaceOptions:
    """The collection's face options (defaults filled in), or an error naming what does not fit."""
    if crop_mode is CropMode.NONE:
        if model.needs_face_crop:
            raise InvalidArgument(f"model {model.name!r} embeds aligned face crops; create the collection "
                                  "with crop mode 'largest'")
        if face_options is not None:
            raise InvalidArgument("face_options apply only to the face crop modes")
        return FaceOptions()
    return (face_options or FaceOptions()).validate()


def _images_only(spec: CollectionSpec) -> None:
    if spec.is_video:
        raise InvalidArgument(f"collection {spec.name!r} holds videos; index and search it with IndexVideo and "
                              "SearchVideos (revsearch index-videos / search-video)")


class SearchPipeline:
    def __init__(self, embedder: Embedder, catalog: Catalog, decode_pool: Executor, limits: ImageLimits,
                 max_top_k: int, cropper: FaceCropper, video_limits: VideoLimits = VideoLimits(),
                 metrics: Metrics | None = None, search_batch_max_queries: int = 64):
        self.embedder = embedder
        self._metrics = or_null(metrics)
        self._searcher = SearchCoalescer(search_batch_max_queries, metrics)
        self.catalog = catalog
        self.cropper = cropper
        self._pool = decode_pool
        self.limits = limits
        self.max_top_k = max_top_k
        self.video_limits = video_limits

    # -- collections -------------------------------------------------------------------------
    async def create_collection(self, name: str, model: str, crop_mode: CropMode | None, index_kind: IndexKind,
                                description: str, exist_ok: bool, face_options: FaceOptions | None = None,
                                media_type: MediaType = MediaType.IMAGE,
                                video_sampling: SamplingOptions | None = None) -> tuple[CollectionSpec, bool]:
        """crop_mode None: unspecified. Video collections then default to the face pipeline
        (the face model, every face of every sampled frame); image collections to whole images."""
        if media_type is MediaType.VIDEO and not model and VIDEO_DEFAULT_MODEL in self.embedder.models:
            model = VIDEO_DEFAULT_MODEL
        spec = self.embedder.model(model)
        if crop_mode is None:
            video_faces = media_type is MediaType.VIDEO and (spec.needs_face_crop or spec.name == VIDEO_DEFAULT_MODEL)
            crop_mode = CropMode.ALL_FACES if video_faces else CropMode.NONE
        options = check_crop_settings(spec, crop_mode, face_options)
        if media_type is MediaType.IMAGE and video_sampling is not None:
            raise InvalidArgument("video_sampling applies only to video collections (media type video)")
        sampling = (video_sampling or SamplingOptions()).validate(self.video_limits)
        return await self.catalog.create(name, spec, crop_mode, index_kind, description, exist_ok, options,
                                         media_type, sampling)

    async def describe_collection(self, name: str) -> tuple[CollectionSpec, int]:
        spec, index = await self.catalog.get(name)
        return spec, await index.count()

    async def list_collections(self) -> list[tuple[CollectionSpec, int]]:
        out = []
        for spec in await self.catalog.list():
            _, index = await self.catalog.get(spec.name)
            out.append((spec, await index.count()))
        return out

    async def drop_collection(self, name: str) -> None:
        await self.catalog.drop(name)

    async def _collection(self, name: str) -> tuple[CollectionSpec, VectorIndex, ModelSpec]:
        spec, index = await self.catalog.get(name)
        model = self.embedder.models.get(spec.model)
        if model is None:
            raise NotFound(f"collection {name!r} uses model {spec.model!r}, which this server does not "
                           f"serve (available: {', '.join(sorted(self.embedder.models))})")
        return spec, index, model

    # -- images ------------------------------------------------------------------------------
    async def _prepare(self, images: list[bytes], model: ModelSpec, faces: FaceOptions | None,
                       all_faces: bool = False) -> list[list[FaceCrop] | RevsearchError]:
        """The model inputs of each image (its face crops when faces is set), or its error."""
        if faces is not None:
            return await self.cropper.crops(images, model, faces, all_faces)  # times decode and detect
        if not images:
            return []
        loop = asyncio.get_running_loop()

        async def one(data: bytes):
            try:
                pixels = await loop.run_in_executor(self._pool, preprocess, data, self.limits, model.input_size,
                                                    model.resize_to)
                return [FaceCrop(pixels, None)]
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            return list(await asyncio.gather(*(one(d) for d in images)))

    async def _prepare_query(self, data: bytes, model: ModelSpec, faces: FaceOptions | None) -> FaceCrop:
        [prepared] = await self._prepare([data], model, faces)
        if isinstance(prepared, NoFace):
            raise NoFace(f"the query image has {prepared}") from None
        if isinstance(prepared, RevsearchError):
            raise prepared
        return prepared[0]  # the most prominent face: what a query photo is about

    async def embed_image(self, data: bytes, model_name: str = "", collection: str = ""
                          ) -> tuple[np.ndarray, ModelSpec, BackendKind]:
        if collection:
            spec, _, model = await self._collection(collection)
            faces = spec.crop_options
        else:
            model = self.embedder.model(model_name)
            faces = FaceOptions() if model.needs_face_crop else None
        crop = await self._prepare_query(data, model, faces)
        vectors = await self.embedder.embed(model, crop.pixels[None])
        return vectors[0], model, self.embedder.backend.kind

    async def index_batch(self, collection: str, items: list[IndexInput]) -> list[IndexOutcome]:
        """Indexes items; each gets its own outcome. Nothing of a failed item is stored."""
        spec, index, model = await self._collection(collection)
        _images_only(spec)
        multi = spec.crop_mode is CropMode.ALL_FACES  # several rows per item, keyed by rows.row_id
        key = (lambda item_id: row_id(item_id, 0)) if multi else (lambda item_id: item_id)
        outcomes: list[IndexOutcome | None] = [None] * len(items)
        digests = [sha256_hex(it.image) if it.image else "" for it in items]

        for i, item in enumerate(items):
            try:
                validate_item_fields(item)
            except RevsearchError as exc:
                outcomes[i] = IndexOutcome(item.id, item.uri, "failed", exc)
        todo = [i for i in range(len(items)) if outcomes[i] is None]
        prepared = dict(zip(todo, await self._prepare([items[i].image for i in todo], model, spec.crop_options,
                                                      all_faces=multi)))
        for i, result in prepared.items():
            if isinstance(result, NoFace):
                outcomes[i] = IndexOutcome(items[i].id, items[i].uri, "no_face", result)
            elif isinstance(result, RevsearchError):
                outcomes[i] = IndexOutcome(items[i].id, items[i].uri, "failed", result)
        live = [i for i in range(len(items)) if outcomes[i] is None]

        # Deduplicate by content: against the collection, then within this batch.
        with self._metrics.stage("dedup"):
            known = {d: item_of(r)
                     for d, r in (await index.ids_for_sha256(sorted({digests[i] for i in live}))).items()}
            ids = {i: items[i].id or default_id(digests[i]) for i in live}
            clashes = {item_of(r) for r in await index.existing_ids(
                sorted({key(ids[i]) for i in live if digests[i] not in known}))}
        first_in_batch: dict[str, int] = {}
        fresh, fresh_ids = [], set()
        for i in live:
            digest = digests[i]
            if digest in known:
                outcomes[i] = IndexOutcome(known[digest], items[i].uri, "duplicate")
            elif digest in first_in_batch:
                outcomes[i] = IndexOutcome(ids[first_in_batch[digest]], items[i].uri, "duplicate")
            elif ids[i] in clashes or ids[i] in fresh_ids:
                outcomes[i] = IndexOutcome(ids[i], items[i].uri, "failed", AlreadyExists(
                    f"id {ids[i]!r} is already used for a different image in {collection!r}"))
            else:
                first_in_batch[digest] = i
                fresh.append(i)
                fresh_ids.add(ids[i])
        if not fresh:
            return outcomes  # type: ignore[return-value]

        crops = [(i, k, crop) for i in fresh for k, crop in enumerate(prepared[i])]
        try:
            vectors = await self.embedder.embed(model, np.stack([c.pixels for _, _, c in crops]))
            now = int(time.time() * 1000)
            # One insert for the batch, whole or not at all: a request cancelled during it (client
            # gone, deadline passed) gets its rows deleted again once the write has finished.
            with self._metrics.stage("index"):
                await insert_or_undo(index, [
                    Record(id=row_id(ids[i], k) if multi else ids[i], vector=vectors[n], uri=items[i].uri,
                           sha256=digests[i], model=model.name, model_version=model.version, created_at_ms=now,
                           metadata=items[i].metadata, face_box=crop.box,
                           face_count=len(prepared[i]) if multi else None)
                    for n, (i, k, crop) in enumerate(crops)])
        except RevsearchError as exc:
            for i in fresh:
                outcomes[i] = IndexOutcome(ids[i], items[i].uri, "failed", exc)
            return outcomes  # type: ignore[return-value]
        for i in fresh:
            outcomes[i] = IndexOutcome(ids[i], items[i].uri, "indexed",
                                       face_boxes=[c.box for c in prepared[i] if c.box is not None])
        return outcomes  # type: ignore[return-value]

    async def search(self, collection: str, *, image: bytes | None = None, vector=None,
                     item_id: str | None = None, top_k: int | None = None) -> SearchResult:
        [result] = await self.search_batch(collection, [Query(image, vector, item_id)], top_k)
        if isinstance(result, RevsearchError):
            raise result
        return result

    async def search_batch(self, collection: str, queries: list[Query], top_k: int | None = None
                           ) -> list[SearchResult | RevsearchError]:
        """One result or error per query. Image queries are prepared and embedded as one batch,
        and the index answers every query vector in one search."""
        k = resolve_top_k(top_k, self.max_top_k)
        if not queries:
            raise InvalidArgument("queries is empty; give 1 to {} queries".format(MAX_BATCH_QUERIES))
        if len(queries) > MAX_BATCH_QUERIES:
            raise InvalidArgument(f"{len(queries)} queries given; at most {MAX_BATCH_QUERIES} per call")
        spec, index, model = await self._collection(collection)
        _images_only(spec)
        multi = spec.crop_mode is CropMode.ALL_FACES
        out: list[SearchResult | RevsearchError | None] = [None] * len(queries)
        vectors: dict[int, np.ndarray] = {}
        boxes: dict[int, list[float] | None] = {}

        images = [i for i, q in enumerate(queries) if q.image is not None]
        if images:
            prepared = await self._prepare([queries[i].image for i in images], model, spec.crop_options)
            ok = []
            for i, crops in zip(images, prepared):
                if isinstance(crops, NoFace):
                    out[i] = NoFace(f"the query image has {crops}")
                elif isinstance(crops, RevsearchError):
                    out[i] = crops
                else:
                    ok.append((i, crops[0]))  # the most prominent face: what a query photo is about
            if ok:
                embedded = await self.embedder.embed(model, np.stack([c.pixels for _, c in ok]))
                for (i, crop), v in zip(ok, embedded):
                    vectors[i], boxes[i] = v, crop.box
        wanted = {i: row_id(q.item_id, 0) if multi else q.item_id for i, q in enumerate(queries)
                  if q.image is None and q.vector is None and q.item_id}
        found = await index.get(sorted(set(wanted.values()))) if wanted else {}
        for i, q in enumerate(queries):
            if q.image is not None:
                continue
            try:
                if q.vector is not None:
                    vectors[i] = validate_query_vector(q.vector, spec.dimension)[0]
                elif q.item_id:
                    if wanted[i] not in found:
                        raise NotFound(f"no item with id {q.item_id!r} in collection {collection!r}")
                    vectors[i] = found[wanted[i]].vector
                else:
                    raise InvalidArgument("a query is required: set image, vector or item_id")
            except RevsearchError as exc:
                out[i] = exc
        if vectors:
            order = sorted(vectors)
            matrix = np.stack([vectors[i] for i in order]).astype(np.float32)
            with self._metrics.stage("search"):
                hits = await (self._search_items(index, matrix, k) if multi
                              else self._searcher.search(index, matrix, k))
            backend = self.embedder.backend.kind if images else None
            for i, h in zip(order, hits):
                out[i] = SearchResult(hits=h, model=model, backend=backend if i in boxes else None,
                                      query_face_box=boxes.get(i))
        return out  # type: ignore[return-value]

    async def _search_items(self, index: VectorIndex, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top k items when items have several rows: fetch more rows until k distinct items are
        found or the collection (or Milvus's limit) is exhausted."""
        fetch = min(MAX_ROW_FETCH, max(4 * k, k + 32))
        while True:
            rows = await self._searcher.search(index, queries, fetch)
            items = [collapse_hits(r, k) for r in rows]
            short = any(len(it) < k and len(r) == fetch for it, r in zip(items, rows))
            if not short or fetch == MAX_ROW_FETCH:
                return items
            fetch = min(MAX_ROW_FETCH, fetch * 4)

    async def delete(self, collection: str, ids: list[str]) -> tuple[list[str], list[str]]:
        if not ids:
            raise InvalidArgument("ids is empty; give 1 to 1000 ids to delete")
        if len(ids) > MAX_DELETE_IDS:
            raise InvalidArgument(f"{len(ids)} ids given; delete at most {MAX_DELETE_IDS} per call")
        bad = [i for i in ids if not ID_RE.match(i)]
        if bad:
            raise InvalidArgument(f"invalid id {bad[0]!r}: use 1-64 characters from A-Z a-z 0-9 . _ : -")
        spec, index = await self.catalog.get(collection)
        if spec.crop_mode is CropMode.ALL_FACES or spec.is_video:  # items with several rows
            firsts = await index.get([row_id(i, 0) for i in dict.fromkeys(ids)])
            rows = [r for first in firsts.values() for r in rows_of(item_of(first.id), first.face_count or 1)]
            deleted = list(dict.fromkeys(item_of(r) for r in await index.delete(rows)))
            if spec.is_video:
                await (await self.catalog.means(spec)).delete(deleted)
        else:
            deleted = await index.delete(ids)
        gone = set(deleted)
        return deleted, [i for i in dict.fromkeys(ids) if i not in gone]
