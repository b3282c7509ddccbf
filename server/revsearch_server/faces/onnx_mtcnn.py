"""MTCNN without torch: facenet-pytorch's detection algorithm in numpy, its three nets run by an
inference callable (ONNX Runtime in this process, or Triton: faces/net_runners.py).

This follows facenet-pytorch 2.5.3's `models/utils/detect_face.py` step by step, in float32 as it
computes, so the faces are the ones the torch MTCNN (faces/detector.py) finds:

1. Image pyramid: scales 12/min_face_size * 0.709^k while the short side stays >= 12 px; each
   level resized to (int(h*s+1), int(w*s+1)) with torch's `interpolate(mode="area")`, which is
   adaptive average pooling: output pixel i averages input pixels floor(i*n/m) .. ceil((i+1)*n/m)
   (whole pixels, no fractional weights). That is reproduced exactly here from an integral image
   (sums of uint8 pixels are exact in float64). OpenCV's INTER_AREA weighs partial pixels and
   upsamples bilinearly, so it differs; `resample="cv2"` selects it (the benchmark measures the
   effect: benchmarks/bench_onnx_mtcnn.py).
2. Normalised (x - 127.5) * 0.0078125, RGB, NCHW, not transposed: P-Net per level, candidate
   boxes where the face probability >= threshold[0] (stride 2, cell 12), NMS 0.5 per level, then
   0.7 across levels (the NMS facenet-pytorch calls: areas without +1, suppress above the
   threshold, highest score first, ties in order), box regression without +1, squared (rerec).
3. Boxes truncated to ints and clipped (facenet-pytorch's `pad`: no zero padding, the crop is the
   part inside the image), cropped and pooled to 24x24, R-Net, score > threshold[1], NMS 0.7,
   regression with +1 (`bbreg`), squared.
4. The same crops at 48x48, O-Net, score > threshold[2], five landmarks, regression, NMS "Min"
   0.7 (facenet-pytorch's numpy NMS, copied).

The R- and O-Net crops of every image of one `detect` call go to the backend as one batch (the
cropper detects a whole index batch in one call, so concurrent requests share them); P-Net runs
per image size and pyramid level, images of the same size together. NMS is per image, exactly as
facenet-pytorch's batched NMS is meant to be (its coordinate-offset trick rounds boxes of later
images in a batch a little; here nothing depends on the batch).

Where facenet-pytorch fails (a box entirely outside the image after regression makes an empty crop,
and its batch raises), this detector drops that box instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..errors import RevsearchError
from .detector import DetectorSettings
from .geometry import DetectedFace, reported_faces

log = logging.getLogger(__name__)

PNET, RNET, ONET = "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"
NET_NAMES = (PNET, RNET, ONET)
FACTOR = 0.709  # facenet-pytorch's pyramid factor
NMS_MATRIX_MAX = 2048  # boxes up to which _nms compares all pairs at once (a 16 MB matrix)
# run(net name, float32 NCHW batch) -> the net's outputs (P-Net: reg, prob; R-Net: reg, prob;
# O-Net: reg, landmarks, prob), blocking.
NetRun = Callable[[str, np.ndarray], list[np.ndarray]]


class OnnxMtcnnDetector:
    """The FaceDetector of faces/cropper.py: MTCNN in numpy, its nets through `run`."""

    def __init__(self, run: NetRun, settings: DetectorSettings = DetectorSettings(), resample: str = "exact",
                 pnet_max_pixels: int = 1_000_000, pnet_max_batch: int = 128, max_crops_per_call: int = 128,
                 rnet_max_crops_per_call: int = 512, max_pixels_per_part: int = 8_000_000):
        """resample: "exact" (torch's area interpolation) or "cv2" (OpenCV INTER_AREA).
        pnet_max_pixels, pnet_max_batch: P-Net input pixels and images per call (the images of a
        pyramid level are split beyond them); max_crops_per_call: O-Net crops per call;
        rnet_max_crops_per_call: R-Net's. The results do not depend on them; memory does (O-Net's
        first layer holds 270 KB per crop, R-Net's 54 KB, P-Net's 40 bytes per input pixel: at
        512 crops and 4 Mpx per call, ONNX Runtime's arena grew by 360 MB, at 128 and 1 Mpx by
        300 MB, for the same speed), and so does the number of calls, which costs most on Triton
        (an LFW index batch of 16 images has about 1,100 R-Net crops: 3 calls instead of 9). They
        fit the nets' Triton configs (max_batch_size 128 and 512). max_pixels_per_part: images of
        one call are detected in parts of this many pixels (_parts)."""
        if resample not in ("exact", "cv2"):
            raise ValueError(f"resample must be 'exact' or 'cv2', not {resample!r}")
        self.settings = settings
        self._run = run
        self._resample = resample
        self._pnet_max_pixels = pnet_max_pixels
        self._pnet_max_batch = pnet_max_batch
        self._max_crops = {RNET: rnet_max_crops_per_call, ONET: max_crops_per_call}
        self._max_pixels_per_part = max_pixels_per_part

    @property
    def nets(self) -> NetRun:
        """What runs the three nets."""
        return self._run

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace] | None]:
        """RGB uint8 HxWx3 arrays -> faces per image, most confident first (boxes clipped to the
        image, faces below settings.min_confidence or smaller than min_face_size dropped); None for
        an image the detector failed on. Blocking."""
        results: list[list[DetectedFace] | None] = [[] for _ in images]
        todo = []
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected an RGB uint8 HxWx3 array, got {img.dtype} {img.shape}")
            # No face of the minimum size fits (and the image pyramid is empty below 12 px).
            if min(img.shape[:2]) >= max(12, self.settings.min_face_size):
                todo.append(i)
        for part in self._parts(images, todo):
            for i, faces in zip(part, self._detect_part(images, part)):
                results[i] = faces
        return results

    def _parts(self, images: list[np.ndarray], todo: list[int]) -> list[list[int]]:
        """The images in parts of at most max_pixels_per_part pixels each (an image over it alone):
        every image's integral image and pyramid are held while its part is detected, 24 bytes a
        pixel, so a call joining many large photos must not hold them all at once. Faces do not
        depend on the parts (every step after P-Net's batches is per image)."""
        parts, current, pixels = [], [], 0
        for i in todo:
            n = images[i].shape[0] * images[i].shape[1]
            if current and pixels + n > self._max_pixels_per_part:
                parts.append(current)
                current, pixels = [], 0
            current.append(i)
            pixels += n
        return parts + ([current] if current else [])

    def _detect_part(self, images: list[np.ndarray], part: list[int]) -> list[list[DetectedFace] | None]:
        try:
            return self._detect([images[i] for i in part])
        except RevsearchError:  # the backend is unavailable: not the images' fault
            raise
        except Exception:  # one odd image must not fail its batch: retry one by one
            log.exception("MTCNN (ONNX) failed on a batch of %d images; retrying one by one", len(part))
            found: list[list[DetectedFace] | None] = []
            for i in part:
                try:
                    found += self._detect([images[i]])
                except RevsearchError:
                    raise
                except Exception as exc:
                    log.warning("MTCNN (ONNX) failed on a %dx%d image: %s", images[i].shape[1], images[i].shape[0],
                                exc)
                    found.append(None)
            return found

    # -- the three stages ------------------------------------------------------------------------

    def _detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        t = self.settings.thresholds
        integrals = [_integral(img) if self._resample == "exact" else None for img in images]
        sizes = [img.shape[:2] for img in images]

        # Stage 1: P-Net over the pyramid; candidates per image.
        candidates = self._stage1(images, integrals, t[0])
        boxes = []
        for cand, (h, w) in zip(candidates, sizes):
            b = np.concatenate(cand) if cand else np.zeros((0, 9), np.float32)
            b = b[_nms(b[:, :4], b[:, 4], 0.7)]
            regw, regh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            b = np.stack([b[:, 0] + b[:, 5] * regw, b[:, 1] + b[:, 6] * regh,
                          b[:, 2] + b[:, 7] * regw, b[:, 3] + b[:, 8] * regh, b[:, 4]], axis=1)
            boxes.append(_rerec(b))

        # Stage 2: R-Net on 24x24 crops of every image at once.
        boxes, (reg, prob) = self._refine(images, integrals, boxes, 24, RNET)
        stage2 = []
        for b, r, p in zip(boxes, reg, prob):
            score = p[:, 1]
            keep = score > np.float32(t[1])
            b = np.concatenate([b[keep, :4], score[keep, None]], axis=1)
            r = r[keep]
            pick = _nms(b[:, :4], b[:, 4], 0.7)
            stage2.append(_rerec(_bbreg(b[pick], r[pick])))

        # Stage 3: O-Net on 48x48 crops; landmarks.
        boxes, (reg, marks, prob) = self._refine(images, integrals, stage2, 48, ONET)
        out = []
        for b, r, m, p, (h, w) in zip(boxes, reg, marks, prob, sizes):
            score = p[:, 1]
            keep = score > np.float32(t[2])
            b = np.concatenate([b[keep, :4], score[keep, None]], axis=1)
            r, m = r[keep], m[keep]
            w_i = b[:, 2] - b[:, 0] + 1
            h_i = b[:, 3] - b[:, 1] + 1
            px = w_i[:, None] * m[:, :5] + b[:, 0, None] - 1
            py = h_i[:, None] * m[:, 5:10] + b[:, 1, None] - 1
            points = np.stack([px, py], axis=2)  # [K, 5, 2]
            b = _bbreg(b, r)
            pick = _nms_min(b[:, :4], b[:, 4], 0.7)
            out.append(self._faces(b[pick], points[pick], w, h))
        return out

    def _stage1(self, images, integrals, threshold: float) -> list[list[np.ndarray]]:
        candidates: list[list[np.ndarray]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for (h, w), members in groups.items():
            # The group's integral images stacked once (per level it cost 0.7 ms per image).
            stacked = np.stack([integrals[i] for i in members]) if self._resample == "exact" else None
            for scale in _scales(h, w, self.settings.min_face_size):
                hs, ws = int(h * scale + 1), int(w * scale + 1)
                per_call = max(1, min(self._pnet_max_batch, self._pnet_max_pixels // (hs * ws)))
                for start in range(0, len(members), per_call):
                    chunk = members[start:start + per_call]
                    if stacked is not None:  # the images of the chunk pooled together
                        data = _area_pool(stacked[start:start + per_call], 0, 0, h, w, hs, ws)
                    else:
                        data = np.stack([self._resize(images[i], None, 0, 0, h, w, hs, ws) for i in chunk])
                    reg, prob = self._run(PNET, _normalise(data))[:2]
                    for j, i in enumerate(chunk):
                        b = _generate_boxes(reg[j], prob[j, 1], scale, threshold)
                        candidates[i].append(b[_nms(b[:, :4], b[:, 4], 0.5)])
        return candidates

    def _refine(self, images, integrals, boxes: list[np.ndarray], side: int, net: str):
        """Crops of every image's boxes at side x side, through the net in batches. Returns the
        boxes whose crop is not empty, per image, and the net's outputs split per image."""
        crops, kept, counts = [], [], []
        for img, ii, b in zip(images, integrals, boxes):
            h, w = img.shape[:2]
            y, ey, x, ex = _pad(b, w, h)
            ok = (ey > y - 1) & (ex > x - 1)
            kept.append(b[ok])
            counts.append(int(ok.sum()))
            y, ey, x, ex = y[ok], ey[ok], x[ok], ex[ok]
            if ii is not None:  # every box of the image at once
                crops.append(_area_pool_boxes(ii, y - 1, x - 1, ey - y + 1, ex - x + 1, side))
            elif len(y):
                crops.append(np.stack([self._resize(img, None, yk - 1, xk - 1, eyk - yk + 1, exk - xk + 1, side, side)
                                       for yk, eyk, xk, exk in zip(y, ey, x, ex)]))
        widths = (4, 2) if net == RNET else (4, 10, 2)  # reg, prob / reg, landmarks, prob
        n_outputs = len(widths)
        if not sum(counts):
            return kept, [[np.zeros((0, k), np.float32)] * len(images) for k in widths]
        data = _normalise(np.concatenate(crops))
        step = self._max_crops[net]
        parts = [self._run(net, data[i:i + step])[:n_outputs] for i in range(0, len(data), step)]
        outputs = [np.concatenate([p[k] for p in parts]) for k in range(n_outputs)]
        bounds = np.cumsum([0, *counts])
        return kept, [[o[bounds[n]:bounds[n + 1]] for n in range(len(images))] for o in outputs]

    def _resize(self, img: np.ndarray, ii: np.ndarray | None, y0: int, x0: int, h: int, w: int,
                out_h: int, out_w: int) -> np.ndarray:
        """The region [y0:y0+h, x0:x0+w] of the image resized to out_h x out_w (float32 3xHxW)."""
        if ii is not None:
            return _area_pool(ii, int(y0), int(x0), int(h), int(w), out_h, out_w)
        import cv2

        region = np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w], dtype=np.float32)
        return cv2.resize(region, (out_w, out_h), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)

    def _faces(self, b: np.ndarray, points: np.ndarray, width: int, height: int) -> list[DetectedFace]:
        """As MTCNN.detect(select_largest=True) and faces/detector.py's MtcnnDetector report them."""
        if len(b) == 0:
            return []
        order = np.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]  # largest first, as MTCNN sorts
        return reported_faces(b[order, :4], b[order, 4], points[order], width, height,
                              self.settings.min_confidence, self.settings.min_face_size)


# -- facenet-pytorch's steps in numpy ---------------------------------------------------------------

def _scales(h: int, w: int, min_face_size: int) -> list[float]:
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales, scale = [], m
    while minl >= 12:
        scales.append(scale)
        scale = scale * FACTOR
        minl = minl * FACTOR
    return scales


def _integral(img: np.ndarray) -> np.ndarray:
    """[3, H+1, W+1] sums of the pixels above and left, channel first (the crops are pooled per
    channel, straight into the nets' NCHW). int32 where no sum can overflow it (images up to
    8.4 Mpx), float64 above: exact either way for uint8 pixels. OpenCV's integral is 20x numpy's
    two cumsums (0.10 vs 1.97 ms for a 250x250 image, 21 vs 564 ms at 3000x2000); taken per
    channel plane, written straight into its slice (0.16 ms for a 640x360 frame, against 2.8 ms
    transposing OpenCV's channel-last result)."""
    import cv2

    h, w = img.shape[:2]
    depth, dtype = (cv2.CV_32S, np.int32) if h * w * 255 < 2**31 else (cv2.CV_64F, np.float64)
    out = np.empty((3, h + 1, w + 1), dtype)
    for channel, plane in enumerate(cv2.split(img)):
        target = out[channel]
        result = cv2.integral(plane, sum=target, sdepth=depth)
        if not np.shares_memory(result, target):  # OpenCV made its own array after all
            target[...] = result
    return out


def _bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's input range [start, end) of each output index (torch's)."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _area_pool(ii: np.ndarray, y0: int, x0: int, h: int, w: int, out_h: int, out_w: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode="area") of an image region, from its integral image
    [..., 3, H+1, W+1] (one image or a stack): float32 [..., 3, out_h, out_w]. Separable: the bins'
    rows of the integral first, then their columns (0.41 ms for 250x250 -> 151x151, against
    0.56 ms gathering four corners per output pixel)."""
    ys, ye = _bins(h, out_h)
    xs, xe = _bins(w, out_w)
    # np.take copies whole rows (2.7x the fancy index on that axis); columns: the fancy index wins.
    rows = np.take(ii, ye + y0, axis=-2) - np.take(ii, ys + y0, axis=-2)
    total = rows[..., xe + x0] - rows[..., xs + x0]
    count = (ye - ys)[:, None] * (xe - xs)[None, :]
    return _divide(total, count)


def _divide(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Pixel sums / pixel counts, rounded to float32 as torch's float32 pooling rounds them. In
    float32 where the sums are exact in it (below 2**24: bins under 65,793 pixels); in float64 above
    (one rounding of a float64 quotient to float32 gives the same float32: 53 >= 2 * 24 + 2 bits)."""
    if count.size == 0 or int(count.max()) * 255 < 2**24:
        return np.divide(total, count.astype(np.float32), dtype=np.float32)
    return (total / count.astype(np.float64)).astype(np.float32)


def _area_pool_boxes(ii: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray, w: np.ndarray,
                     side: int) -> np.ndarray:
    """_area_pool of K regions (y0, x0, h, w: int arrays [K]) to side x side each: float32
    [K, 3, side, side]. Four corner gathers per output pixel and channel from the flat channel
    planes (10.7 ms for 570 crops at 24x24, against 13.8 ms gathering the three channels as rows)."""
    i = np.arange(side, dtype=np.int64)[None, :]
    y0, x0, h, w = (np.asarray(v, np.int64)[:, None] for v in (y0, x0, h, w))
    ys, ye = y0 + (i * h) // side, y0 - ((-(i + 1) * h) // side)
    xs, xe = x0 + (i * w) // side, x0 - ((-(i + 1) * w) // side)
    stride = ii.shape[2]
    y_lo, y_hi = (ys * stride)[:, :, None], (ye * stride)[:, :, None]
    x_lo, x_hi = xs[:, None, :], xe[:, None, :]
    a, b, c, d = y_hi + x_hi, y_lo + x_hi, y_hi + x_lo, y_lo + x_lo
    count = (ye - ys)[:, :, None] * (xe - xs)[:, None, :]
    out = np.empty((len(ys), 3, side, side), np.float32)
    for ch, plane in enumerate(ii.reshape(3, -1)):
        out[:, ch] = _divide((plane[a] - plane[b]) - (plane[c] - plane[d]), count)
    return out


def _normalise(batch: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] float32 pixels -> facenet-pytorch's input, (x - 127.5) * 0.0078125, in place
    (the float32 operations facenet-pytorch does, in its order)."""
    x = np.ascontiguousarray(batch, dtype=np.float32)
    np.subtract(x, np.float32(127.5), out=x)
    np.multiply(x, np.float32(0.0078125), out=x)
    return x


def _generate_boxes(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """generateBoundingBox for one image: reg [4, h, w], prob [h, w] -> [K, 9] float32
    (x1, y1, x2, y2, score, 4 regression offsets), in row-major order of the cells."""
    stride, cellsize = 2, 12
    ys, xs = np.nonzero(prob >= np.float32(threshold))
    score = prob[ys, xs]
    offsets = reg[:, ys, xs].T
    bb = np.stack([xs, ys], axis=1).astype(np.float32)
    s = np.float32(scale)
    q1 = np.floor((stride * bb + 1) / s)
    q2 = np.floor((stride * bb + cellsize - 1 + 1) / s)
    return np.concatenate([q1, q2, score[:, None], offsets], axis=1).astype(np.float32, copy=False)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The batched NMS facenet-pytorch calls, for one image: highest score first (ties in input
    order), drop boxes of IoU > threshold with a kept one (areas without +1)."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    if n > NMS_MATRIX_MAX:
        return order[_nms_greedy(x1, y1, x2, y2, areas, threshold)]
    # All pairs at once (the IoU in float32, as the loop computes it), then the greedy pass as a
    # fixed point: a box is kept when no kept box before it overlaps it. The pass is triangular,
    # so its only fixed point is the greedy result, reached from "all kept" in a few rounds (P-Net
    # levels of LFW images: 23 boxes on average, 207 at most; 1.8 -> 0.5 ms per image).
    w = np.maximum(np.float32(0), np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]))
    h = np.maximum(np.float32(0), np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]))
    inter = w * h
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    overlaps = np.triu(iou.astype(np.float64) > threshold, k=1).astype(np.float32)  # [earlier, later]
    keep = np.ones(n, np.float32)
    for _ in range(n):
        new = (keep @ overlaps == 0).astype(np.float32)
        if np.array_equal(new, keep):
            break
        keep = new
    return order[keep.astype(bool)]


def _nms_greedy(x1, y1, x2, y2, areas, threshold: float) -> np.ndarray:
    """The greedy loop over boxes sorted by score (for many boxes, where the pairwise matrix of
    _nms would take too much memory): indices into the sorted boxes."""
    n = len(x1)
    suppressed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, n)
        rest = rest[~suppressed[rest]]
        if len(rest) == 0:
            continue
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.astype(np.float64) > threshold]] = True
    return np.asarray(keep, np.int64)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's nms_numpy with method 'Min' (areas with +1), as it is."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[0:-1]
        xx1 = np.maximum(x1[i], x1[idx])
        yy1 = np.maximum(y1[i], y1[idx])
        xx2 = np.minimum(x2[i], x2[idx])
        yy2 = np.minimum(y2[i], y2[idx])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        o = inter / np.minimum(area[i], area[idx])
        order = order[np.where(o <= threshold)]
    return np.asarray(pick, np.int64)


def _rerec(b: np.ndarray) -> np.ndarray:
    """Squares the boxes around their centres (facenet-pytorch's rerec), float32."""
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
    b[:, 1] = b[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch's bbreg: offsets scaled by the box side plus one."""
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, :4] = np.stack([b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h,
                         b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h], axis=1)
    return b


def _pad(b: np.ndarray, w: int, h: int):
    """facenet-pytorch's pad: boxes truncated to ints, x and y at least 1, ends at most w and h."""
    t = np.trunc(b[:, :4]).astype(np.int32)
    x, y, ex, ey = (t[:, k].copy() for k in range(4))
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex
