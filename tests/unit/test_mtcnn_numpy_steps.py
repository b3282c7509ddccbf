"""The numpy steps of the ONNX MTCNN (faces/onnx_mtcnn.py) that were made faster give what their
plain forms give: the all-pairs NMS keeps the boxes the greedy loop keeps, the separable area
pooling averages each bin as torch's adaptive pooling does, for one image, a stack and many boxes."""

from __future__ import annotations

import numpy as np
import pytest

from revsearch_server.faces import onnx_mtcnn as mtcnn


def _random_boxes(rng, n: int, rounded_scores: bool):
    xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, 60, (n, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if rounded_scores:  # many ties: the order among equal scores must be the input order
        scores = np.round(scores, 1)
    return np.concatenate([xy, xy + wh], axis=1), scores


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_the_all_pairs_nms_keeps_exactly_the_boxes_the_greedy_loop_keeps(monkeypatch, threshold):
    rng = np.random.default_rng(7)
    for trial in range(60):
        boxes, scores = _random_boxes(rng, int(rng.integers(1, 400)), rounded_scores=trial % 2 == 0)
        fast = mtcnn._nms(boxes, scores, threshold)
        monkeypatch.setattr(mtcnn, "NMS_MATRIX_MAX", 0)
        greedy = mtcnn._nms(boxes, scores, threshold)
        monkeypatch.undo()
        assert np.array_equal(fast, greedy), trial


def test_nms_of_no_boxes_keeps_none_and_of_one_box_keeps_it():
    assert mtcnn._nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    assert mtcnn._nms(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), 0.5).tolist() == [0]


def _torch_area(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Adaptive average pooling written out: each output pixel the mean of its whole-pixel bin."""
    h, w = img.shape[:2]
    out = np.zeros((3, out_h, out_w), np.float32)
    for i in range(out_h):
        y0, y1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            x0, x1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, i, j] = img[y0:y1, x0:x1].reshape(-1, 3).astype(np.float64).mean(axis=0)
    return out


def test_area_pooling_of_an_image_and_of_a_stack_gives_each_bins_mean():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(3)]
    for out_h, out_w in [(20, 29), (37, 53), (12, 12), (7, 40)]:
        expected = np.stack([_torch_area(img, out_h, out_w) for img in images])
        one = mtcnn._area_pool(mtcnn._integral(images[0]), 0, 0, 37, 53, out_h, out_w)
        stack = mtcnn._area_pool(np.stack([mtcnn._integral(i) for i in images]), 0, 0, 37, 53, out_h, out_w)
        assert one.shape == (3, out_h, out_w) and stack.shape == (3, 3, out_h, out_w)
        assert np.array_equal(one, expected[0]) and np.array_equal(stack, expected)


def test_area_pooling_of_many_boxes_gives_what_pooling_each_box_alone_gives():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    ii = mtcnn._integral(img)
    y0, x0 = rng.integers(0, 40, 25), rng.integers(0, 60, 25)
    size = rng.integers(3, 50, 25)
    pooled = mtcnn._area_pool_boxes(ii, y0, x0, size, size, 24)
    assert pooled.shape == (25, 3, 24, 24)
    for k in range(25):
        region = img[y0[k]:y0[k] + size[k], x0[k]:x0[k] + size[k]]
        assert np.array_equal(pooled[k], _torch_area(region, 24, 24)), k


def test_the_integral_image_is_exact_in_int32_and_switches_to_float64_where_int32_could_overflow():
    small = np.full((100, 100, 3), 255, np.uint8)
    ii = mtcnn._integral(small)
    assert ii.dtype == np.int32 and ii.shape == (3, 101, 101) and int(ii[0, -1, -1]) == 255 * 100 * 100
    big = np.full((3000, 2900, 3), 255, np.uint8)  # 8.7 Mpx: sums up to 2.2e9 > 2**31
    ii = mtcnn._integral(big)
    assert ii.dtype == np.float64 and ii[2, -1, -1] == 255 * 3000 * 2900
