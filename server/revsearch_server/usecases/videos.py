"""Video use cases: index a clip, search videos by image or clip. Knows nothing of gRPC.

A video is stored as (a) one row per sampled frame or face, keyed `<video id>~<k>` (rows.py) with
its timestamp and face box, in the collection's index, and (b) one mean vector (the mean of the
frames' L2-normalised vectors, each frame by its most prominent face) keyed by the video id, in
the collection's means index. Indexing is all or nothing: rows already written are deleted
again when the mean vector cannot be stored or the upload is cancelled.

An upload arrives through an UploadBody (the transport's: transport/uploads.py). The order is
the same for IndexVideo and SearchVideos: check the collection and the options, check the
declared size and the admission room, then receive the body into a file, take admission slots
(waiting, bounded: the upload is paid for), work, and remove the file whatever happened.

Ranking (VideoRanking): FRAMES scores a video by, for each query vector (a query clip's frames
or the query image), its best-matching stored row of that video, averaged over the query
vectors; MEAN_VECTOR compares the query's mean vector with the videos' mean vectors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..admission import Admission
from ..collection_service import Collection, Collections
from ..domain import CropMode, FaceBox, ItemStatus, MediaType, SamplingMode, VideoRanking, l2_normalize
from ..embedding.base import BackendKind
from ..encoder import Encoder
from ..errors import AlreadyExists, ResourceExhausted, RevsearchError
from ..faces.cropper import NoFace
from ..filters import parse_filter
from ..index.base import Hit, Record, RowFilter, VectorIndex, insert_or_undo
from ..models import ModelSpec
from ..observability import Metrics, or_null
from ..rows import MAX_ROW_FETCH, item_of, row_id
from ..validation import default_id, resolve_top_k, validate_item_fields, validate_min_score
from ..video.sampling import SampledFrame, SamplingOptions, VideoInfo, VideoLimits, probe, sample_frames

log = logging.getLogger(__name__)

MATCHES_PER_HIT = 3


@dataclass(frozen=True)
class Spooled:
    """A received upload: a temporary file and its digest."""
    path: str
    sha256: str
    size: int


class UploadBody(Protocol):
    """The bytes of a clip that follow a request's header."""

    def receive(self, max_bytes: int, what: str) -> AbstractAsyncContextManager[Spooled]:
        """Receives the whole body into a temporary file (ResourceExhausted past max_bytes,
        InvalidArgument when empty), removed again when the context ends."""

    async def expect_empty(self, why: str) -> None:
        """InvalidArgument(why) when a body follows."""


@dataclass(frozen=True)
class SamplingOverrides:
    """A request's sampling fields; None takes the collection's setting."""
    frames: int | None = None
    mode: SamplingMode | None = None
    seed: int | None = None

    def over(self, base: SamplingOptions, limits: VideoLimits) -> SamplingOptions:
        return SamplingOptions(frames=base.frames if self.frames is None else self.frames,
                               mode=self.mode or base.mode,
                               seed=base.seed if self.seed is None else self.seed).validate(limits)


@dataclass
class VideoUpload:
    """IndexVideo's header."""
    collection: str
    id: str = ""
    uri: str = ""
    metadata: dict = field(default_factory=dict)
    sampling: SamplingOverrides = SamplingOverrides()
    size_bytes: int = 0  # as the client declares it (0: not said); checked before receiving


@dataclass
class VideoQuery:
    """SearchVideos' header: a query image, or else a clip in the body."""
    collection: str
    image: bytes = b""
    top_k: int | None = None
    ranking: VideoRanking = VideoRanking.FRAMES
    sampling: SamplingOverrides = SamplingOverrides()
    filter: str = ""  # AIP-160 (filters.py): only videos that match are ranked
    min_score: float | None = None  # videos scoring below are left out


@dataclass
class FrameResult:
    timestamp_s: float
    face_boxes: list[FaceBox] = field(default_factory=list)


@dataclass
class VideoOutcome:
    id: str
    uri: str
    status: ItemStatus  # INDEXED | DUPLICATE | NO_FACE
    sha256: str
    info: VideoInfo | None = None
    frames: list[FrameResult] = field(default_factory=list)
    vector_count: int = 0


@dataclass
class FrameMatchResult:
    timestamp_s: float
    score: float
    face_box: FaceBox | None
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
    ranking: VideoRanking
    query_frames: list[FrameResult]
    backend: BackendKind | None


class VideoSearch:
    def __init__(self, collections: Collections, encoder: Encoder, admission: Admission, limits: VideoLimits,
                 frame_max_side: int, max_video_bytes: int, max_top_k: int, pool: Executor,
                 metrics: Metrics | None = None):
        self._collections = collections
        self._encoder = encoder
        self._admission = admission
        self.limits = limits
        self._frame_max_side = frame_max_side
        self._max_video_bytes = max_video_bytes
        self._max_top_k = max_top_k
        self._pool = pool
        self._metrics = or_null(metrics)

    async def _open(self, name: str, sampling: SamplingOverrides | None) -> tuple[Collection, int]:
        """The video collection and the frames a clip sampled with the overrides gives (0 without)."""
        c = await self._collections.open(name, MediaType.VIDEO)
        return c, 0 if sampling is None else sampling.over(c.spec.video_sampling, self.limits).frames

    def _check_size(self, declared: int, what: str) -> None:
        if declared > self._max_video_bytes:
            raise ResourceExhausted(f"{what} is {declared} bytes, over the limit of {self._max_video_bytes} bytes "
                                    "(--max-video-bytes)")

    async def _sample(self, path: str, options: SamplingOptions, name: str) -> tuple[VideoInfo, list[SampledFrame]]:
        loop = asyncio.get_running_loop()
        with self._metrics.stage("sample"):
            return await loop.run_in_executor(self._pool,
                                              lambda: sample_frames(path, options, self.limits, name=name))

    async def _frame_crops(self, c: Collection, frames: list[SampledFrame], all_faces: bool):
        return await self._encoder.prepare_frames([f.image for f in frames], c.model, c.spec.crop_options,
                                                  all_faces, detect_max_side=self._frame_max_side)

    # -- indexing ----------------------------------------------------------------------------
    async def index_video(self, upload: VideoUpload, body: UploadBody) -> VideoOutcome:
        # Fail before the upload, not after it: unknown collection, bad options, too big, overloaded.
        c, frames = await self._open(upload.collection, upload.sampling)
        validate_item_fields(upload.id, upload.uri, upload.metadata)
        self._check_size(upload.size_bytes, "the video")
        self._admission.check(frames, "IndexVideo")
        async with body.receive(self._max_video_bytes, "the video") as spooled:
            async with self._admission.slots(frames, "IndexVideo", wait=True):
                return await self._index(c, upload, spooled)

    async def _index(self, c: Collection, upload: VideoUpload, spooled: Spooled) -> VideoOutcome:
        index, model, sha256, path = c.index, c.model, spooled.sha256, spooled.path
        options = upload.sampling.over(c.spec.video_sampling, self.limits)
        known = await index.ids_for_sha256([sha256])
        means = await self._collections.means(c)
        if sha256 in known:
            stored_id = item_of(known[sha256])
            if await means.existing_ids([stored_id]):
                # The answer still describes the clip (duration, size): a probe reads only its header.
                info = await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: probe(path, self.limits, name=upload.uri or sha256))
                return VideoOutcome(stored_id, upload.uri, ItemStatus.DUPLICATE, sha256, info)
            # Rows without their mean vector: a crash came between the two writes (found by the
            # chaos benchmark). The clip was never acknowledged; remove the rows and index it afresh.
            await self._remove_rows(index, stored_id)
            log.warning("video %s had rows but no mean vector (an interrupted write); indexing it again", stored_id)
            upload = replace(upload, id=stored_id)
        video_id = upload.id or default_id(sha256)
        if await index.existing_ids([row_id(video_id, 0)]):
            raise AlreadyExists(f"id {video_id!r} is already used for a different video in {c.name!r}")

        started = time.perf_counter()
        info, frames = await self._sample(path, options, upload.uri or video_id)
        sampled = time.perf_counter()
        crops = await self._frame_crops(c, frames, all_faces=c.spec.crop_mode is CropMode.ALL_FACES)
        results = [FrameResult(f.timestamp_s, [x.box for x in cs if x.box is not None]) for f, cs in zip(frames, crops)]
        flat = [(f, x) for f, cs in zip(frames, crops) for x in cs]
        if not flat:
            return VideoOutcome(video_id, upload.uri, ItemStatus.NO_FACE, sha256, info, results)
        cropped = time.perf_counter()
        vectors = await self._encoder.embed(model, [x for _, x in flat])
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
        rows = [Record(id=row_id(video_id, k), vector=vectors[k], face_box=x.box, face_count=len(flat),
                       timestamp_s=f.timestamp_s, **common) for k, (f, x) in enumerate(flat)]
        with self._metrics.stage("index"):
            await _store(index, means, rows,
                         Record(id=video_id, vector=mean, face_count=len(firsts), **common))
        log.debug("video %s: sample %.3fs, crop %.3fs, embed %.3fs, store %.3fs", video_id, sampled - started,
                  cropped - sampled, embedded - cropped, time.perf_counter() - embedded)
        return VideoOutcome(video_id, upload.uri, ItemStatus.INDEXED, sha256, info, results,
                            vector_count=len(rows) + 1)

    @staticmethod
    async def _remove_rows(index: VectorIndex, video_id: str) -> None:
        first = (await index.get([row_id(video_id, 0)])).get(row_id(video_id, 0))
        count = first.face_count if first is not None and first.face_count else 1
        await index.delete([row_id(video_id, k) for k in range(count)])

    # -- search ------------------------------------------------------------------------------
    async def search(self, query: VideoQuery, body: UploadBody) -> VideoSearchResult:
        k = resolve_top_k(query.top_k, self._max_top_k)
        validate_min_score(query.min_score)
        where = parse_filter(query.filter)  # checked before any byte of a clip is read
        if query.image:
            c, _ = await self._open(query.collection, None)
            c = c.with_filter(where)  # what the store cannot evaluate is refused before any work
            await body.expect_empty("send either an image in the header or a clip as chunks, not both")
            async with self._admission.slots(1, "SearchVideos"):
                crop = await self._encoder.prepare_query(query.image, c.model, c.spec.crop_options)
                return await self._rank(c, query, k, [crop], [0.0], [FrameResult(0.0, [crop.box] if crop.box else [])])
        c, frames = await self._open(query.collection, query.sampling)
        c = c.with_filter(where)
        self._admission.check(frames, "SearchVideos")
        async with body.receive(self._max_video_bytes, "the query clip") as spooled:
            async with self._admission.slots(frames, "SearchVideos", wait=True):
                options = query.sampling.over(c.spec.video_sampling, self.limits)
                _, sampled = await self._sample(spooled.path, options, "the query clip")
                per_frame = await self._frame_crops(c, sampled, all_faces=False)
                query_frames = [FrameResult(f.timestamp_s, [cs[0].box] if cs and cs[0].box else [])
                                for f, cs in zip(sampled, per_frame)]
                pairs = [(f.timestamp_s, cs[0]) for f, cs in zip(sampled, per_frame) if cs]
                if not pairs:
                    raise NoFace(f"the query clip has no face in its {len(sampled)} sampled frames (faces must be "
                                 f"at least {c.spec.face_options.min_face_size} px with confidence >= "
                                 f"{c.spec.face_options.min_confidence})")
                return await self._rank(c, query, k, [x for _, x in pairs], [t for t, _ in pairs], query_frames)

    async def _rank(self, c: Collection, query: VideoQuery, k: int, crops, query_times: list[float],
                    query_frames: list[FrameResult]) -> VideoSearchResult:
        queries = await self._encoder.embed(c.model, crops)
        backend = self._encoder.backend
        fetch = min(MAX_ROW_FETCH, max(50 * k, 200))
        with self._metrics.stage("search"):
            row_hits = await c.index.search(queries, fetch)
            if query.ranking is VideoRanking.FRAMES:
                ranked = [(video, score, None) for video, score in rank_by_frames(row_hits, k)]
            else:
                mean = l2_normalize(np.mean(queries, axis=0)[None, :])
                means = (await self._collections.means(c)).with_filter(  # one row per video, keyed by its id
                    RowFilter(c.where.filter) if c.where is not None else None)
                ranked = [(h.id, h.score, h) for h in (await means.search(mean, k))[0]]
        if query.min_score is not None:
            ranked = [r for r in ranked if r[1] >= query.min_score]
        return VideoSearchResult(hits=video_hits(ranked, row_hits, query_times), model=c.model,
                                 ranking=query.ranking, query_frames=query_frames, backend=backend)


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
