"""MTCNN face detection (facenet-pytorch, CPU): boxes, confidences and five landmarks per face.

The P-, R- and O-net weights ship inside the facenet-pytorch wheel, so nothing downloads at run time.
torch and facenet-pytorch are imported when an MtcnnDetector is made, not with this module: the
serving environment has neither (it runs faces/onnx_mtcnn.py), and DetectorSettings is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .geometry import DetectedFace, reported_faces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorSettings:
    min_face_size: int = 20  # pixels, MTCNN's min_face_size
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-net
    min_confidence: float = 0.9  # faces below are dropped


class MtcnnDetector:
    """The FaceDetector of faces/cropper.py with facenet-pytorch's MTCNN (torch, in this process)."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()):
        from facenet_pytorch import MTCNN  # torch: only the fallback detector needs it

        self.settings = settings
        self._mtcnn = MTCNN(keep_all=True, device="cpu", post_process=False,
                            min_face_size=settings.min_face_size, thresholds=list(settings.thresholds))

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace] | None]:
        """RGB uint8 HxWx3 arrays -> faces per image, most confident first; None for an image MTCNN
        failed on. Images of the same size are detected in one batched MTCNN call (group by shape,
        keep the input order in the result)."""
        import torch

        groups: dict[tuple[int, ...], list[int]] = {}
        results: list[list[DetectedFace] | None] = [[] for _ in images]
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected an RGB uint8 HxWx3 array, got {img.dtype} {img.shape}")
            # No face of the minimum size fits (and MTCNN's image pyramid is empty below 12 px).
            if min(img.shape[:2]) >= max(12, self.settings.min_face_size):
                groups.setdefault(img.shape, []).append(i)
        with torch.inference_mode():
            for (h, w, _), indices in groups.items():
                try:
                    found = self._detect_batch([images[i] for i in indices], w, h)
                except Exception:  # one odd image must not fail its batch: retry one by one
                    found = []
                    for i in indices:
                        try:
                            found += self._detect_batch([images[i]], w, h)
                        except Exception as exc:
                            log.warning("MTCNN failed on a %dx%d image: %s", w, h, exc)
                            found.append(None)
                for i, faces in zip(indices, found):
                    results[i] = faces
        return results

    def _detect_batch(self, images: list[np.ndarray], width: int, height: int) -> list[list[DetectedFace]]:
        # A 4-D array makes MTCNN answer per image even for a batch of one.
        boxes, probs, points = self._mtcnn.detect(np.stack(images), landmarks=True)
        return [self._faces(boxes[j], probs[j], points[j], width, height) for j in range(len(images))]

    def _faces(self, boxes, probs, points, width: int, height: int) -> list[DetectedFace]:
        if boxes is None:
            return []
        # MTCNN returns object arrays; its boxes may reach past the image edges (clipped there).
        return reported_faces(boxes, probs, points, width, height, self.settings.min_confidence,
                              self.settings.min_face_size)
