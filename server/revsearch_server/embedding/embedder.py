"""Model-aware embedding: batches per model, calls the backend, L2-normalises."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..models import ModelSpec
from ..observability import Metrics, or_null
from .batcher import MicroBatcher
from .failover import FailoverBackend


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Embedder:
    def __init__(self, backend: FailoverBackend, models: dict[str, ModelSpec], default_model: str,
                 batch_max_size: int, batch_max_wait_s: float, metrics: Metrics | None = None):
        self.backend = backend
        self.models = models
        self.default_model = default_model
        self._metrics = or_null(metrics)
        self._batchers = {
            name: MicroBatcher(lambda x, spec=spec: backend.embed(spec, x), batch_max_size, batch_max_wait_s,
                               metrics, name)
            for name, spec in models.items()
        }

    def model(self, name: str) -> ModelSpec:
        name = name or self.default_model
        spec = self.models.get(name)
        if spec is None:
            raise InvalidArgument(f"unknown model {name!r}; available: {', '.join(sorted(self.models))}")
        return spec

    async def embed(self, model: ModelSpec, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] to L2-normalised float32 [N, D]."""
        with self._metrics.stage("embed"):  # the wait for a batch included
            if not model.flip_average:
                return l2_normalize(await self._batchers[model.name].submit(images))
            both = l2_normalize(await self._batchers[model.name].submit(np.concatenate([images, images[:, :, ::-1]])))
            n = len(images)
            return l2_normalize(both[:n] + both[n:])

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        await self.backend.close()
