"""The catalog: each collection's settings (bound model, crop mode, index backend, stored-row
layout) and its indexes, over a VectorStore and exact-KNN directories.

Milvus collections keep their settings in the Milvus collection's description, so every
server process pointed at the same Milvus sees the same catalog. Exact-KNN collections keep
theirs in a spec.json next to their vectors under the data directory.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .copies import FEATURE_FORMAT
from .copy_vectors import VIEW_DIMENSION
from .domain import CropMode, FaceOptions, IndexKind, MediaType, SamplingMode
from .errors import AlreadyExists, InvalidArgument, NotFound
from .index.base import CURRENT_LAYOUT, LAYOUT_JSON_FACE_FIELDS, VectorIndex, VectorStore
from .models import ModelSpec
from .vector_index import IndexRequest, IndexType, VectorIndexSpec
from .video.sampling import SamplingOptions

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_DESCRIPTION = 1024


# A video collection keeps its videos' mean vectors in a second index of this suffix; user names
# cannot contain "__", so it never clashes with a collection.
MEANS_SUFFIX = "__means"
# A copy-detection collection keeps its items' crop vectors (rows `<id>~k`, copies.VIEWS) in a second
# index of this suffix, so the collection's own rows stay one global vector per item.
VIEWS_SUFFIX = "__views"
# CollectionSpec.copy_vectors of collections whose copy vectors come from one forward pass.
COPY_VECTORS_REGIONS = "regions"


# What new copy-detection collections get: crop views of the leading VIEW_DIMENSION dimensions
# (compact ones) and local features in copies.FEATURE_FORMAT (collections created before: 0, all of
# them, and 2).
NEW_VIEW_DIMENSION, NEW_FEATURE_FORMAT = VIEW_DIMENSION, FEATURE_FORMAT


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    model: str
    model_version: str
    dimension: int
    crop_mode: CropMode
    index_kind: IndexKind
    created_at_ms: int
    description: str
    model_trained: bool
    face_options: FaceOptions = FaceOptions()
    media_type: MediaType = MediaType.IMAGE
    video_sampling: SamplingOptions = SamplingOptions()
    # How rows are stored (index/milvus.py); settings written before layouts existed are layout 1.
    layout: int = LAYOUT_JSON_FACE_FIELDS
    # Copy detection (copies.py): crop vectors per item in the views index and local features per
    # row. Settings written before it have neither (False, 0).
    copy_detection: bool = False
    copy_views: int = 0
    # How the copy vectors are made: "" (collections created before one forward pass: every crop view
    # embedded by its own model run, vectors of the model's dimension) or COPY_VECTORS_REGIONS
    # (copy_vectors.py: the model's regional vectors, PCA-whitened; `dimension` is the whitened one).
    copy_vectors: str = ""
    # The collection's vectors are stored as float16 (servers from Milvus 2.4; Milvus Lite with
    # --milvus-float16 on; MilvusStore.supports_float16): half the vector bytes.
    float16_vectors: bool = False
    # Its vector index (vector_index.py); None: created before the index could be chosen (the store's
    # choice then: FLAT on Lite, AUTOINDEX on a server).
    vector_index: VectorIndexSpec | None = None
    # Metadata keys whose string values have a column of their own for filters (index/milvus.py; Milvus
    # only: exact KNN evaluates every filter in Python). Settings written before have none.
    filter_keys: tuple[str, ...] = ()
    # Its views index stores a key and a vector a row, no empty item fields (compact collections from
    # this release; Lite: 400k such rows took 356 instead of 506 MB). Settings written before: False.
    lean_views: bool = False
    # Its crop views keep this many leading dimensions of the whitened vectors (copy_vectors.leading;
    # compact collections from this release: copy_vectors.VIEW_DIMENSION); 0: all `dimension` of them
    # (settings written before).
    view_dimension: int = 0
    # The text format of its items' local features (copies.LocalFeatures.encode): 3 (7 bits a character)
    # from this release; settings written before: 2 (base85).
    feature_format: int = 2

    def to_json(self) -> str:
        d = asdict(self)
        d["crop_mode"], d["index_kind"] = self.crop_mode.value, self.index_kind.value
        d["media_type"] = self.media_type.value
        d["vector_index"] = self.vector_index.to_dict() if self.vector_index else None
        return json.dumps({"revsearch_collection": 1, **d})

    @classmethod
    def from_json(cls, text: str) -> "CollectionSpec | None":
        try:
            d = json.loads(text)
        except (TypeError, ValueError):
            return None
        if not isinstance(d, dict) or d.pop("revsearch_collection", None) != 1:
            return None
        d["crop_mode"], d["index_kind"] = CropMode(d["crop_mode"]), IndexKind(d["index_kind"])
        d["face_options"] = FaceOptions(**d.get("face_options", {}))
        d["media_type"] = MediaType(d.get("media_type", "image"))
        sampling = d.get("video_sampling", {})
        d["video_sampling"] = SamplingOptions(**sampling | {"mode": SamplingMode(sampling.get("mode", "uniform"))})
        if d.get("vector_index"):
            d["vector_index"] = VectorIndexSpec.from_dict(d["vector_index"])
        d["filter_keys"] = tuple(d.get("filter_keys", ()))
        return cls(**d)

    @property
    def is_video(self) -> bool:
        return self.media_type is MediaType.VIDEO

    @property
    def views_dimension(self) -> int:
        """The dimensions of its crop views' vectors."""
        return self.view_dimension or self.dimension

    @property
    def compact_copies(self) -> bool:
        """Copy detection whose five vectors come from one forward pass (copy_vectors.py)."""
        return self.copy_detection and self.copy_vectors == COPY_VECTORS_REGIONS

    @property
    def copy_detection_detail(self) -> str:
        """Why copy detection is on or off for this collection, and its stored layout (DescribeCollection)."""
        if self.compact_copies:
            views = f"{self.views_dimension}-d" if self.views_dimension != self.dimension else "the same"
            layout = ("" if self.view_dimension and self.feature_format >= 3 else
                      f"; an earlier compact layout, {self.views_dimension}-d crop vectors and base85 local features: "
                      "re-index into a new collection for about 1.1 KB less an item")
            return (f"on: each item stores its whole-image vector ({self.dimension}-d) and {self.copy_views} crop "
                    f"vectors ({views}) from one forward pass (PCA-whitened regional GeM, "
                    f"{'float16' if self.float16_vectors else 'float32'}) and compact local features (format "
                    f"{self.feature_format}); image searches verify candidates by local features unless the request "
                    f"sets copy_detection false{layout}")
        if self.copy_detection:
            return (f"on (first layout, before one forward pass: re-index into a new collection for a 6x smaller one): "
                    f"each item stores its whole-image vector, {self.copy_views} crop vectors ({self.dimension}-d "
                    "float32, one model run each) and local features; image searches verify candidates by local "
                    "features unless the request sets copy_detection false")
        if self.is_video or self.crops_faces:
            return "off: copy detection is for whole-image collections of images"
        if self.layout < CURRENT_LAYOUT:
            return ("off: created before copy detection, its items have no local features or crop vectors "
                    "(searches use the global vector; re-index into a new collection to get them)")
        if not self.model_trained:
            return "off: the model is UNTRAINED (copy detection is for trained general-image models)"
        return "off"

    @property
    def crops_faces(self) -> bool:
        return self.crop_mode is not CropMode.NONE

    @property
    def crop_options(self) -> FaceOptions | None:
        """The face options to crop with, or None for whole-image collections."""
        return self.face_options if self.crops_faces else None

    def same_settings(self, other: "CollectionSpec", index_asked: bool = False) -> bool:
        """index_asked: the vector index was asked for (not left to the default), so it must match too;
        other's filter keys likewise, where it names any."""
        return ((self.model, self.crop_mode, self.index_kind, self.face_options, self.media_type,
                 self.video_sampling) == (other.model, other.crop_mode, other.index_kind, other.face_options,
                                          other.media_type, other.video_sampling)
                and (not index_asked or self.vector_index == other.vector_index)
                and (not other.filter_keys or self.filter_keys == other.filter_keys))


FILTER_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_FILTER_KEYS = 8


def validate_filter_keys(keys) -> tuple[str, ...]:
    """A collection's filter keys: at most MAX_FILTER_KEYS distinct top-level metadata keys, each a name
    Milvus takes as part of a field name."""
    keys = tuple(keys)
    if len(keys) > MAX_FILTER_KEYS:
        raise InvalidArgument(f"{len(keys)} filter_keys given; at most {MAX_FILTER_KEYS}")
    for k in keys:
        if not FILTER_KEY_RE.match(k):
            raise InvalidArgument(f"filter key {k!r}: use 1-63 characters, a letter or '_' first, then letters, "
                                  "digits or '_' (a top-level metadata key)")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("filter_keys names a key twice")
    return keys


def validate_name(name: str) -> str:
    if not name:
        raise InvalidArgument("collection name is required")
    if not NAME_RE.match(name) or "__" in name:
        raise InvalidArgument(
            f"invalid collection name {name!r}: use 1-63 characters, a letter first, then letters, "
            "digits or single '_'")
    return name


class Catalog:
    # Settings never change after creation; caching them saves two Milvus calls per request.
    # The short life bounds how long a drop by another server process goes unnoticed here.
    SPEC_CACHE_S = 5.0

    def __init__(self, milvus: VectorStore, knn_root: Path, knn_index: Callable[[Path, int], VectorIndex]):
        self._milvus = milvus
        self._knn_index = knn_index
        self._specs: dict[str, tuple[float, CollectionSpec]] = {}
        self._knn_root = knn_root
        self._knn: dict[str, tuple[CollectionSpec, VectorIndex]] = {}
        self._knn_means: dict[str, VectorIndex] = {}
        self._lock = asyncio.Lock()
        # A collection another server process dropped (and maybe re-created with other settings) is
        # forgotten at the first NOT_FOUND from the store, not up to SPEC_CACHE_S later.
        milvus.on_missing(lambda name: self._specs.pop(name.split("__")[0], None))
        knn_root.mkdir(parents=True, exist_ok=True)
        for spec_file in sorted(knn_root.glob("*/spec.json")):
            spec = CollectionSpec.from_json(spec_file.read_text())
            if spec is not None:
                self._knn[spec.name] = (spec, knn_index(spec_file.parent, spec.dimension))

    async def create(self, name: str, model: ModelSpec, crop_mode: CropMode, index_kind: IndexKind,
                     description: str, exist_ok: bool, face_options: FaceOptions = FaceOptions(),
                     media_type: MediaType = MediaType.IMAGE, video_sampling: SamplingOptions = SamplingOptions(),
                     copy_views: int = 0, vector_index: IndexRequest = IndexRequest(),
                     filter_keys: tuple[str, ...] = ()) -> tuple[CollectionSpec, bool]:
        """copy_views > 0: a copy-detection collection with that many crop views per item; of the
        compact kind (one forward pass, whitened vectors, float16 where it pays, supports_float16) when the
        model has a copy descriptor. vector_index: as asked, defaults filled in (INVALID_ARGUMENT for
        an index the store does not build)."""
        validate_name(name)
        filter_keys = validate_filter_keys(filter_keys)
        if index_kind is IndexKind.EXACT_KNN:
            index = VectorIndexSpec.resolve(vector_index, (IndexType.FLAT,), IndexType.FLAT, "the exact-KNN backend")
        else:
            index = VectorIndexSpec.resolve(vector_index, self._milvus.index_types(), self._milvus.default_index_type,
                                            self._milvus.describe())
        asked = vector_index != IndexRequest()
        compact = copy_views > 0 and model.has_copy_descriptor
        if compact and copy_views != model.copy_regions - 1:
            raise InvalidArgument(f"model {model.name} gives {model.copy_regions - 1} crop views, not {copy_views}")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description is {len(description)} characters; the limit is {MAX_DESCRIPTION}")
        compact_in_milvus = compact and index_kind is not IndexKind.EXACT_KNN  # compact copy rows in Milvus
        spec = CollectionSpec(name=name, model=model.name, model_version=model.version,
                              dimension=model.copy_dimension if compact else model.dimension,
                              crop_mode=crop_mode, index_kind=index_kind,
                              created_at_ms=int(time.time() * 1000), description=description,
                              model_trained=model.trained, face_options=face_options, media_type=media_type,
                              video_sampling=video_sampling, layout=CURRENT_LAYOUT,
                              copy_detection=copy_views > 0, copy_views=copy_views,
                              copy_vectors=COPY_VECTORS_REGIONS if compact else "",
                              float16_vectors=compact_in_milvus and await self._milvus.supports_float16(),
                              vector_index=index, filter_keys=filter_keys, lean_views=compact_in_milvus,
                              view_dimension=NEW_VIEW_DIMENSION if compact else 0,
                              feature_format=NEW_FEATURE_FORMAT if copy_views > 0 else 2)
        async with self._lock:
            self._specs.pop(name, None)
            existing = await self.find(name)
            if existing is not None:
                if exist_ok and existing.same_settings(spec, asked):
                    return existing, False
                raise AlreadyExists(
                    f"collection {name!r} already exists with model {existing.model}, crop mode "
                    f"{existing.crop_mode.value}, index {existing.index_kind.value}, media "
                    f"{existing.media_type.value}, vector index "
                    f"{existing.vector_index.type.value if existing.vector_index else 'chosen by the store'}")
            if index_kind is IndexKind.EXACT_KNN:
                directory = self._knn_root / name
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "spec.json").write_text(spec.to_json())
                self._knn[name] = (spec, self._knn_index(directory, spec.dimension))
            else:
                if spec.copy_detection:  # created first, as the means below
                    await self._milvus.create(name + VIEWS_SUFFIX, spec.views_dimension, f"crop vectors of images in {name}",
                                              spec.layout, spec.float16_vectors, index, vectors_only=spec.lean_views)
                if spec.is_video:  # created first: a collection is only listed once its spec exists
                    await self._milvus.create(name + MEANS_SUFFIX, spec.dimension, f"mean vectors of videos in {name}",
                                              spec.layout, vector_index=index)
                created = await self._milvus.create(name, spec.dimension, spec.to_json(), spec.layout,
                                                    spec.float16_vectors, index, spec.filter_keys)
                if not created:  # another server process created it between our check and now
                    existing = await self.find(name)
                    if existing is not None and exist_ok and existing.same_settings(spec, asked):
                        return existing, False
                    raise AlreadyExists(f"collection {name!r} already exists")
        return spec, True

    def vector_index(self, spec: CollectionSpec) -> tuple[VectorIndexSpec, str]:
        """The index a collection searches with (its own, or for collections created before the
        choice what the store built then) and that in words."""
        if spec.index_kind is IndexKind.EXACT_KNN:
            return VectorIndexSpec(), "exact KNN in the server process: every vector compared (no parameters)"
        index = spec.vector_index or self._milvus.legacy_index()
        return index, index.detail()

    async def find(self, name: str) -> CollectionSpec | None:
        if name in self._knn:
            return self._knn[name][0]
        cached = self._specs.get(name)
        if cached and time.monotonic() - cached[0] < self.SPEC_CACHE_S:
            return cached[1]
        description = await self._milvus.description(name)
        spec = CollectionSpec.from_json(description) if description is not None else None
        if spec is not None:
            self._specs[name] = (time.monotonic(), spec)
        return spec

    async def get(self, name: str) -> tuple[CollectionSpec, VectorIndex]:
        validate_name(name)
        if name in self._knn:
            return self._knn[name]
        spec = await self.find(name)
        if spec is None:
            raise NotFound(f"collection {name!r} does not exist; create it first (see ListCollections)")
        return spec, self._milvus.index(name, spec.dimension, spec.layout, spec.float16_vectors, spec.vector_index,
                                        spec.filter_keys)

    async def means(self, spec: CollectionSpec) -> VectorIndex:
        """A video collection's index of one mean vector per video (ids: the video ids)."""
        if spec.index_kind is IndexKind.EXACT_KNN:
            directory = self._knn_root / spec.name / "means"
            key = spec.name + MEANS_SUFFIX
            if key not in self._knn_means:
                directory.mkdir(parents=True, exist_ok=True)
                self._knn_means[key] = self._knn_index(directory, spec.dimension)
            return self._knn_means[key]
        return self._milvus.index(spec.name + MEANS_SUFFIX, spec.dimension, spec.layout,
                                  vector_index=spec.vector_index)

    async def views(self, spec: CollectionSpec) -> VectorIndex:
        """A copy-detection collection's index of its items' crop vectors (rows `<id>~k`, k >= 1)."""
        if spec.index_kind is IndexKind.EXACT_KNN:
            key = spec.name + VIEWS_SUFFIX
            if key not in self._knn_means:
                directory = self._knn_root / spec.name / "views"
                directory.mkdir(parents=True, exist_ok=True)
                self._knn_means[key] = self._knn_index(directory, spec.views_dimension)
            return self._knn_means[key]
        return self._milvus.index(spec.name + VIEWS_SUFFIX, spec.views_dimension, spec.layout, spec.float16_vectors,
                                  spec.vector_index, vectors_only=spec.lean_views)

    async def list(self) -> list[CollectionSpec]:
        specs = [s for s, _ in self._knn.values()]
        for description in await self._milvus.descriptions():
            spec = CollectionSpec.from_json(description)
            if spec is not None:
                specs.append(spec)
        return sorted(specs, key=lambda s: s.name)

    async def drop(self, name: str) -> None:
        validate_name(name)
        async with self._lock:
            if name in self._knn:
                del self._knn[name]
                self._knn_means.pop(name + MEANS_SUFFIX, None)
                self._knn_means.pop(name + VIEWS_SUFFIX, None)
                await asyncio.to_thread(shutil.rmtree, self._knn_root / name, True)
                return
            self._specs.pop(name, None)
            spec = await self.find(name)
            if spec is None:
                raise NotFound(f"collection {name!r} does not exist")
            self._specs.pop(name, None)
            await self._milvus.drop(name)
            if spec is not None and spec.is_video:
                await self._milvus.drop(name + MEANS_SUFFIX)
            if spec is not None and spec.copy_detection:
                try:
                    await self._milvus.drop(name + VIEWS_SUFFIX)
                except NotFound:
                    pass
