"""What GetServerInfo reports: version, the inference backend answering now, models, store, limits."""

from __future__ import annotations

from dataclasses import dataclass

from ..filters import MAX_FILTER_BYTES
from .items import MAX_GET_IDS, MAX_PAGE_SIZE
from .. import __version__
from ..config import Settings
from ..embedding.base import BackendKind, InferenceBackend
from ..models import ModelSpec, ServedModels
from ..index.base import VectorStore
from ..validation import MAX_BATCH_QUERIES, MAX_IMPORT_ITEMS_PER_MESSAGE
from ..vector_index import IndexType


@dataclass(frozen=True)
class Limits:
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
    max_import_items_per_message: int = MAX_IMPORT_ITEMS_PER_MESSAGE
    max_get_ids: int = MAX_GET_IDS
    max_page_size: int = MAX_PAGE_SIZE
    max_filter_bytes: int = MAX_FILTER_BYTES


@dataclass(frozen=True)
class ServerInfo:
    version: str
    backend: BackendKind
    backend_detail: str
    fallback: str
    models: list[ModelSpec]
    default_model: str
    vector_store: str
    limits: Limits
    # Why default_model (models.resolve_default), e.g. "auto: ...".
    default_model_reason: str = ""
    # The vector indexes the store builds, and a new collection's when none is asked for.
    vector_index_types: tuple[IndexType, ...] = (IndexType.FLAT,)
    default_vector_index: IndexType = IndexType.FLAT


class DescribeServer:
    """Reads the live state on each call (the active backend changes on failover)."""

    def __init__(self, settings: Settings, backend: InferenceBackend, models: ServedModels, store: VectorStore):
        self._backend = backend
        self._models = models
        self._store = store
        self._fallback = settings.fallback
        s = settings
        self._limits = Limits(
            max_image_bytes=s.max_image_bytes, max_image_pixels=s.max_image_pixels, max_top_k=s.max_top_k,
            max_receive_message_bytes=s.max_receive_message_bytes, max_video_bytes=s.max_video_bytes,
            max_video_duration_s=s.max_video_duration_s, max_video_width=s.max_video_width,
            max_video_height=s.max_video_height, max_video_frames=s.max_video_frames,
            max_batch_queries=MAX_BATCH_QUERIES)

    def info(self) -> ServerInfo:
        return ServerInfo(version=__version__, backend=self._backend.kind, backend_detail=self._backend.describe(),
                          fallback=self._fallback, models=list(self._models.values()),
                          default_model=self._models.default, vector_store=self._store.describe(),
                          limits=self._limits, default_model_reason=self._models.default_reason,
                          vector_index_types=self._store.index_types(),
                          default_vector_index=self._store.default_index_type)
