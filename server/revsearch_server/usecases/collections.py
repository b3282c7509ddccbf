"""Collection use cases: create (with the defaults filled in), list, describe, drop."""

from __future__ import annotations

from collections.abc import Callable

from ..catalog import CollectionSpec
from ..collection_service import CollectionInfo, Collections
from ..copies import VIEWS
from ..domain import CropMode, FaceOptions, IndexKind, MediaType
from ..errors import InvalidArgument
from ..models import ModelSpec
from ..vector_index import IndexRequest
from ..video.sampling import SamplingOptions, VideoLimits

# Video collections with no model named take the face model: "which videos show this person".
VIDEO_DEFAULT_MODEL = "face_dlib"


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


class ManageCollections:
    def __init__(self, collections: Collections, video_limits: VideoLimits):
        self._collections = collections
        self._video_limits = video_limits

    async def create(self, name: str, model: str, crop_mode: CropMode | None, index_kind: IndexKind,
                     description: str, exist_ok: bool, face_options: FaceOptions | None = None,
                     media_type: MediaType = MediaType.IMAGE, video_sampling: SamplingOptions | None = None,
                     vector_index: IndexRequest = IndexRequest(), filter_keys: tuple[str, ...] = ()
                     ) -> tuple[CollectionSpec, bool]:
        """crop_mode None: unspecified. Video collections then default to the face pipeline (the
        face model, every face of every sampled frame); image collections to whole images."""
        models = self._collections.models
        if media_type is MediaType.VIDEO and not model and VIDEO_DEFAULT_MODEL in models:
            model = VIDEO_DEFAULT_MODEL
        spec = models.get(model)
        if crop_mode is None:
            video_faces = media_type is MediaType.VIDEO and (spec.needs_face_crop or spec.name == VIDEO_DEFAULT_MODEL)
            crop_mode = CropMode.ALL_FACES if video_faces else CropMode.NONE
        options = check_crop_settings(spec, crop_mode, face_options)
        if media_type is MediaType.IMAGE and video_sampling is not None:
            raise InvalidArgument("video_sampling applies only to video collections (media type video)")
        sampling = (video_sampling or SamplingOptions()).validate(self._video_limits)
        # Copy detection (copies.py) for whole images of trained general-image models (an UNTRAINED
        # model's vectors mean nothing: its tests would pay five embeddings per image for nothing).
        copies = (media_type is MediaType.IMAGE and crop_mode is CropMode.NONE and not spec.needs_face_crop
                  and spec.trained)
        return await self._collections.create(name, spec, crop_mode, index_kind, description, exist_ok, options,
                                              media_type, sampling, len(VIEWS) if copies else 0, vector_index,
                                              filter_keys)

    def empty(self, spec: CollectionSpec) -> CollectionInfo:
        """What DescribeCollection shows of a collection just created (no store call)."""
        return self._collections.empty(spec)

    async def describe(self, name: str) -> CollectionInfo:
        """Settings, stored vector count, imported items and the vector index in use."""
        return await self._collections.describe(name)

    async def list(self, visible: Callable[[str], bool] = lambda name: True) -> list[CollectionInfo]:
        """The collections whose names `visible` accepts, with their counts."""
        return await self._collections.list(visible)

    async def drop(self, name: str) -> None:
        await self._collections.drop(name)
