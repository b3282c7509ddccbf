"""Deterministic stand-ins for the inference backend and the face detector, for fast service
tests of the logic around them (the integration tests use the real Triton, ONNX Runtime, MTCNN).

FakeInference embeds an image as a fixed random projection of its 8x8 thumbnail: the same
pixels give the same vector, similar pixels similar vectors, so searches rank as expected.
FakeDetector finds one face, centred, in any image that is not nearly flat.
"""

from __future__ import annotations

import numpy as np

from revsearch_server.embedding.base import BackendKind
from revsearch_server.faces.geometry import DetectedFace


class FakeInference:
    kind = BackendKind.ONNXRUNTIME_LOCAL  # reported as the in-process backend

    def __init__(self):
        self.calls = 0
        self.images = 0

    async def wait_ready(self, models, within_s):
        pass

    async def ping(self, timeout_s):
        return True

    async def embed(self, model, images: np.ndarray, output: str = "") -> np.ndarray:
        """[N, D]; with a copy output, the same vector for each of the model's regions [N, R, D]."""
        if output:
            return np.repeat((await self.embed(model, images))[:, None], model.copy_regions, axis=1)
        self.calls += 1
        self.images += len(images)
        n, h, w, _ = images.shape
        thumbs = images[:, ::max(1, h // 8), ::max(1, w // 8)][:, :8, :8].reshape(n, -1).astype(np.float32)
        thumbs -= thumbs.mean(axis=1, keepdims=True)
        projection = np.random.default_rng(model.dimension).normal(size=(thumbs.shape[1], model.dimension))
        return (thumbs @ projection.astype(np.float32) + 1e-3).astype(np.float32)

    def describe(self):
        return "fake inference (tests)"

    async def close(self):
        pass


class FakeDetector:
    """One face in the middle half of every image with some contrast; none in flat images."""

    def __init__(self, min_face_size: int = 20):
        self.min_face_size = min_face_size

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace] | None]:
        out = []
        for img in images:
            h, w = img.shape[:2]
            if img.std() < 5 or min(h, w) < 2 * self.min_face_size:
                out.append([])
                continue
            x0, y0, x1, y1 = w / 4, h / 4, 3 * w / 4, 3 * h / 4
            fw, fh = x1 - x0, y1 - y0
            landmarks = np.array([[x0 + 0.3 * fw, y0 + 0.35 * fh], [x0 + 0.7 * fw, y0 + 0.35 * fh],
                                  [x0 + 0.5 * fw, y0 + 0.55 * fh], [x0 + 0.35 * fw, y0 + 0.75 * fh],
                                  [x0 + 0.65 * fw, y0 + 0.75 * fh]], np.float32)
            out.append([DetectedFace((x0, y0, x1, y1), 0.99, landmarks)])
        return out
