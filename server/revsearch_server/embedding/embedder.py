"""Model-aware embedding: micro-batches per model, calls the backend, L2-normalises (and averages
a face chip with its mirror image for face models)."""

from __future__ import annotations

import numpy as np

from ..domain import l2_normalize
from ..models import ModelSpec
from ..observability import Metrics, or_null
from .base import InferenceBackend
from .batcher import MicroBatcher


class Embedder:
    def __init__(self, backend: InferenceBackend, models: dict[str, ModelSpec], batch_max_size: int,
                 batch_max_wait_s: float, metrics: Metrics | None = None):
        self.backend = backend
        self._metrics = or_null(metrics)
        self._batchers = {
            name: MicroBatcher(lambda x, spec=spec: backend.embed(spec, x), batch_max_size, batch_max_wait_s,
                               metrics, name)
            for name, spec in models.items()
        }

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
