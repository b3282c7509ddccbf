"""The small interface every inference backend implements (Triton, ONNX Runtime in-process, the
failover between them, and the tests' fakes), readiness calls included."""

from __future__ import annotations

import enum
from typing import Protocol

import numpy as np

from ..models import ModelSpec


class BackendKind(enum.Enum):
    TRITON = "triton"
    ONNXRUNTIME_LOCAL = "onnxruntime-local"
    NONE = "none"


class InferenceBackend(Protocol):
    kind: BackendKind

    async def wait_ready(self, models: dict[str, ModelSpec], within_s: float) -> None:
        """Connects / loads until every model can be served; errors.Unavailable after within_s."""

    async def ping(self, timeout_s: float) -> bool:
        """Whether the backend answers within timeout_s (the health check; never raises)."""

    async def embed(self, model: ModelSpec, images: np.ndarray, output: str = "") -> np.ndarray:
        """uint8 [N, S, S, 3] RGB images to float32 [N, D] raw (unnormalised) features; with output
        set to the model's copy_output, its regional vectors [N, copy_regions, D] instead.

        Raises errors.Unavailable when the backend cannot be reached in time.
        """

    def describe(self) -> str:
        """A line for logs and the info RPC."""

    async def close(self) -> None: ...
