import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CropMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CROP_MODE_UNSPECIFIED: _ClassVar[CropMode]
    CROP_MODE_NONE: _ClassVar[CropMode]
    CROP_MODE_LARGEST_FACE: _ClassVar[CropMode]
    CROP_MODE_ALL_FACES: _ClassVar[CropMode]

class MediaType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDIA_TYPE_UNSPECIFIED: _ClassVar[MediaType]
    MEDIA_TYPE_IMAGE: _ClassVar[MediaType]
    MEDIA_TYPE_VIDEO: _ClassVar[MediaType]

class SamplingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLING_MODE_UNSPECIFIED: _ClassVar[SamplingMode]
    SAMPLING_MODE_UNIFORM: _ClassVar[SamplingMode]
    SAMPLING_MODE_JITTER: _ClassVar[SamplingMode]
    SAMPLING_MODE_SCENE: _ClassVar[SamplingMode]

class VideoRanking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_RANKING_UNSPECIFIED: _ClassVar[VideoRanking]
    VIDEO_RANKING_FRAMES: _ClassVar[VideoRanking]
    VIDEO_RANKING_MEAN_VECTOR: _ClassVar[VideoRanking]

class IndexBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_BACKEND_UNSPECIFIED: _ClassVar[IndexBackend]
    INDEX_BACKEND_MILVUS: _ClassVar[IndexBackend]
    INDEX_BACKEND_EXACT_KNN: _ClassVar[IndexBackend]

class VectorIndexType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_INDEX_TYPE_UNSPECIFIED: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_FLAT: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_HNSW: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_IVF_FLAT: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_IVF_SQ8: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_DISKANN: _ClassVar[VectorIndexType]
    VECTOR_INDEX_TYPE_AUTOINDEX: _ClassVar[VectorIndexType]

class InferenceBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFERENCE_BACKEND_UNSPECIFIED: _ClassVar[InferenceBackend]
    INFERENCE_BACKEND_TRITON: _ClassVar[InferenceBackend]
    INFERENCE_BACKEND_ONNXRUNTIME_LOCAL: _ClassVar[InferenceBackend]
    INFERENCE_BACKEND_NONE: _ClassVar[InferenceBackend]

class ItemStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATUS_UNSPECIFIED: _ClassVar[ItemStatus]
    ITEM_STATUS_INDEXED: _ClassVar[ItemStatus]
    ITEM_STATUS_DUPLICATE: _ClassVar[ItemStatus]
    ITEM_STATUS_FAILED: _ClassVar[ItemStatus]
    ITEM_STATUS_NO_FACE: _ClassVar[ItemStatus]

class UpdateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_STATUS_UNSPECIFIED: _ClassVar[UpdateStatus]
    UPDATE_STATUS_UPDATED: _ClassVar[UpdateStatus]
    UPDATE_STATUS_NOT_FOUND: _ClassVar[UpdateStatus]
    UPDATE_STATUS_FAILED: _ClassVar[UpdateStatus]
CROP_MODE_UNSPECIFIED: CropMode
CROP_MODE_NONE: CropMode
CROP_MODE_LARGEST_FACE: CropMode
CROP_MODE_ALL_FACES: CropMode
MEDIA_TYPE_UNSPECIFIED: MediaType
MEDIA_TYPE_IMAGE: MediaType
MEDIA_TYPE_VIDEO: MediaType
SAMPLING_MODE_UNSPECIFIED: SamplingMode
SAMPLING_MODE_UNIFORM: SamplingMode
SAMPLING_MODE_JITTER: SamplingMode
SAMPLING_MODE_SCENE: SamplingMode
VIDEO_RANKING_UNSPECIFIED: VideoRanking
VIDEO_RANKING_FRAMES: VideoRanking
VIDEO_RANKING_MEAN_VECTOR: VideoRanking
INDEX_BACKEND_UNSPECIFIED: IndexBackend
INDEX_BACKEND_MILVUS: IndexBackend
INDEX_BACKEND_EXACT_KNN: IndexBackend
VECTOR_INDEX_TYPE_UNSPECIFIED: VectorIndexType
VECTOR_INDEX_TYPE_FLAT: VectorIndexType
VECTOR_INDEX_TYPE_HNSW: VectorIndexType
VECTOR_INDEX_TYPE_IVF_FLAT: VectorIndexType
VECTOR_INDEX_TYPE_IVF_SQ8: VectorIndexType
VECTOR_INDEX_TYPE_DISKANN: VectorIndexType
VECTOR_INDEX_TYPE_AUTOINDEX: VectorIndexType
INFERENCE_BACKEND_UNSPECIFIED: InferenceBackend
INFERENCE_BACKEND_TRITON: InferenceBackend
INFERENCE_BACKEND_ONNXRUNTIME_LOCAL: InferenceBackend
INFERENCE_BACKEND_NONE: InferenceBackend
ITEM_STATUS_UNSPECIFIED: ItemStatus
ITEM_STATUS_INDEXED: ItemStatus
ITEM_STATUS_DUPLICATE: ItemStatus
ITEM_STATUS_FAILED: ItemStatus
ITEM_STATUS_NO_FACE: ItemStatus
UPDATE_STATUS_UNSPECIFIED: UpdateStatus
UPDATE_STATUS_UPDATED: UpdateStatus
UPDATE_STATUS_NOT_FOUND: UpdateStatus
UPDATE_STATUS_FAILED: UpdateStatus

class VideoSampling(_message.Message):
    __slots__ = ("frames", "mode", "seed")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    frames: int
    mode: SamplingMode
    seed: int
    def __init__(self, frames: _Optional[int] = ..., mode: _Optional[_Union[SamplingMode, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class VectorIndexOptions(_message.Message):
    __slots__ = ("type", "hnsw_m", "hnsw_ef_construction", "ivf_nlist", "search_breadth")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    IVF_NLIST_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BREADTH_FIELD_NUMBER: _ClassVar[int]
    type: VectorIndexType
    hnsw_m: int
    hnsw_ef_construction: int
    ivf_nlist: int
    search_breadth: int
    def __init__(self, type: _Optional[_Union[VectorIndexType, str]] = ..., hnsw_m: _Optional[int] = ..., hnsw_ef_construction: _Optional[int] = ..., ivf_nlist: _Optional[int] = ..., search_breadth: _Optional[int] = ...) -> None: ...

class FaceOptions(_message.Message):
    __slots__ = ("margin", "min_face_size", "min_confidence", "whole_image_if_no_face", "max_faces")
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WHOLE_IMAGE_IF_NO_FACE_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    margin: float
    min_face_size: int
    min_confidence: float
    whole_image_if_no_face: bool
    max_faces: int
    def __init__(self, margin: _Optional[float] = ..., min_face_size: _Optional[int] = ..., min_confidence: _Optional[float] = ..., whole_image_if_no_face: _Optional[bool] = ..., max_faces: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "model", "model_version", "dimension", "crop_mode", "index_backend", "metric", "item_count", "created_at", "description", "model_trained", "face_options", "media_type", "video_sampling", "copy_detection", "copy_detection_detail", "vector_index", "vector_index_detail", "imported_item_count", "filter_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CROP_MODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    FACE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    COPY_DETECTION_FIELD_NUMBER: _ClassVar[int]
    COPY_DETECTION_DETAIL_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_DETAIL_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILTER_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    model_version: str
    dimension: int
    crop_mode: CropMode
    index_backend: IndexBackend
    metric: str
    item_count: int
    created_at: _timestamp_pb2.Timestamp
    description: str
    model_trained: bool
    face_options: FaceOptions
    media_type: MediaType
    video_sampling: VideoSampling
    copy_detection: bool
    copy_detection_detail: str
    vector_index: VectorIndexOptions
    vector_index_detail: str
    imported_item_count: int
    filter_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., dimension: _Optional[int] = ..., crop_mode: _Optional[_Union[CropMode, str]] = ..., index_backend: _Optional[_Union[IndexBackend, str]] = ..., metric: _Optional[str] = ..., item_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ..., model_trained: _Optional[bool] = ..., face_options: _Optional[_Union[FaceOptions, _Mapping]] = ..., media_type: _Optional[_Union[MediaType, str]] = ..., video_sampling: _Optional[_Union[VideoSampling, _Mapping]] = ..., copy_detection: _Optional[bool] = ..., copy_detection_detail: _Optional[str] = ..., vector_index: _Optional[_Union[VectorIndexOptions, _Mapping]] = ..., vector_index_detail: _Optional[str] = ..., imported_item_count: _Optional[int] = ..., filter_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "crop_mode", "index_backend", "description", "exist_ok", "face_options", "media_type", "video_sampling", "vector_index", "filter_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CROP_MODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    FACE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    FILTER_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    crop_mode: CropMode
    index_backend: IndexBackend
    description: str
    exist_ok: bool
    face_options: FaceOptions
    media_type: MediaType
    video_sampling: VideoSampling
    vector_index: VectorIndexOptions
    filter_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., crop_mode: _Optional[_Union[CropMode, str]] = ..., index_backend: _Optional[_Union[IndexBackend, str]] = ..., description: _Optional[str] = ..., exist_ok: _Optional[bool] = ..., face_options: _Optional[_Union[FaceOptions, _Mapping]] = ..., media_type: _Optional[_Union[MediaType, str]] = ..., video_sampling: _Optional[_Union[VideoSampling, _Mapping]] = ..., vector_index: _Optional[_Union[VectorIndexOptions, _Mapping]] = ..., filter_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    created: bool
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ImageItem(_message.Message):
    __slots__ = ("id", "uri", "image", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    image: bytes
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., image: _Optional[bytes] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class IndexImagesRequest(_message.Message):
    __slots__ = ("collection", "item")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    item: ImageItem
    def __init__(self, collection: _Optional[str] = ..., item: _Optional[_Union[ImageItem, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "code_name", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    code_name: str
    message: str
    def __init__(self, code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class IndexImagesResponse(_message.Message):
    __slots__ = ("item_index", "id", "uri", "status", "error", "face_box", "face_boxes")
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    FACE_BOXES_FIELD_NUMBER: _ClassVar[int]
    item_index: int
    id: str
    uri: str
    status: ItemStatus
    error: ItemError
    face_box: FaceBox
    face_boxes: _containers.RepeatedCompositeFieldContainer[FaceBox]
    def __init__(self, item_index: _Optional[int] = ..., id: _Optional[str] = ..., uri: _Optional[str] = ..., status: _Optional[_Union[ItemStatus, str]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., face_box: _Optional[_Union[FaceBox, _Mapping]] = ..., face_boxes: _Optional[_Iterable[_Union[FaceBox, _Mapping]]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class FaceBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max", "confidence")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    confidence: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...

class SearchImagesRequest(_message.Message):
    __slots__ = ("collection", "image", "vector", "item_id", "top_k", "copy_detection", "search_breadth", "filter", "min_score")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COPY_DETECTION_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BREADTH_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    vector: Vector
    item_id: str
    top_k: int
    copy_detection: bool
    search_breadth: int
    filter: str
    min_score: float
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., item_id: _Optional[str] = ..., top_k: _Optional[int] = ..., copy_detection: _Optional[bool] = ..., search_breadth: _Optional[int] = ..., filter: _Optional[str] = ..., min_score: _Optional[float] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("rank", "id", "uri", "score", "face_box", "metadata", "sha256", "matched_keypoints")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MATCHED_KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    id: str
    uri: str
    score: float
    face_box: FaceBox
    metadata: _struct_pb2.Struct
    sha256: str
    matched_keypoints: int
    def __init__(self, rank: _Optional[int] = ..., id: _Optional[str] = ..., uri: _Optional[str] = ..., score: _Optional[float] = ..., face_box: _Optional[_Union[FaceBox, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sha256: _Optional[str] = ..., matched_keypoints: _Optional[int] = ...) -> None: ...

class SearchImagesResponse(_message.Message):
    __slots__ = ("hits", "model", "model_trained", "inference_backend", "query_face_box")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUERY_FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    model: str
    model_trained: bool
    inference_backend: InferenceBackend
    query_face_box: FaceBox
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., model: _Optional[str] = ..., model_trained: _Optional[bool] = ..., inference_backend: _Optional[_Union[InferenceBackend, str]] = ..., query_face_box: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...

class BatchQuery(_message.Message):
    __slots__ = ("image", "vector", "item_id", "filter")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    vector: Vector
    item_id: str
    filter: str
    def __init__(self, image: _Optional[bytes] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., item_id: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class BatchSearchImagesRequest(_message.Message):
    __slots__ = ("collection", "queries", "top_k", "copy_detection", "search_breadth", "filter", "min_score")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COPY_DETECTION_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BREADTH_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[BatchQuery]
    top_k: int
    copy_detection: bool
    search_breadth: int
    filter: str
    min_score: float
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[BatchQuery, _Mapping]]] = ..., top_k: _Optional[int] = ..., copy_detection: _Optional[bool] = ..., search_breadth: _Optional[int] = ..., filter: _Optional[str] = ..., min_score: _Optional[float] = ...) -> None: ...

class BatchSearchResult(_message.Message):
    __slots__ = ("hits", "error", "query_face_box")
    HITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUERY_FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    error: ItemError
    query_face_box: FaceBox
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., query_face_box: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...

class BatchSearchImagesResponse(_message.Message):
    __slots__ = ("results", "model", "model_trained", "inference_backend")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchSearchResult]
    model: str
    model_trained: bool
    inference_backend: InferenceBackend
    def __init__(self, results: _Optional[_Iterable[_Union[BatchSearchResult, _Mapping]]] = ..., model: _Optional[str] = ..., model_trained: _Optional[bool] = ..., inference_backend: _Optional[_Union[InferenceBackend, str]] = ...) -> None: ...

class EmbedImageRequest(_message.Message):
    __slots__ = ("image", "model", "collection")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    collection: str
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class EmbedImageResponse(_message.Message):
    __slots__ = ("vector", "model", "model_version", "model_trained", "inference_backend")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_version: str
    model_trained: bool
    inference_backend: InferenceBackend
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., model_trained: _Optional[bool] = ..., inference_backend: _Optional[_Union[InferenceBackend, str]] = ...) -> None: ...

class DeleteImagesRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteImagesResponse(_message.Message):
    __slots__ = ("deleted_ids", "not_found_ids")
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_ids: _Optional[_Iterable[str]] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "dimension", "trained", "input_size", "weights_sha256", "weights_source", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    dimension: int
    trained: bool
    input_size: int
    weights_sha256: str
    weights_source: str
    precision: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., dimension: _Optional[int] = ..., trained: _Optional[bool] = ..., input_size: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., weights_source: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_image_bytes", "max_image_pixels", "max_top_k", "max_receive_message_bytes", "max_video_bytes", "max_video_duration_s", "max_video_width", "max_video_height", "max_video_frames", "max_batch_queries", "max_import_items_per_message", "max_get_ids", "max_page_size", "max_filter_bytes")
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_VIDEO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMPORT_ITEMS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_GET_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_FILTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_image_bytes: int
    max_image_pixels: int
    max_top_k: int
    max_receive_message_bytes: int
    max_video_bytes: int
    max_video_duration_s: float
    max_video_width: int
    max_video_height: int
    max_video_frames: int
    max_batch_queries: int
    max_import_items_per_message: int
    max_get_ids: int
    max_page_size: int
    max_filter_bytes: int
    def __init__(self, max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., max_video_bytes: _Optional[int] = ..., max_video_duration_s: _Optional[float] = ..., max_video_width: _Optional[int] = ..., max_video_height: _Optional[int] = ..., max_video_frames: _Optional[int] = ..., max_batch_queries: _Optional[int] = ..., max_import_items_per_message: _Optional[int] = ..., max_get_ids: _Optional[int] = ..., max_page_size: _Optional[int] = ..., max_filter_bytes: _Optional[int] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "inference_backend", "inference_detail", "fallback", "models", "vector_store", "limits", "default_model", "default_model_reason", "vector_index_types", "default_vector_index")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_REASON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_TYPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VECTOR_INDEX_FIELD_NUMBER: _ClassVar[int]
    version: str
    inference_backend: InferenceBackend
    inference_detail: str
    fallback: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    vector_store: str
    limits: Limits
    default_model: str
    default_model_reason: str
    vector_index_types: _containers.RepeatedScalarFieldContainer[VectorIndexType]
    default_vector_index: VectorIndexType
    def __init__(self, version: _Optional[str] = ..., inference_backend: _Optional[_Union[InferenceBackend, str]] = ..., inference_detail: _Optional[str] = ..., fallback: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., vector_store: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_model: _Optional[str] = ..., default_model_reason: _Optional[str] = ..., vector_index_types: _Optional[_Iterable[_Union[VectorIndexType, str]]] = ..., default_vector_index: _Optional[_Union[VectorIndexType, str]] = ...) -> None: ...

class ImportVectorsHeader(_message.Message):
    __slots__ = ("collection", "model", "model_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: str
    model_version: str
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class VectorItem(_message.Message):
    __slots__ = ("id", "uri", "metadata", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    metadata: _struct_pb2.Struct
    vector: Vector
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class ImportVectorsRequest(_message.Message):
    __slots__ = ("header", "items")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    header: ImportVectorsHeader
    items: _containers.RepeatedCompositeFieldContainer[VectorItem]
    def __init__(self, header: _Optional[_Union[ImportVectorsHeader, _Mapping]] = ..., items: _Optional[_Iterable[_Union[VectorItem, _Mapping]]] = ...) -> None: ...

class ImportFailure(_message.Message):
    __slots__ = ("item_index", "id", "error")
    ITEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    item_index: int
    id: str
    error: ItemError
    def __init__(self, item_index: _Optional[int] = ..., id: _Optional[str] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ImportVectorsResponse(_message.Message):
    __slots__ = ("received", "imported", "existing", "failed", "failures", "note")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    received: int
    imported: int
    existing: int
    failed: int
    failures: _containers.RepeatedCompositeFieldContainer[ImportFailure]
    note: str
    def __init__(self, received: _Optional[int] = ..., imported: _Optional[int] = ..., existing: _Optional[int] = ..., failed: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[ImportFailure, _Mapping]]] = ..., note: _Optional[str] = ...) -> None: ...

class VideoHeader(_message.Message):
    __slots__ = ("collection", "id", "uri", "metadata", "sampling", "size_bytes")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    uri: str
    metadata: _struct_pb2.Struct
    sampling: VideoSampling
    size_bytes: int
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sampling: _Optional[_Union[VideoSampling, _Mapping]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class IndexVideoRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: VideoHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[VideoHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("timestamp_s", "face_boxes")
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    FACE_BOXES_FIELD_NUMBER: _ClassVar[int]
    timestamp_s: float
    face_boxes: _containers.RepeatedCompositeFieldContainer[FaceBox]
    def __init__(self, timestamp_s: _Optional[float] = ..., face_boxes: _Optional[_Iterable[_Union[FaceBox, _Mapping]]] = ...) -> None: ...

class IndexVideoResponse(_message.Message):
    __slots__ = ("id", "uri", "status", "duration_s", "width", "height", "frames", "vector_count", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    status: ItemStatus
    duration_s: float
    width: int
    height: int
    frames: _containers.RepeatedCompositeFieldContainer[VideoFrame]
    vector_count: int
    sha256: str
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., status: _Optional[_Union[ItemStatus, str]] = ..., duration_s: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frames: _Optional[_Iterable[_Union[VideoFrame, _Mapping]]] = ..., vector_count: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SearchVideosHeader(_message.Message):
    __slots__ = ("collection", "top_k", "ranking", "sampling", "image", "filter", "min_score")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    top_k: int
    ranking: VideoRanking
    sampling: VideoSampling
    image: bytes
    filter: str
    min_score: float
    def __init__(self, collection: _Optional[str] = ..., top_k: _Optional[int] = ..., ranking: _Optional[_Union[VideoRanking, str]] = ..., sampling: _Optional[_Union[VideoSampling, _Mapping]] = ..., image: _Optional[bytes] = ..., filter: _Optional[str] = ..., min_score: _Optional[float] = ...) -> None: ...

class SearchVideosRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SearchVideosHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[SearchVideosHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class FrameMatch(_message.Message):
    __slots__ = ("timestamp_s", "score", "face_box", "query_timestamp_s")
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    QUERY_TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    timestamp_s: float
    score: float
    face_box: FaceBox
    query_timestamp_s: float
    def __init__(self, timestamp_s: _Optional[float] = ..., score: _Optional[float] = ..., face_box: _Optional[_Union[FaceBox, _Mapping]] = ..., query_timestamp_s: _Optional[float] = ...) -> None: ...

class VideoHit(_message.Message):
    __slots__ = ("rank", "id", "uri", "score", "matches", "metadata", "sha256")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    rank: int
    id: str
    uri: str
    score: float
    matches: _containers.RepeatedCompositeFieldContainer[FrameMatch]
    metadata: _struct_pb2.Struct
    sha256: str
    def __init__(self, rank: _Optional[int] = ..., id: _Optional[str] = ..., uri: _Optional[str] = ..., score: _Optional[float] = ..., matches: _Optional[_Iterable[_Union[FrameMatch, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class SearchVideosResponse(_message.Message):
    __slots__ = ("hits", "model", "model_trained", "ranking", "query_frames", "inference_backend")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    QUERY_FRAMES_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[VideoHit]
    model: str
    model_trained: bool
    ranking: VideoRanking
    query_frames: _containers.RepeatedCompositeFieldContainer[VideoFrame]
    inference_backend: InferenceBackend
    def __init__(self, hits: _Optional[_Iterable[_Union[VideoHit, _Mapping]]] = ..., model: _Optional[str] = ..., model_trained: _Optional[bool] = ..., ranking: _Optional[_Union[VideoRanking, str]] = ..., query_frames: _Optional[_Iterable[_Union[VideoFrame, _Mapping]]] = ..., inference_backend: _Optional[_Union[InferenceBackend, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "uri", "metadata", "sha256", "create_time", "face_boxes", "vector", "imported")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FACE_BOXES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    metadata: _struct_pb2.Struct
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    face_boxes: _containers.RepeatedCompositeFieldContainer[FaceBox]
    vector: Vector
    imported: bool
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., face_boxes: _Optional[_Iterable[_Union[FaceBox, _Mapping]]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., imported: _Optional[bool] = ...) -> None: ...

class GetImagesRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class GetImagesResponse(_message.Message):
    __slots__ = ("images", "not_found_ids")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("collection", "filter", "page_size", "page_token", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: str
    page_size: int
    page_token: str
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_page_token", "page_size")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    next_page_token: str
    page_size: int
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ImageUpdate(_message.Message):
    __slots__ = ("id", "metadata", "uri")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: _struct_pb2.Struct
    uri: str
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., uri: _Optional[str] = ...) -> None: ...

class UpdateImagesRequest(_message.Message):
    __slots__ = ("collection", "updates", "update_mask")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    collection: str
    updates: _containers.RepeatedCompositeFieldContainer[ImageUpdate]
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, collection: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[ImageUpdate, _Mapping]]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateResult(_message.Message):
    __slots__ = ("id", "status", "error", "image")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: UpdateStatus
    error: ItemError
    image: Image
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[UpdateStatus, str]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class UpdateImagesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpdateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpdateResult, _Mapping]]] = ...) -> None: ...
