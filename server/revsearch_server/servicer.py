"""The gRPC servicer: validates transport-level input, calls the pipeline, maps to messages.

No search logic lives here. Every error goes through grpc_status.to_status, so clients get a
canonical code and a readable message, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from revsearch.v1 import search_service_pb2 as pb
from revsearch.v1 import search_service_pb2_grpc as pb_grpc

from . import __version__
from .admission import Admission
from .catalog import CollectionSpec, CropMode, IndexKind, MediaType
from .embedding.base import BackendKind
from .errors import InvalidArgument, ResourceExhausted
from .faces.cropper import FaceOptions
from .grpc_status import to_status, trailing_metadata
from .index.base import Hit
from .observability import Metrics, or_null
from .pipeline import MAX_BATCH_QUERIES, IndexInput, Query, SearchPipeline
from .video.pipeline import SamplingOverrides, VideoPipeline, VideoUpload
from .video.sampling import SamplingOptions
from .video.upload import spool_chunks

log = logging.getLogger(__name__)

CROP_TO_PB = {CropMode.NONE: pb.CROP_MODE_NONE, CropMode.LARGEST_FACE: pb.CROP_MODE_LARGEST_FACE,
              CropMode.ALL_FACES: pb.CROP_MODE_ALL_FACES}
# Unspecified crop mode: None, resolved by the pipeline (whole image; faces for video collections).
CROP_FROM_PB = {v: k for k, v in CROP_TO_PB.items()} | {pb.CROP_MODE_UNSPECIFIED: None}
MEDIA_TO_PB = {MediaType.IMAGE: pb.MEDIA_TYPE_IMAGE, MediaType.VIDEO: pb.MEDIA_TYPE_VIDEO}
MEDIA_FROM_PB = {v: k for k, v in MEDIA_TO_PB.items()} | {pb.MEDIA_TYPE_UNSPECIFIED: MediaType.IMAGE}
SAMPLING_TO_PB = {"uniform": pb.SAMPLING_MODE_UNIFORM, "jitter": pb.SAMPLING_MODE_JITTER,
                  "scene": pb.SAMPLING_MODE_SCENE}
SAMPLING_FROM_PB = {v: k for k, v in SAMPLING_TO_PB.items()} | {pb.SAMPLING_MODE_UNSPECIFIED: ""}
RANKING_TO_PB = {"frames": pb.VIDEO_RANKING_FRAMES, "mean_vector": pb.VIDEO_RANKING_MEAN_VECTOR}
RANKING_FROM_PB = {v: k for k, v in RANKING_TO_PB.items()} | {pb.VIDEO_RANKING_UNSPECIFIED: "frames"}
INDEX_TO_PB = {IndexKind.MILVUS: pb.INDEX_BACKEND_MILVUS, IndexKind.EXACT_KNN: pb.INDEX_BACKEND_EXACT_KNN}
INDEX_FROM_PB = {v: k for k, v in INDEX_TO_PB.items()} | {pb.INDEX_BACKEND_UNSPECIFIED: IndexKind.MILVUS}
BACKEND_TO_PB = {BackendKind.TRITON: pb.INFERENCE_BACKEND_TRITON,
                 BackendKind.ONNXRUNTIME_LOCAL: pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL,
                 BackendKind.NONE: pb.INFERENCE_BACKEND_NONE, None: pb.INFERENCE_BACKEND_UNSPECIFIED}
ITEM_STATUS = {"indexed": pb.ITEM_STATUS_INDEXED, "duplicate": pb.ITEM_STATUS_DUPLICATE,
               "failed": pb.ITEM_STATUS_FAILED, "no_face": pb.ITEM_STATUS_NO_FACE}


def _enum(table: dict, value: int, field: str):
    if value not in table:
        raise InvalidArgument(f"{field} has unknown value {value}")
    return table[value]


def rpc(method):
    """Maps any exception of a unary RPC to a status via the one mapping (with its trailing
    metadata, e.g. the retry hint of an overload) and counts the call by its code."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            status, message = to_status(exc)
            # Counted before abort, which sends the status to the client at once.
            self._metrics.request(name, status.name, time.perf_counter() - started)
            code = None
            await context.abort(status, message, trailing_metadata(exc))
        finally:
            if code is not None:
                self._metrics.request(name, _code_name(code), time.perf_counter() - started)

    return wrapper


def _cancelled_code(context) -> grpc.StatusCode:
    """A handler is cancelled when its client cancels or its deadline passes."""
    try:
        remaining = context.time_remaining()
    except Exception:  # no deadline information
        remaining = None
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else \
        grpc.StatusCode.CANCELLED


def _code_name(code) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def collection_pb(spec: CollectionSpec, count: int) -> pb.Collection:
    created = timestamp_pb2.Timestamp()
    created.FromMilliseconds(spec.created_at_ms)
    msg = pb.Collection(name=spec.name, model=spec.model, model_version=spec.model_version,
                        dimension=spec.dimension, crop_mode=CROP_TO_PB[spec.crop_mode],
                        index_backend=INDEX_TO_PB[spec.index_kind], metric="COSINE", item_count=count,
                        created_at=created, description=spec.description, model_trained=spec.model_trained,
                        media_type=MEDIA_TO_PB[spec.media_type])
    if spec.is_video:
        v = spec.video_sampling
        msg.video_sampling.CopyFrom(pb.VideoSampling(frames=v.frames, mode=SAMPLING_TO_PB[v.mode], seed=v.seed))
    if spec.crops_faces:
        f = spec.face_options
        msg.face_options.CopyFrom(pb.FaceOptions(margin=f.margin, min_face_size=f.min_face_size,
                                                 min_confidence=f.min_confidence,
                                                 whole_image_if_no_face=f.whole_image_if_no_face,
                                                 max_faces=f.max_faces))
    return msg


def face_options_from_pb(request: pb.CreateCollectionRequest) -> FaceOptions | None:
    if not request.HasField("face_options"):
        return None
    f, d = request.face_options, FaceOptions()
    return FaceOptions(margin=f.margin if f.HasField("margin") else d.margin,
                       min_face_size=f.min_face_size if f.HasField("min_face_size") else d.min_face_size,
                       min_confidence=f.min_confidence if f.HasField("min_confidence") else d.min_confidence,
                       whole_image_if_no_face=f.whole_image_if_no_face,
                       max_faces=f.max_faces if f.HasField("max_faces") else d.max_faces)


def video_sampling_from_pb(request: pb.CreateCollectionRequest) -> SamplingOptions | None:
    if not request.HasField("video_sampling"):
        return None
    v, d = request.video_sampling, SamplingOptions()
    return SamplingOptions(frames=v.frames if v.HasField("frames") else d.frames,
                           mode=_enum(SAMPLING_FROM_PB, v.mode, "video_sampling.mode") or d.mode, seed=v.seed)


def face_box_pb(box: list[float] | None) -> pb.FaceBox | None:
    if not box:
        return None
    return pb.FaceBox(x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3], confidence=box[4])


def struct_pb(data: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        s.update(data)
    return s


def hit_pb(rank: int, hit: Hit) -> pb.SearchHit:
    return pb.SearchHit(rank=rank, id=hit.id, uri=hit.uri, score=hit.score, sha256=hit.sha256,
                        metadata=struct_pb(hit.metadata), face_box=face_box_pb(hit.face_box))


def sampling_from_pb(msg: pb.VideoSampling) -> SamplingOverrides:
    return SamplingOverrides(frames=msg.frames if msg.HasField("frames") else None,
                             mode=_enum(SAMPLING_FROM_PB, msg.mode, "sampling.mode"), seed=msg.seed or None)


def frame_pb(frame) -> pb.VideoFrame:
    return pb.VideoFrame(timestamp_s=frame.timestamp_s, face_boxes=[face_box_pb(b) for b in frame.face_boxes])


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, pipeline: SearchPipeline, info: "InfoProvider", index_batch_size: int,
                 videos: VideoPipeline, max_video_bytes: int, admission: Admission | None = None,
                 metrics: Metrics | None = None):
        self._p = pipeline
        self._v = videos
        self._max_video_bytes = max_video_bytes
        self._info = info
        self._batch = max(1, index_batch_size)
        self._metrics = or_null(metrics)
        # Without one (unit tests), no limit: a capacity nothing reaches.
        self._admission = admission or Admission(1 << 30, metrics=metrics)

    @rpc
    async def CreateCollection(self, request, context):
        spec, created = await self._p.create_collection(
            request.name, request.model, _enum(CROP_FROM_PB, request.crop_mode, "crop_mode"),
            _enum(INDEX_FROM_PB, request.index_backend, "index_backend"), request.description, request.exist_ok,
            face_options_from_pb(request), _enum(MEDIA_FROM_PB, request.media_type, "media_type"),
            video_sampling_from_pb(request))
        count = 0 if created else (await self._p.describe_collection(spec.name))[1]
        return pb.CreateCollectionResponse(collection=collection_pb(spec, count), created=created)

    @rpc
    async def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(
            collections=[collection_pb(s, n) for s, n in await self._p.list_collections()])

    @rpc
    async def DescribeCollection(self, request, context):
        spec, count = await self._p.describe_collection(request.name)
        return pb.DescribeCollectionResponse(collection=collection_pb(spec, count))

    @rpc
    async def DropCollection(self, request, context):
        await self._p.drop_collection(request.name)
        return pb.DropCollectionResponse()

    @rpc
    async def SearchImages(self, request, context):
        which = request.WhichOneof("query")
        async with self._admission.slots(1 if which == "image" else 0, "SearchImages"):
            result = await self._p.search(
                request.collection,
                image=request.image if which == "image" else None,
                vector=list(request.vector.values) if which == "vector" else None,
                item_id=request.item_id if which == "item_id" else None,
                top_k=request.top_k if request.HasField("top_k") else None)
        return pb.SearchImagesResponse(
            hits=[hit_pb(rank, h) for rank, h in enumerate(result.hits, start=1)], model=result.model.name,
            model_trained=result.model.trained, inference_backend=BACKEND_TO_PB[result.backend],
            query_face_box=face_box_pb(result.query_face_box))

    @rpc
    async def BatchSearchImages(self, request, context):
        queries = []
        for q in request.queries:
            which = q.WhichOneof("query")
            queries.append(Query(image=q.image if which == "image" else None,
                                 vector=list(q.vector.values) if which == "vector" else None,
                                 item_id=q.item_id if which == "item_id" else None))
        async with self._admission.slots(sum(q.image is not None for q in queries), "BatchSearchImages"):
            results = await self._p.search_batch(request.collection, queries,
                                                 request.top_k if request.HasField("top_k") else None)
        response = pb.BatchSearchImagesResponse()
        model, backend = None, None
        for r in results:
            item = response.results.add()
            if isinstance(r, Exception):
                code, message = to_status(r)
                item.error.CopyFrom(pb.ItemError(code=code.value[0], code_name=code.name, message=message))
                continue
            item.hits.extend(hit_pb(rank, h) for rank, h in enumerate(r.hits, start=1))
            if r.query_face_box:
                item.query_face_box.CopyFrom(face_box_pb(r.query_face_box))
            model, backend = r.model, backend or r.backend
        spec, _ = await self._p.describe_collection(request.collection) if model is None else (None, None)
        response.model = model.name if model else spec.model
        response.model_trained = model.trained if model else spec.model_trained
        response.inference_backend = BACKEND_TO_PB[backend]
        return response

    @rpc
    async def EmbedImage(self, request, context):
        async with self._admission.slots(1, "EmbedImage"):
            vector, model, backend = await self._p.embed_image(request.image, request.model, request.collection)
        return pb.EmbedImageResponse(vector=vector.tolist(), model=model.name, model_version=model.version,
                                     model_trained=model.trained, inference_backend=BACKEND_TO_PB[backend])

    @rpc
    async def DeleteImages(self, request, context):
        deleted, missing = await self._p.delete(request.collection, list(request.ids))
        return pb.DeleteImagesResponse(deleted_ids=deleted, not_found_ids=missing)

    @rpc
    async def GetServerInfo(self, request, context):
        return self._info.server_info()

    async def _header(self, messages, kind: str):
        """The first message's header, or INVALID_ARGUMENT."""
        first = await anext(messages, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(f"the first {kind} must carry the header (collection and options); the file's "
                                  "bytes follow as chunks")
        return first.header

    @rpc
    async def IndexVideo(self, request_iterator, context):
        messages = aiter(request_iterator)
        header = await self._header(messages, "IndexVideoRequest")
        sampling = sampling_from_pb(header.sampling)
        # Fail before the upload, not after it: unknown collection, bad options, too big, overloaded.
        frames = await self._v.check_collection(header.collection, sampling)
        if header.size_bytes > self._max_video_bytes:
            raise ResourceExhausted(f"the video is {header.size_bytes} bytes, over the limit of "
                                    f"{self._max_video_bytes} bytes (--max-video-bytes)")
        self._admission.check(frames, "IndexVideo")
        upload = VideoUpload(collection=header.collection, id=header.id, uri=header.uri,
                             metadata=json_format.MessageToDict(header.metadata), sampling=sampling)
        spooled = await spool_chunks(messages, b"", self._max_video_bytes, "the video")
        try:
            # The upload is paid for: wait (bounded) for room rather than refuse at once.
            async with self._admission.slots(frames, "IndexVideo", wait=True):
                out = await self._v.index_video(upload, spooled.path, spooled.sha256)
        finally:
            spooled.remove()
        info = out.info
        return pb.IndexVideoResponse(
            id=out.id, uri=out.uri, status=ITEM_STATUS[out.status], sha256=out.sha256,
            duration_s=info.duration_s if info else 0.0, width=info.width if info else 0,
            height=info.height if info else 0, frames=[frame_pb(f) for f in out.frames],
            vector_count=out.vector_count)

    @rpc
    async def SearchVideos(self, request_iterator, context):
        messages = aiter(request_iterator)
        header = await self._header(messages, "SearchVideosRequest")
        sampling = sampling_from_pb(header.sampling)
        frames = await self._v.check_collection(header.collection, None if header.image else sampling)
        query = dict(top_k=header.top_k if header.HasField("top_k") else None,
                     ranking=_enum(RANKING_FROM_PB, header.ranking, "ranking"), sampling=sampling)
        if header.image:
            if await anext(messages, None) is not None:
                raise InvalidArgument("send either an image in the header or a clip as chunks, not both")
            async with self._admission.slots(1, "SearchVideos"):
                result = await self._v.search(header.collection, image=header.image, **query)
        else:
            self._admission.check(frames, "SearchVideos")
            spooled = await spool_chunks(messages, b"", self._max_video_bytes, "the query clip")
            try:
                async with self._admission.slots(frames, "SearchVideos", wait=True):
                    result = await self._v.search(header.collection, path=spooled.path, **query)
            finally:
                spooled.remove()
        return pb.SearchVideosResponse(
            hits=[pb.VideoHit(rank=rank, id=h.id, uri=h.uri, score=h.score, sha256=h.sha256,
                              metadata=struct_pb(h.metadata),
                              matches=[pb.FrameMatch(timestamp_s=m.timestamp_s, score=m.score,
                                                     face_box=face_box_pb(m.face_box),
                                                     query_timestamp_s=m.query_timestamp_s) for m in h.matches])
                  for rank, h in enumerate(result.hits, start=1)],
            model=result.model.name, model_trained=result.model.trained, ranking=RANKING_TO_PB[result.ranking],
            query_frames=[frame_pb(f) for f in result.query_frames],
            inference_backend=BACKEND_TO_PB[result.backend])

    async def IndexImages(self, request_iterator, context):
        """Reads ahead into a bounded queue and indexes whatever has arrived as one batch.

        The bound is the flow control: when the queue is full the reader stops reading, and
        gRPC's window makes the client wait instead of buffering without limit. Each batch takes
        its admission slots first, waiting (bounded) for room while the server is busy: the queue
        then fills and the client is held back the same way. A batch is stored with one insert,
        all or nothing, also when the client cancels or its deadline passes during it
        (pipeline.index_batch): a stream that ends early leaves no half-indexed item.
        """
        started, outcome = time.perf_counter(), grpc.StatusCode.OK
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self._batch)
        done = object()
        collection: list[str] = []

        async def read():
            position = 0
            async for req in request_iterator:
                if not collection:
                    if not req.collection:
                        raise InvalidArgument("the first IndexImagesRequest must name the collection")
                    collection.append(req.collection)
                elif req.collection and req.collection != collection[0]:
                    raise InvalidArgument(f"one stream indexes into one collection: got {req.collection!r} "
                                          f"after {collection[0]!r}")
                item = req.item
                await queue.put((position, IndexInput(id=item.id, uri=item.uri, image=item.image,
                                                      metadata=json_format.MessageToDict(item.metadata))))
                position += 1
            await queue.put(done)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            finished = False
            while not finished:
                first = await _next_or_reader_error(queue, reader)
                if first is done:
                    break
                batch = [first]
                while len(batch) < self._batch and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is done:
                        finished = True
                        break
                    batch.append(nxt)
                async with self._admission.slots(len(batch), "IndexImages", wait=True):
                    outcomes = await self._p.index_batch(collection[0], [it for _, it in batch])
                for (position, _), out in zip(batch, outcomes):
                    msg = pb.IndexImagesResponse(item_index=position, id=out.id, uri=out.uri,
                                                 status=ITEM_STATUS[out.status], face_box=face_box_pb(out.face_box),
                                                 face_boxes=[face_box_pb(b) for b in out.face_boxes])
                    if out.error is not None:
                        code, message = to_status(out.error)
                        msg.error.CopyFrom(pb.ItemError(code=code.value[0], code_name=code.name, message=message))
                    yield msg
        except (asyncio.CancelledError, GeneratorExit):  # the client cancelled or its deadline passed
            outcome = _cancelled_code(context)
            raise
        except grpc.aio.AbortError:
            outcome = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            status, message = to_status(exc)
            # Counted before abort, which sends the status to the client at once.
            self._metrics.request("IndexImages", status.name, time.perf_counter() - started)
            outcome = None
            await context.abort(status, message, trailing_metadata(exc))
        finally:
            reader.cancel()
            if outcome is not None:
                self._metrics.request("IndexImages", _code_name(outcome), time.perf_counter() - started)


async def _next_or_reader_error(queue: asyncio.Queue, reader: asyncio.Task):
    """The next queued item; if the reader failed first, its error."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if reader.exception() is not None:
        raise reader.exception()
    return await queue.get()


class InfoProvider:
    """Builds GetServerInfoResponse from the live state (the active backend can change)."""

    def __init__(self, settings, embedder, vector_store_desc: str):
        self._s = settings
        self._embedder = embedder
        self._store = vector_store_desc

    def server_info(self) -> pb.GetServerInfoResponse:
        backend = self._embedder.backend
        return pb.GetServerInfoResponse(
            version=__version__, inference_backend=BACKEND_TO_PB[backend.kind],
            inference_detail=backend.describe(), fallback=self._s.fallback,
            models=[pb.ModelInfo(name=m.name, version=m.version, dimension=m.dimension, trained=m.trained,
                                 input_size=m.input_size, weights_sha256=m.weights_sha256,
                                 weights_source=m.weights_source)
                    for m in self._embedder.models.values()],
            vector_store=self._store,
            limits=pb.Limits(max_image_bytes=self._s.max_image_bytes, max_image_pixels=self._s.max_image_pixels,
                             max_top_k=self._s.max_top_k,
                             max_receive_message_bytes=self._s.max_receive_message_bytes,
                             max_video_bytes=self._s.max_video_bytes, max_video_duration_s=self._s.max_video_duration_s,
                             max_video_width=self._s.max_video_width, max_video_height=self._s.max_video_height,
                             max_video_frames=self._s.max_video_frames, max_batch_queries=MAX_BATCH_QUERIES),
            default_model=self._embedder.default_model)
