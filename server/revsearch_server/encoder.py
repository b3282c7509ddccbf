"""The encoder, a shared domain service: image bytes or decoded frames -> model inputs -> vectors.

decode (the decode pool) -> face crops when the collection crops faces (faces/cropper.py, its own
worker) or the whole image resized for the model -> embed (micro-batched per model, embedding/).
Image and video use cases both encode through here; it knows nothing of collections' storage.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from .domain import FaceOptions
from .embedding.base import BackendKind
from .embedding.embedder import Embedder
from .errors import RevsearchError
from .faces.cropper import FaceCrop, FaceCropper, NoFace
from .imaging import ImageLimits, model_input, preprocess
from .models import ModelSpec
from .observability import Metrics, or_null


class Encoder:
    def __init__(self, embedder: Embedder, cropper: FaceCropper, decode_pool: Executor, limits: ImageLimits,
                 metrics: Metrics | None = None):
        self._embedder = embedder
        self._cropper = cropper
        self._pool = decode_pool
        self.limits = limits
        self._metrics = or_null(metrics)

    @property
    def backend(self) -> BackendKind:
        """The inference backend answering now (it changes on failover)."""
        return self._embedder.backend.kind

    async def prepare(self, images: list[bytes], model: ModelSpec, faces: FaceOptions | None,
                      all_faces: bool = False) -> list[list[FaceCrop] | RevsearchError]:
        """Per image, in order: its model inputs (its face crops when faces is set: the most
        prominent only, or up to faces.max_faces with all_faces), or its error."""
        if faces is not None:
            return await self._cropper.crops(images, model, faces, all_faces)  # times decode and detect
        if not images:
            return []
        loop = asyncio.get_running_loop()

        async def one(data: bytes):
            try:
                pixels = await loop.run_in_executor(self._pool, preprocess, data, self.limits, model.input_size,
                                                    model.resize_to, model.whole_image)
                return [FaceCrop(pixels, None)]
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            return list(await asyncio.gather(*(one(d) for d in images)))

    async def prepare_query(self, data: bytes, model: ModelSpec, faces: FaceOptions | None) -> FaceCrop:
        """The one model input a query image stands for: its most prominent face (what a query
        photo is about), or the whole image; NoFace / InvalidArgument otherwise."""
        [prepared] = await self.prepare([data], model, faces)
        if isinstance(prepared, NoFace):
            raise NoFace(f"the query image has {prepared}") from None
        if isinstance(prepared, RevsearchError):
            raise prepared
        return prepared[0]

    async def prepare_frames(self, frames: list[np.ndarray], model: ModelSpec, faces: FaceOptions | None,
                             all_faces: bool, detect_max_side: int | None) -> list[list[FaceCrop]]:
        """Per decoded RGB frame: its model inputs; an empty list for a frame without a face."""
        if faces is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: [
                [FaceCrop(model_input(Image.fromarray(a), model), None)]
                for a in frames])
        results = await self._cropper.crops_of_arrays(frames, model, faces, all_faces,
                                                      detect_max_side=detect_max_side)
        out = []
        for r in results:
            if isinstance(r, NoFace):
                out.append([])
            elif isinstance(r, RevsearchError):
                raise r
            else:
                out.append(r)
        return out

    async def embed(self, model: ModelSpec, crops: list[FaceCrop]) -> np.ndarray:
        """L2-normalised float32 [len(crops), D]."""
        return await self._embedder.embed(model, np.stack([c.pixels for c in crops]))

    async def embed_copy(self, model: ModelSpec, pixels: list[np.ndarray]) -> np.ndarray:
        """Copy detection's vectors of whole-image model inputs: float32 [N, regions, copy_dimension]
        (copy_vectors.py), the whole image's first."""
        return await self._embedder.embed_copy(model, np.stack(pixels))
