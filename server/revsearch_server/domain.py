"""Typed domain values shared by every layer: enums for the closed sets of names, a face box.

The enums' values are the names users type (CLI flags, collection settings stored as JSON), and
they are the same strings as the client's tables in `revsearch/names.py`, from which
`transport/convert.py` derives the protobuf mapping: one list of names for server, client and CLI.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidArgument

# Crop mode "all": at most this many faces per image may be stored.
MAX_FACES_LIMIT = 64


class CropMode(str, enum.Enum):
    """What of an image is embedded."""
    NONE = "none"  # the whole image
    LARGEST_FACE = "largest"  # the most prominent face
    ALL_FACES = "all"  # every face (up to FaceOptions.max_faces), one stored row each


class MediaType(str, enum.Enum):
    IMAGE = "image"
    VIDEO = "video"


class IndexKind(str, enum.Enum):
    MILVUS = "milvus"
    EXACT_KNN = "exact_knn"


class SamplingMode(str, enum.Enum):
    """How a video's frames are picked (video/sampling.py explains each)."""
    UNIFORM = "uniform"
    JITTER = "jitter"
    SCENE = "scene"


class VideoRanking(str, enum.Enum):
    """How SearchVideos scores a video: per frame (best row per query vector) or by mean vector."""
    FRAMES = "frames"
    MEAN_VECTOR = "mean_vector"


class ItemStatus(str, enum.Enum):
    """What happened to one indexed image or video."""
    INDEXED = "indexed"
    DUPLICATE = "duplicate"  # the same bytes are stored already (under the id returned)
    FAILED = "failed"  # nothing stored; the outcome's error says why
    NO_FACE = "no_face"  # a face crop mode found no face; nothing stored


@dataclass(frozen=True)
class FaceBox:
    """A detected face in the original image's pixels, with the detector's confidence (0..1)."""
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    confidence: float

    def to_list(self) -> list[float]:
        """The compact stored form (exact-KNN segment files, the old Milvus layout)."""
        return [self.x_min, self.y_min, self.x_max, self.y_max, self.confidence]

    @classmethod
    def from_list(cls, values: Sequence[float] | None) -> "FaceBox | None":
        if not values or len(values) != 5:
            return None
        return cls(*(float(v) for v in values))


@dataclass(frozen=True)
class FaceOptions:
    """A face collection's detection settings."""
    margin: float = 0.2  # box-with-margin crops: the margin, as a fraction of the box size
    min_face_size: int = 20  # pixels
    min_confidence: float = 0.9
    whole_image_if_no_face: bool = False
    # Crop mode "all": at most this many faces per image are stored, the most prominent first, so
    # a crowd photo cannot flood a collection.
    max_faces: int = 16

    def validate(self) -> "FaceOptions":
        if not 0.0 <= self.margin <= 1.0:
            raise InvalidArgument(f"face_options.margin must be within 0..1, got {self.margin}")
        if not 10 <= self.min_face_size <= 2000:
            raise InvalidArgument(f"face_options.min_face_size must be within 10..2000, got {self.min_face_size}")
        if not 0.0 < self.min_confidence < 1.0:
            raise InvalidArgument(f"face_options.min_confidence must be within (0, 1), got {self.min_confidence}")
        if not 1 <= self.max_faces <= MAX_FACES_LIMIT:
            raise InvalidArgument(f"face_options.max_faces must be within 1..{MAX_FACES_LIMIT}, got {self.max_faces}")
        return self


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); stored and query vectors are compared by cosine."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
