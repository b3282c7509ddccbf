"""Protobuf <-> domain values, in one module: enums, face boxes, collections, results, headers.

The enum tables come from the names the client and CLI use (`revsearch/names.py`: only the
generated stubs load with it), matched to the domain enums by value, so a name means the same on
both sides. An enum number outside the proto's values is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import enum

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from revsearch import names
from revsearch.v1 import search_service_pb2 as pb

from ..catalog import CollectionSpec
from ..collection_service import CollectionInfo
from ..domain import CropMode, FaceBox, FaceOptions, IndexKind, ItemStatus, MediaType, SamplingMode, VideoRanking
from ..embedding.base import BackendKind
from ..errors import InvalidArgument
from ..index.base import Hit
from ..usecases.images import IndexInput, IndexOutcome, Query, SearchOptions, SearchResult
from ..usecases.items import ImageChange, ImagePage, StoredImage, UpdateOutcome, UpdateStatus
from ..usecases.imports import ImportHeader, ImportReport, VectorInput
from ..usecases.server_info import ServerInfo
from ..usecases.videos import FrameResult, SamplingOverrides, VideoOutcome, VideoQuery, VideoSearchResult, VideoUpload
from ..vector_index import IndexRequest, IndexType, VectorIndexSpec
from ..video.sampling import SamplingOptions
from .status import to_status


def _to_pb(table: dict[str, int], domain: type[enum.Enum]) -> dict[enum.Enum, int]:
    return {domain(name): number for name, number in table.items()}


CROP_TO_PB = _to_pb(names.CROP_MODES, CropMode)
MEDIA_TO_PB = _to_pb(names.MEDIA_TYPES, MediaType)
INDEX_TO_PB = _to_pb(names.INDEX_BACKENDS, IndexKind)
SAMPLING_TO_PB = _to_pb(names.SAMPLING_MODES, SamplingMode)
RANKING_TO_PB = _to_pb(names.RANKINGS, VideoRanking)
STATUS_TO_PB = _to_pb(names.ITEM_STATUSES, ItemStatus)
BACKEND_TO_PB = _to_pb(names.INFERENCE_BACKENDS, BackendKind)
VECTOR_INDEX_TO_PB = _to_pb(names.VECTOR_INDEX_TYPES, IndexType)


def _from_pb(to_pb: dict, unspecified):
    return {v: k for k, v in to_pb.items()} | {0: unspecified}


# Unspecified crop mode: None, resolved by the use case (whole image; faces for video collections).
CROP_FROM_PB = _from_pb(CROP_TO_PB, None)
MEDIA_FROM_PB = _from_pb(MEDIA_TO_PB, MediaType.IMAGE)
INDEX_FROM_PB = _from_pb(INDEX_TO_PB, IndexKind.MILVUS)
SAMPLING_FROM_PB = _from_pb(SAMPLING_TO_PB, None)  # None: the collection's mode
RANKING_FROM_PB = _from_pb(RANKING_TO_PB, VideoRanking.FRAMES)
# Unspecified: the store's default. AUTOINDEX is only ever reported, never asked for.
VECTOR_INDEX_FROM_PB = {k: v for k, v in _from_pb(VECTOR_INDEX_TO_PB, None).items() if v is not IndexType.AUTOINDEX}


def enum_from_pb(table: dict, value: int, field: str):
    if value not in table:
        raise InvalidArgument(f"{field} has unknown value {value}")
    return table[value]


def backend_pb(kind: BackendKind | None) -> int:
    return BACKEND_TO_PB.get(kind, pb.INFERENCE_BACKEND_UNSPECIFIED)


def struct_pb(data: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        s.update(data)
    return s


def struct_dict(message: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(message)


def face_box_pb(box: FaceBox | None) -> pb.FaceBox | None:
    if box is None:
        return None
    return pb.FaceBox(x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max, confidence=box.confidence)


def item_error_pb(exc: BaseException) -> pb.ItemError:
    code, message = to_status(exc)
    return pb.ItemError(code=code.value[0], code_name=code.name, message=message)


# -- collections -----------------------------------------------------------------------------
def collection_pb(info: CollectionInfo) -> pb.Collection:
    spec, count = info.spec, info.item_count
    created = timestamp_pb2.Timestamp()
    created.FromMilliseconds(spec.created_at_ms)
    msg = pb.Collection(name=spec.name, model=spec.model, model_version=spec.model_version,
                        dimension=spec.dimension, crop_mode=CROP_TO_PB[spec.crop_mode],
                        index_backend=INDEX_TO_PB[spec.index_kind], metric="COSINE", item_count=count,
                        created_at=created, description=spec.description, model_trained=spec.model_trained,
                        media_type=MEDIA_TO_PB[spec.media_type], copy_detection=spec.copy_detection,
                        copy_detection_detail=spec.copy_detection_detail,
                        vector_index=vector_index_pb(info.vector_index), vector_index_detail=info.vector_index_detail,
                        imported_item_count=info.imported_count, filter_keys=spec.filter_keys)
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


def vector_index_pb(spec: VectorIndexSpec) -> pb.VectorIndexOptions:
    msg = pb.VectorIndexOptions(type=VECTOR_INDEX_TO_PB[spec.type])
    for name in ("hnsw_m", "hnsw_ef_construction", "ivf_nlist", "search_breadth"):
        if getattr(spec, name):
            setattr(msg, name, getattr(spec, name))
    return msg


def vector_index_from_pb(request: pb.CreateCollectionRequest) -> IndexRequest:
    if not request.HasField("vector_index"):
        return IndexRequest()
    v = request.vector_index
    return IndexRequest(type=enum_from_pb(VECTOR_INDEX_FROM_PB, v.type, "vector_index.type"),
                        **{name: getattr(v, name) if v.HasField(name) else None
                           for name in ("hnsw_m", "hnsw_ef_construction", "ivf_nlist", "search_breadth")})


def create_collection_args(request: pb.CreateCollectionRequest) -> dict:
    """ManageCollections.create's arguments."""
    return dict(name=request.name, model=request.model,
                crop_mode=enum_from_pb(CROP_FROM_PB, request.crop_mode, "crop_mode"),
                index_kind=enum_from_pb(INDEX_FROM_PB, request.index_backend, "index_backend"),
                description=request.description, exist_ok=request.exist_ok,
                face_options=face_options_from_pb(request),
                media_type=enum_from_pb(MEDIA_FROM_PB, request.media_type, "media_type"),
                video_sampling=video_sampling_from_pb(request), vector_index=vector_index_from_pb(request),
                filter_keys=tuple(request.filter_keys))


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
                           mode=enum_from_pb(SAMPLING_FROM_PB, v.mode, "video_sampling.mode") or d.mode, seed=v.seed)


# -- images ----------------------------------------------------------------------------------
def query_from_pb(message) -> Query:
    """A SearchImagesRequest's or BatchSearchImagesRequest.Query's query oneof."""
    which = message.WhichOneof("query")
    return Query(image=message.image if which == "image" else None,
                 vector=list(message.vector.values) if which == "vector" else None,
                 item_id=message.item_id if which == "item_id" else None,
                 filter=message.filter if isinstance(message, pb.BatchQuery) else "")


def search_options_from_pb(message) -> SearchOptions:
    """A SearchImagesRequest's or BatchSearchImagesRequest's options (unset: the collection's)."""
    return SearchOptions(top_k=top_k_from_pb(message), copy_detection=copy_detection_from_pb(message),
                         breadth=search_breadth_from_pb(message), filter=message.filter,
                         min_score=message.min_score if message.HasField("min_score") else None)


def top_k_from_pb(message) -> int | None:
    return message.top_k if message.HasField("top_k") else None


def search_breadth_from_pb(message) -> int | None:
    """SearchImagesRequest's / BatchSearchImagesRequest's breadth; None (unset): the collection's."""
    return message.search_breadth if message.HasField("search_breadth") else None


def copy_detection_from_pb(message) -> bool | None:
    """SearchImagesRequest's / BatchSearchImagesRequest's switch; None (unset): the collection's setting."""
    return message.copy_detection if message.HasField("copy_detection") else None


def index_input_from_pb(item: pb.ImageItem) -> IndexInput:
    return IndexInput(id=item.id, uri=item.uri, image=item.image, metadata=struct_dict(item.metadata))


def index_response_pb(position: int, out: IndexOutcome) -> pb.IndexImagesResponse:
    msg = pb.IndexImagesResponse(item_index=position, id=out.id, uri=out.uri, status=STATUS_TO_PB[out.status],
                                 face_box=face_box_pb(out.face_box),
                                 face_boxes=[face_box_pb(b) for b in out.face_boxes])
    if out.error is not None:
        msg.error.CopyFrom(item_error_pb(out.error))
    return msg


def hit_pb(rank: int, hit: Hit) -> pb.SearchHit:
    return pb.SearchHit(rank=rank, id=hit.id, uri=hit.uri, score=hit.score, sha256=hit.sha256,
                        metadata=struct_pb(hit.metadata), face_box=face_box_pb(hit.face_box),
                        matched_keypoints=hit.matched_keypoints)


def hits_pb(hits: list[Hit]) -> list[pb.SearchHit]:
    return [hit_pb(rank, h) for rank, h in enumerate(hits, start=1)]


def search_response_pb(result: SearchResult) -> pb.SearchImagesResponse:
    return pb.SearchImagesResponse(hits=hits_pb(result.hits), model=result.model.name,
                                   model_trained=result.model.trained, inference_backend=backend_pb(result.backend),
                                   query_face_box=face_box_pb(result.query_face_box))


def batch_search_response_pb(results: list, fallback_spec: CollectionSpec | None) -> pb.BatchSearchImagesResponse:
    """results: a SearchResult or an error per query; fallback_spec names the model when every
    query failed."""
    response = pb.BatchSearchImagesResponse()
    model, backend = None, None
    for r in results:
        item = response.results.add()
        if isinstance(r, Exception):
            item.error.CopyFrom(item_error_pb(r))
            continue
        item.hits.extend(hits_pb(r.hits))
        if r.query_face_box:
            item.query_face_box.CopyFrom(face_box_pb(r.query_face_box))
        model, backend = r.model, backend or r.backend
    response.model = model.name if model else fallback_spec.model
    response.model_trained = model.trained if model else fallback_spec.model_trained
    response.inference_backend = backend_pb(backend)
    return response


# -- imports ---------------------------------------------------------------------------------
def import_header_from_pb(header: pb.ImportVectorsHeader) -> ImportHeader:
    return ImportHeader(collection=header.collection, model=header.model, model_version=header.model_version)


def vector_inputs_from_pb(items, first_position: int) -> list[VectorInput]:
    # MessageToDict only where there is metadata: it took 20 us even for an empty Struct.
    return [VectorInput(position=first_position + n, id=item.id, uri=item.uri,
                        metadata=struct_dict(item.metadata) if item.HasField("metadata") else {},
                        vector=item.vector.values) for n, item in enumerate(items)]


def import_response_pb(report: ImportReport) -> pb.ImportVectorsResponse:
    return pb.ImportVectorsResponse(
        received=report.received, imported=report.imported, existing=report.existing, failed=report.failed,
        failures=[pb.ImportFailure(item_index=f.position, id=f.id, error=item_error_pb(f.error))
                  for f in report.failures], note=report.note)


# -- videos ----------------------------------------------------------------------------------
def sampling_overrides_from_pb(msg: pb.VideoSampling) -> SamplingOverrides:
    return SamplingOverrides(frames=msg.frames if msg.HasField("frames") else None,
                             mode=enum_from_pb(SAMPLING_FROM_PB, msg.mode, "sampling.mode"), seed=msg.seed or None)


def video_upload_from_pb(header: pb.VideoHeader) -> VideoUpload:
    return VideoUpload(collection=header.collection, id=header.id, uri=header.uri,
                       metadata=struct_dict(header.metadata), sampling=sampling_overrides_from_pb(header.sampling),
                       size_bytes=header.size_bytes)


def video_query_from_pb(header: pb.SearchVideosHeader) -> VideoQuery:
    return VideoQuery(collection=header.collection, image=header.image, top_k=top_k_from_pb(header),
                      ranking=enum_from_pb(RANKING_FROM_PB, header.ranking, "ranking"),
                      sampling=sampling_overrides_from_pb(header.sampling), filter=header.filter,
                      min_score=header.min_score if header.HasField("min_score") else None)


UPDATE_STATUS_TO_PB = {UpdateStatus.UPDATED: pb.UPDATE_STATUS_UPDATED, UpdateStatus.NOT_FOUND: pb.UPDATE_STATUS_NOT_FOUND,
                       UpdateStatus.FAILED: pb.UPDATE_STATUS_FAILED}


def timestamp_pb(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


def image_pb(image: StoredImage) -> pb.Image:
    return pb.Image(id=image.id, uri=image.uri, metadata=struct_pb(image.metadata), sha256=image.sha256,
                    create_time=timestamp_pb(image.created_at_ms), face_boxes=[face_box_pb(b) for b in image.face_boxes],
                    vector=pb.Vector(values=image.vector.tolist()) if image.vector is not None else None,
                    imported=image.imported)


def image_page_pb(page: ImagePage) -> pb.ListImagesResponse:
    return pb.ListImagesResponse(images=[image_pb(i) for i in page.images], next_page_token=page.next_page_token,
                                 page_size=page.page_size)


def image_changes_from_pb(request: pb.UpdateImagesRequest) -> list[ImageChange]:
    return [ImageChange(id=u.id, metadata=struct_dict(u.metadata), uri=u.uri) for u in request.updates]


def update_response_pb(outcomes: list[UpdateOutcome]) -> pb.UpdateImagesResponse:
    return pb.UpdateImagesResponse(results=[
        pb.UpdateResult(id=o.id, status=UPDATE_STATUS_TO_PB[o.status],
                        error=item_error_pb(o.error) if o.status is UpdateStatus.FAILED and o.error else None,
                        image=image_pb(o.image) if o.image is not None else None)
        for o in outcomes])


def frame_pb(frame: FrameResult) -> pb.VideoFrame:
    return pb.VideoFrame(timestamp_s=frame.timestamp_s, face_boxes=[face_box_pb(b) for b in frame.face_boxes])


def index_video_response_pb(out: VideoOutcome) -> pb.IndexVideoResponse:
    info = out.info
    return pb.IndexVideoResponse(
        id=out.id, uri=out.uri, status=STATUS_TO_PB[out.status], sha256=out.sha256,
        duration_s=info.duration_s if info else 0.0, width=info.width if info else 0,
        height=info.height if info else 0, frames=[frame_pb(f) for f in out.frames],
        vector_count=out.vector_count)


def search_videos_response_pb(result: VideoSearchResult) -> pb.SearchVideosResponse:
    return pb.SearchVideosResponse(
        hits=[pb.VideoHit(rank=rank, id=h.id, uri=h.uri, score=h.score, sha256=h.sha256,
                          metadata=struct_pb(h.metadata),
                          matches=[pb.FrameMatch(timestamp_s=m.timestamp_s, score=m.score,
                                                 face_box=face_box_pb(m.face_box),
                                                 query_timestamp_s=m.query_timestamp_s) for m in h.matches])
              for rank, h in enumerate(result.hits, start=1)],
        model=result.model.name, model_trained=result.model.trained, ranking=RANKING_TO_PB[result.ranking],
        query_frames=[frame_pb(f) for f in result.query_frames], inference_backend=backend_pb(result.backend))


# -- server ----------------------------------------------------------------------------------
def server_info_pb(info: ServerInfo) -> pb.GetServerInfoResponse:
    lim = info.limits
    return pb.GetServerInfoResponse(
        version=info.version, inference_backend=backend_pb(info.backend), inference_detail=info.backend_detail,
        fallback=info.fallback,
        models=[pb.ModelInfo(name=m.name, version=m.version, dimension=m.dimension, trained=m.trained,
                             input_size=m.input_size, weights_sha256=m.weights_sha256,
                             weights_source=m.weights_source, precision=m.precision)
                for m in info.models],
        vector_store=info.vector_store,
        limits=pb.Limits(max_image_bytes=lim.max_image_bytes, max_image_pixels=lim.max_image_pixels,
                         max_top_k=lim.max_top_k, max_receive_message_bytes=lim.max_receive_message_bytes,
                         max_video_bytes=lim.max_video_bytes, max_video_duration_s=lim.max_video_duration_s,
                         max_video_width=lim.max_video_width, max_video_height=lim.max_video_height,
                         max_video_frames=lim.max_video_frames, max_batch_queries=lim.max_batch_queries,
                         max_import_items_per_message=lim.max_import_items_per_message,
                         max_get_ids=lim.max_get_ids, max_page_size=lim.max_page_size,
                         max_filter_bytes=lim.max_filter_bytes),
        default_model=info.default_model, default_model_reason=info.default_model_reason,
        vector_index_types=[VECTOR_INDEX_TO_PB[t] for t in info.vector_index_types],
        default_vector_index=VECTOR_INDEX_TO_PB[info.default_vector_index])
