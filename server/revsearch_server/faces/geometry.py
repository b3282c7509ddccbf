"""Faces as the detector reports them, and the choice among several: no model, no torch.

Shared by the cropper and any detector implementation (faces/cropper.py's FaceDetector).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels of the given image
    confidence: float
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose, mouth left, mouth right (x, y)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def reported_faces(boxes: np.ndarray, probs: np.ndarray, points: np.ndarray, width: int, height: int,
                   min_confidence: float, min_side: float) -> list[DetectedFace]:
    """MTCNN's final boxes [K, 4], probabilities [K] and landmarks [K, 5, 2] as the detectors report
    them: boxes clipped to the image, faces below min_confidence or with a side under min_side
    dropped, most confident first (ties in the given order)."""
    boxes = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0, [width, height, width, height])
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2)
    faces = []
    for box, prob, pts in zip(boxes, probs, points):
        if prob < min_confidence or min(box[2] - box[0], box[3] - box[1]) < min_side:
            continue
        faces.append(DetectedFace(tuple(float(v) for v in box), float(prob), pts.copy()))
    return sorted(faces, key=lambda f: -f.confidence)


def scaled(face: DetectedFace, factor: float) -> DetectedFace:
    """The face in the pixels of an image `factor` times the size of the one it was found in."""
    if factor == 1.0:
        return face
    return DetectedFace(tuple(v * factor for v in face.box), face.confidence, face.landmarks * factor)


def largest_face(faces: list[DetectedFace]) -> DetectedFace | None:
    """The most prominent face: largest box area (ties: higher confidence); None if no faces."""
    return max(faces, key=lambda f: (f.area, f.confidence), default=None)


def _prominence(f: DetectedFace, width: int, height: int) -> float:
    x0, y0, x1, y1 = f.box
    return f.area - 2.0 * (((x0 + x1) / 2 - width / 2) ** 2 + ((y0 + y1) / 2 - height / 2) ** 2)


def prominent_face(faces: list[DetectedFace], width: int, height: int) -> DetectedFace | None:
    """The face a photo is about: large and near the centre (area - 2 * distance-to-centre^2, in pixels).

    Plain largest-area picks a cut-off neighbour at the edge in some portraits; measured on LFW
    (3,685 queries) this choice lifts P@1 from 0.950 to 0.976 for the face model.
    """
    return max(faces, key=lambda f: (_prominence(f, width, height), f.confidence), default=None)


def faces_by_prominence(faces: list[DetectedFace], width: int, height: int) -> list[DetectedFace]:
    """Every face, the most prominent first (the order prominent_face picks by)."""
    return sorted(faces, key=lambda f: (_prominence(f, width, height), f.confidence), reverse=True)
