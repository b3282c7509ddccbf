"""MTCNN face detection on real photos and video frames: counts, boxes, confidences, batching."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from revsearch_server.faces.detector import DetectorSettings, MtcnnDetector
from revsearch_server.faces.geometry import DetectedFace, largest_face
from tests.helpers import (CROWD_CLIP, CROWD_FRAME, HAMILTON_CLIP, HAMILTON_FRAME, lfw_images, synthetic_image,
                           video_frame)


def load_rgb(path: Path, size: tuple[int, int] | None = None, crop: tuple[int, int, int, int] | None = None):
    img = Image.open(path).convert("RGB")
    if crop:
        img = img.crop(crop)
    if size:
        img = img.resize(size, Image.BILINEAR)
    return np.asarray(img)


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector()


@pytest.fixture(scope="module")
def lfw_batch(detector):
    images = [load_rgb(p) for p in lfw_images(40, per_person_max=1)]
    return images, detector.detect(images)


def test_mtcnn_finds_one_prominent_confident_face_near_the_centre_of_lfw_images(lfw_batch):
    images, detections = lfw_batch
    assert len(detections) == len(images) == 40

    def centred_and_confident(face: DetectedFace | None) -> bool:
        if face is None:
            return False
        x0, y0, x1, y1 = face.box
        return np.hypot((x0 + x1) / 2 - 125, (y0 + y1) / 2 - 125) <= 40 and face.confidence >= 0.9

    found = [largest_face(faces) for faces in detections]
    # A couple may miss: some LFW photos show a bigger, cut-off neighbour at the edge.
    assert sum(map(centred_and_confident, found)) >= 38
    for face in filter(None, found):
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        # Eyes above the nose, nose above the mouth: landmarks come in the documented order.
        eyes_y, nose_y, mouth_y = face.landmarks[:2, 1].mean(), face.landmarks[2, 1], face.landmarks[3:, 1].mean()
        assert eyes_y < nose_y < mouth_y


def test_batched_detection_gives_the_same_faces_as_one_by_one_detection(detector, lfw_batch):
    images, batched = lfw_batch[0][:8], lfw_batch[1][:8]
    single = [detector.detect([img])[0] for img in images]
    assert [len(f) for f in batched] == [len(f) for f in single]
    for batch_faces, single_faces in zip(batched, single):
        for a, b in zip(batch_faces, single_faces):
            assert np.allclose(a.box, b.box, atol=1.0)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-3)


def test_images_of_different_sizes_come_back_in_input_order(detector):
    path = lfw_images(1, per_person_max=1)[0]
    images = [load_rgb(path), load_rgb(path, size=(200, 200)), load_rgb(path)]
    faces = detector.detect(images)
    assert [len(f) for f in faces] == [1, 1, 1]
    width = [f[0].box[2] - f[0].box[0] for f in faces]
    assert width[1] == pytest.approx(0.8 * width[0], rel=0.15)  # the 200 px copy, not a 250 px one
    assert np.allclose(faces[0][0].box, faces[2][0].box, atol=1.0)


def test_a_hamilton_clip_frame_with_several_people_has_at_least_two_faces(detector):
    frame = video_frame(HAMILTON_CLIP, HAMILTON_FRAME)
    assert frame.shape == (360, 640, 3)
    faces = detector.detect([frame])[0]
    assert len(faces) >= 2
    assert [f.confidence for f in faces] == sorted((f.confidence for f in faces), reverse=True)


def test_a_1080p_crowd_frame_gives_several_faces_all_inside_the_frame(detector):
    frame = video_frame(CROWD_CLIP, CROWD_FRAME)
    h, w = frame.shape[:2]
    assert (w, h) == (1920, 1080)
    faces = detector.detect([frame])[0]
    assert len(faces) >= 5
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert face.confidence >= 0.9


def test_an_image_without_a_face_gives_no_faces(detector):
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 / 319, yy * 255 / 239, np.full_like(xx, 128.0)], -1).astype(np.uint8)
    textured = np.asarray(synthetic_image(3))
    assert detector.detect([gradient, textured]) == [[], []]
    assert largest_face([]) is None


def test_min_face_size_is_honoured_for_small_faces():
    # Face regions of LFW images shrunk to 48x48: the faces are about 30x40 px.
    crops = [load_rgb(p, size=(48, 48), crop=(50, 50, 200, 200)) for p in lfw_images(4, per_person_max=1)]
    assert all(len(f) == 1 for f in MtcnnDetector(DetectorSettings(min_face_size=20)).detect(crops))
    assert MtcnnDetector(DetectorSettings(min_face_size=40)).detect(crops) == [[], [], [], []]


def test_largest_face_prefers_area_then_confidence():
    marks = np.zeros((5, 2), np.float32)
    small = DetectedFace((0, 0, 10, 10), 0.99, marks)
    big = DetectedFace((0, 0, 30, 30), 0.91, marks)
    big_sure = DetectedFace((50, 50, 80, 80), 0.98, marks)
    assert big.area == 900
    assert largest_face([small, big]) is big
    assert largest_face([big, big_sure, small]) is big_sure


def test_images_too_small_for_any_face_have_none_and_do_not_break_their_batch(detector, lfw_batch):
    images, _ = lfw_batch
    tiny = [np.zeros((8, 8, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.zeros((3000, 12, 3), np.uint8)]
    faces = detector.detect([images[0], *tiny])
    assert len(faces[0]) >= 1 and faces[1:] == [[], [], []]


def test_an_image_mtcnn_fails_on_is_reported_alone_and_the_rest_of_its_batch_is_detected(detector, lfw_batch,
                                                                                          monkeypatch):
    images, _ = lfw_batch
    poisoned = images[2].copy()
    poisoned[0, 0] = [1, 2, 3]  # a marker the stand-in failure looks for
    real_detect = detector._mtcnn.detect

    def failing(batch, landmarks):
        if any(np.array_equal(img[0, 0], [1, 2, 3]) for img in batch):
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        return real_detect(batch, landmarks=landmarks)

    monkeypatch.setattr(detector._mtcnn, "detect", failing)
    faces = detector.detect([images[0], poisoned, images[1]])
    assert faces[1] is None and len(faces[0]) >= 1 and len(faces[2]) >= 1
