"""The small interface every embedding backend implements."""

from __future__ import annotations

import enum
from typing import Protocol

import numpy as np

from ..models import ModelSpec


class BackendKind(enum.Enum):
    TRITON = "triton"
    ONNXRUNTIME_LOCAL = "onnxruntime-local"
    NONE = "none"


class EmbeddingBackend(Protocol):
    kind: BackendKind

    async def start(self, models: dict[str, ModelSpec]) -> None:
        """Connects / loads; raises errors.Unavailable when the backend cannot serve the models."""

    async def embed(self, model: ModelSpec, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] RGB images to float32 [N, D] raw (unnormalised) features.

        Raises errors.Unavailable when the backend cannot be reached in time.
        """

    def describe(self) -> str:
        """A line for logs and the info RPC."""

    async def close(self) -> None: ...
