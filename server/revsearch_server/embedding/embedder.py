"""Model-aware embedding: micro-batches per model, calls the backend, L2-normalises (and averages
a face chip with its mirror image for face models). Copy detection's regional vectors (copy_vectors.py)
come from the same graph's other output, micro-batched apart and whitened here."""

from __future__ import annotations

import numpy as np

from ..copy_vectors import CopyProjections
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
        # Copy detection: one batcher per model and input side (batched inputs must share their size).
        self._copy_batchers = {
            (name, side): MicroBatcher(lambda x, spec=spec: backend.embed(spec, x, spec.copy_output), batch_max_size,
                                       batch_max_wait_s, metrics, f"{name}:{spec.copy_output}:{side}")
            for name, spec in models.items() if spec.has_copy_descriptor
            for side in {spec.input_size, spec.copy_query_side or spec.input_size}
        }
        self._projections = CopyProjections()

    async def embed(self, model: ModelSpec, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] to L2-normalised float32 [N, D]."""
        with self._metrics.stage("embed"):  # the wait for a batch included
            if not model.flip_average:
                return l2_normalize(await self._batchers[model.name].submit(images))
            both = l2_normalize(await self._batchers[model.name].submit(np.concatenate([images, images[:, :, ::-1]])))
            n = len(images)
            return l2_normalize(both[:n] + both[n:])

    async def embed_copy(self, model: ModelSpec, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] to copy detection's whitened, L2-normalised float32 [N, regions, copy_dimension]
        (the whole image first, then its crop views), from one forward pass per image."""
        with self._metrics.stage("embed"):
            regions = await self._copy_batchers[model.name, images.shape[1]].submit(images)
        return self._projections.project(model, regions)

    async def close(self) -> None:
        for b in [*self._batchers.values(), *self._copy_batchers.values()]:
            await b.close()
        await self.backend.close()
