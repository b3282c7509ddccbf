"""Video indexing and search: sample frames, crop and embed them, store and rank. Knows nothing of gRPC.

A video is stored as (a) one row per sampled frame or face, keyed `<video id>~<k>` (rows.py) with
its timestamp and face box, in the collection's index, and (b) one mean vector (the mean of the
frames' L2-normalised vectors, each frame by its most prominent face) keyed by the video id, in
the collection's means index. Indexing is all or nothing: rows already written are deleted
again when the mean vector cannot be stored or the upload is cancelled.

Ranking (VideoRanking): "frames" scores a video by, for each query vector (a query clip's frames
or the query image), its best-matching stored row of that video, averaged over the query
vectors; "mean_vector" compares the query's mean vector with the videos' mean vectors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..catalog import CollectionSpec, CropMode
from ..embedding.base import BackendKind
from ..embedding.embedder import l2_normalize
from ..errors import AlreadyExists, InvalidArgument, RevsearchError
from ..faces.cropper import FaceCrop, NoFace
from ..imaging import resize_center_crop
from ..index.base import Hit, Record, VectorIndex, insert_or_undo
from ..models import ModelSpec
from ..observability import Metrics, or_null
from ..pipeline import MAX_ROW_FETCH, IndexInput, SearchPipeline, default_id, resolve_top_k, validate_item_fields
from ..rows import item_of, row_id
from .sampling import MODES, SampledFrame, SamplingOptions, VideoInfo, VideoLimits, probe, sample_frames

log = logging.getLogger(__name__)

RANKINGS = ("frames", "mean_vector")
MATCHES_PER_HIT = 3


@dataclass(frozen=True)
class SamplingOverrides:
    """A request's sampling fields; None/"" take the collection's setting."""
    frames: int | None = None
    mode: str = ""
    seed: int | None = None

    def over(self, base: SamplingOptions, limits: VideoLimits) -> SamplingOptions:
        if self.mode and self.mode not in MODES:
            raise InvalidArgument(f"unknown frame sampling mode {self.mode!r}; use one of {', '.join(MODES)}")
        return SamplingOptions(frames=base.frames if self.frames is None else self.frames,
                               mode=self.mode or base.mode,
                               seed=base.seed if self.seed is None else self.seed).validate(limits)


@dataclass
class VideoUpload:
    collection: str
    id: str = ""
    uri: str = ""
    metadata: dict = field(default_factory=dict)
    sampling: SamplingOverrides = SamplingOverrides()


@dataclass
class FrameResult:
    timestamp_s: float
    face_boxes: list[list[float]] = field(default_factory=list)


@dataclass
class VideoOutcome:
    id: str
    uri: str
    status: str  # "indexed" | "duplicate" | "no_face"
    sha256: str
    info: VideoInfo | None = None
    frames: list[FrameResult] = field(default_factory=list)
    vector_count: int = 0


@dataclass
class FrameMatchResult:
    timestamp_s: float
    score: float
    face_box: list[float] | None
    query_timestamp_s: float


@dataclass
class VideoHitResult:
    id: str
    uri: str
    score: float
    sha256: str
    metadata: dict
    matches: list[FrameMatchResult]


@dataclass
class VideoSearchResult:
    hits: list[VideoHitResult]
    model: ModelSpec
    ranking: str
    query_frames: list[FrameResult]
    backend: BackendKind | None


class VideoPipeline:
    def __init__(self, images: SearchPipeline, limits: VideoLimits, frame_max_side: int, pool: Executor,
                 metrics: Metrics | None = None):
        self._images = images
        self.limits = limits
        self._frame_max_side = frame_max_side
        self._pool = pool
        self._metrics = or_null(metrics)

    async def _collection(self, name: str) -> tuple[CollectionSpec, VectorIndex, VectorIndex, ModelSpec]:
        spec, index, model = await self._images._collection(name)
        if not spec.is_video:
            raise InvalidArgument(f"collection {name!r} holds images; index and search it with IndexImages and "
                                  "SearchImages, or create a collection with media type video")
        return spec, index, await self._images.catalog.means(spec), model

    async def check_collection(self, name: str, sampling: SamplingOverrides | None = None) -> int:
        """NOT_FOUND / INVALID_ARGUMENT for anything but an existing video collection (or invalid
        sampling overrides); the number of frames a clip sampled with the overrides gives (0 without)."""
        spec, _, _, _ = await self._collection(name)
        return 0 if sampling is None else sampling.over(spec.video_sampling, self.limits).frames

    async def _sample(self, path: str, options: SamplingOptions, name: str) -> tuple[VideoInfo, list[SampledFrame]]:
        loop = asyncio.get_running_loop()
        with self._metrics.stage("sample"):
            return await loop.run_in_executor(self._pool,
                                              lambda: sample_frames(path, options, self.limits, name=name))

    async def _frame_crops(self, spec: CollectionSpec, model: ModelSpec, frames: list[SampledFrame],
                           all_faces: bool) -> list[list[FaceCrop]]:
        """Per frame: its crops (an empty list for a frame without a face)."""
        arrays = [f.image for f in frames]
        if spec.crop_options is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: [
                [FaceCrop(resize_center_crop(Image.fromarray(a), model.input_size, model.resize_to), None)]
                for a in arrays])
        results = await self._images.cropper.crops_of_arrays(arrays, model, spec.crop_options, all_faces,
                                                             detect_max_side=self._frame_max_side)
        out = []
        for r in results:
            if isinstance(r, NoFace):
                out.append([])
            elif isinstance(r, RevsearchError):
                raise r
            else:
                out.append(r)
        return out

    # -- indexing ----------------------------------------------------------------------------
    async def index_video(self, upload: VideoUpload, path: str, sha256: str) -> VideoOutcome:
        spec, index, means, model = await self._collection(upload.collection)
        validate_item_fields(IndexInput(upload.id, upload.uri, b"", upload.metadata))
        options = upload.sampling.over(spec.video_sampling, self.limits)
        known = await index.ids_for_sha256([sha256])
        if sha256 in known:
            # The answer still describes the clip (duration, size): a probe reads only its header.
            info = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: probe(path, self.limits, name=upload.uri or sha256))
            return VideoOutcome(item_of(known[sha256]), upload.uri, "duplicate", sha256, info)
        video_id = upload.id or default_id(sha256)
        if await index.existing_ids([row_id(video_id, 0)]):
            raise AlreadyExists(f"id {video_id!r} is already used for a different video in {upload.collection!r}")

        started = time.perf_counter()
        info, frames = await self._sample(path, options, upload.uri or video_id)
        sampled = time.perf_counter()
        crops = await self._frame_crops(spec, model, frames, all_faces=spec.crop_mode is CropMode.ALL_FACES)
        results = [FrameResult(f.timestamp_s, [c.box for c in cs if c.box is not None]) for f, cs in zip(frames, crops)]
        flat = [(f, c) for f, cs in zip(frames, crops) for c in cs]
        if not flat:
            return VideoOutcome(video_id, upload.uri, "no_face", sha256, info, results)
        cropped = time.perf_counter()
        vectors = await self._images.embedder.embed(model, np.stack([c.pixels for _, c in flat]))
        embedded = time.perf_counter()

        # The mean of the frames' vectors, each frame by its first (most prominent) crop.
        firsts, n = [], 0
        for cs in crops:
            if cs:
                firsts.append(vectors[n])
            n += len(cs)
        mean = l2_normalize(np.mean(firsts, axis=0)[None, :])[0]
        now = int(time.time() * 1000)
        common = dict(uri=upload.uri, sha256=sha256, model=model.name, model_version=model.version,
                      created_at_ms=now, metadata=upload.metadata)
        rows = [Record(id=row_id(video_id, k), vector=vectors[k], face_box=c.box, face_count=len(flat),
                       timestamp_s=f.timestamp_s, **common) for k, (f, c) in enumerate(flat)]
        with self._metrics.stage("index"):
            await self._store(index, means, rows, Record(id=video_id, vector=mean, face_count=len(firsts),
                                                         **common))
        log.debug("video %s: sample %.3fs, crop %.3fs, embed %.3fs, store %.3fs", video_id, sampled - started,
                  cropped - sampled, embedded - cropped, time.perf_counter() - embedded)
        return VideoOutcome(video_id, upload.uri, "indexed", sha256, info, results, vector_count=len(rows) + 1)

    @staticmethod
    async def _store(index: VectorIndex, means: VectorIndex, rows: list[Record], mean: Record) -> None:
        """Rows, then the mean; on any failure or cancellation both are deleted again.

        Each insert runs to its end even when the request is cancelled meanwhile (insert_or_undo),
        so the clean-up never races a write still on its way to the store."""
        try:
            await insert_or_undo(index, rows)
            await insert_or_undo(means, [mean])
        except BaseException:
            async def undo():
                try:
                    await index.delete([r.id for r in rows])
                    await means.delete([mean.id])
                except RevsearchError as exc:
                    log.error("could not remove the rows of failed video %s: %s", mean.id, exc)
            # A cancelled request cannot await; the clean-up runs as its own task.
            task = asyncio.ensure_future(undo())
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                pass
            raise

    # -- search ------------------------------------------------------------------------------
    async def search(self, collection: str, *, image: bytes | None = None, path: str | None = None,
                     top_k: int | None = None, ranking: str = "frames",
                     sampling: SamplingOverrides = SamplingOverrides()) -> VideoSearchResult:
        k = resolve_top_k(top_k, self._images.max_top_k)
        if ranking not in RANKINGS:
            raise InvalidArgument(f"unknown ranking {ranking!r}; use one of {', '.join(RANKINGS)}")
        spec, index, means, model = await self._collection(collection)
        if image is not None:
            crop = await self._images._prepare_query(image, model, spec.crop_options)
            crops, query_times = [crop], [0.0]
            query_frames = [FrameResult(0.0, [crop.box] if crop.box else [])]
        elif path is not None:
            options = sampling.over(spec.video_sampling, self.limits)
            _, frames = await self._sample(path, options, "the query clip")
            per_frame = await self._frame_crops(spec, model, frames, all_faces=False)
            query_frames = [FrameResult(f.timestamp_s, [cs[0].box] if cs and cs[0].box else [])
                            for f, cs in zip(frames, per_frame)]
            pairs = [(f.timestamp_s, cs[0]) for f, cs in zip(frames, per_frame) if cs]
            if not pairs:
                raise NoFace(f"the query clip has no face in its {len(frames)} sampled frames (faces must be at "
                             f"least {spec.face_options.min_face_size} px with confidence >= "
                             f"{spec.face_options.min_confidence})")
            query_times, crops = [t for t, _ in pairs], [c for _, c in pairs]
        else:
            raise InvalidArgument("a query is required: an image in the header, or the clip's bytes as chunks")
        queries = await self._images.embedder.embed(model, np.stack([c.pixels for c in crops]))
        backend = self._images.embedder.backend.kind

        fetch = min(MAX_ROW_FETCH, max(50 * k, 200))
        with self._metrics.stage("search"):
            row_hits = await index.search(queries, fetch)
            if ranking == "frames":
                ranked = [(video, score, None) for video, score in rank_by_frames(row_hits, k)]
            else:
                mean = l2_normalize(np.mean(queries, axis=0)[None, :])
                ranked = [(h.id, h.score, h) for h in (await means.search(mean, k))[0]]
        return VideoSearchResult(hits=video_hits(ranked, row_hits, query_times), model=model, ranking=ranking,
                                 query_frames=query_frames, backend=backend)


def rank_by_frames(row_hits: list[list[Hit]], k: int) -> list[tuple[str, float]]:
    """(video id, score) best first: per query vector, each video's best row; averaged over the
    query vectors. A video missing from one query's fetched rows counts that query's lowest
    fetched score (an upper bound of its true score there), so partial evidence never wins."""
    best: list[dict[str, float]] = []
    for hits in row_hits:
        per_video: dict[str, float] = {}
        for h in hits:  # best first, so the first row of a video is its best
            per_video.setdefault(item_of(h.id), h.score)
        best.append(per_video)
    floors = [hits[-1].score if hits else -1.0 for hits in row_hits]
    videos = {v for b in best for v in b}
    scores = {v: float(np.mean([b.get(v, floor) for b, floor in zip(best, floors)])) for v in videos}
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def video_hits(ranked: list[tuple[str, float, Hit | None]], row_hits: list[list[Hit]], query_times: list[float]
               ) -> list[VideoHitResult]:
    """Hits with their best-matching frames (distinct timestamps, best first)."""
    rows: dict[str, list[tuple[Hit, float]]] = {}
    for hits, qt in zip(row_hits, query_times):
        for h in hits:
            rows.setdefault(item_of(h.id), []).append((h, qt))
    out = []
    for video, score, video_hit in ranked:
        found = sorted(rows.get(video, []), key=lambda hq: -hq[0].score)
        matches, seen = [], set()
        for h, qt in found:
            if h.timestamp_s in seen:
                continue
            seen.add(h.timestamp_s)
            matches.append(FrameMatchResult(h.timestamp_s or 0.0, h.score, h.face_box, qt))
            if len(matches) == MATCHES_PER_HIT:
                break
        first = video_hit or (found[0][0] if found else None)
        out.append(VideoHitResult(id=video, uri=first.uri if first else "", score=score,
                                  sha256=first.sha256 if first else "", metadata=first.metadata if first else {},
                                  matches=matches))
    return out
