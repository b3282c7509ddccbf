"""Copy detection's compact vectors: the model's regional GeM vectors PCA-whitened.

A model with a copy descriptor (ModelSpec.copy_output, scripts/copy_whitening.py) gives, in the same
forward pass as its embedding, GeM vectors of the whole feature map and of its four quadrants
([N, 5, 1280] for efficientnet_lite0). A copy-detection collection stores them projected to
ModelSpec.copy_dimension (128) with the whitening learned at build time: row 0 is an item's
whole-image vector (the collection's vector), rows 1-4 its crop views (the views index). One model
run per image instead of five, and 5 x 128 numbers instead of 5 x 1280. Collections created from
this release keep only the VIEW_DIMENSION leading dimensions of the crop views (leading): PCA orders
them by variance, and the candidates they find hardly changed (docs/copy-detection.md).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .domain import l2_normalize
from .errors import Unavailable
from .models import ModelSpec


# The crop views' dimensions in new compact collections (CollectionSpec.view_dimension): 4 x 48
# numbers fewer an item, 768 bytes in float32. On the development half with 20,000 distractors (the
# original among a 50% crop's 32 candidates, offline): 0.769 with 128, 0.750 with 80; through the
# server on the development split, with the views' scores put on the rows' scale
# (usecases/images.ImageSearch._search_views), UKBench-style N-S 3.392 against 3.373 with 128 (3.293 without it).
VIEW_DIMENSION = 80


def leading(vectors: np.ndarray, dimension: int) -> np.ndarray:
    """The first `dimension` dimensions of whitened vectors [..., D], L2-normalised again (all of them
    when dimension is D or more)."""
    if dimension >= vectors.shape[-1]:
        return vectors
    return l2_normalize(vectors[..., :dimension])


class CopyProjections:
    """The whitening of each model with a copy descriptor, loaded once (thread-safe)."""

    def __init__(self):
        self._loaded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _load(self, model: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
        path = model.copy_whitening
        if path is None:
            raise Unavailable(f"model {model.name} has no copy descriptor")
        with self._lock:
            if path not in self._loaded:
                try:
                    with np.load(path) as npz:
                        mean, projection = npz["mean"].astype(np.float32), npz["projection"].astype(np.float32)
                except (OSError, KeyError, ValueError) as exc:
                    raise Unavailable(f"model {model.name}: cannot read its copy whitening {path.name} ({exc}); "
                                      "rebuild it with `make models`") from exc
                if projection.shape != (model.dimension, model.copy_dimension) or mean.shape != (model.dimension,):
                    raise Unavailable(f"model {model.name}: its copy whitening {path.name} has shape "
                                      f"{projection.shape}, not ({model.dimension}, {model.copy_dimension})")
                self._loaded[path] = (mean, projection)
            return self._loaded[path]

    def project(self, model: ModelSpec, regions: np.ndarray) -> np.ndarray:
        """Raw regional vectors [N, R, D_model] -> L2-normalised whitened vectors [N, R, copy_dimension]."""
        mean, projection = self._load(model)
        x = l2_normalize(regions.reshape(-1, regions.shape[-1]).astype(np.float32))
        out = l2_normalize((x - mean) @ projection)
        return out.reshape(regions.shape[0], regions.shape[1], -1)
