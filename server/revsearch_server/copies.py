"""Copy detection, a shared domain service: find the original of an edited copy (cropped, rotated,
mirrored, captioned, re-compressed, recoloured, bordered) among many images.

One global vector cannot do it: a 50% crop or a 15-degree rotation moves it too far. So, for the
collections that have it (CollectionSpec.copy_detection):

* Indexing: every item stores its whole-image vector (the collection's row, as without copy
  detection), the vectors of VIEWS crops of it in the collection's views index (rows `<id>~k`,
  k = 1..4: the four quadrants, half of each side), and compact local features: up to
  STORED_FEATURES ORB keypoints of the image shrunk to FEATURE_SIDE on its long side, 36 bytes each
  (x, y as uint16 sixteenths of a pixel, the 32-byte descriptor), in the row's `local_features`.
* Searching: the query's whole-image vector searches the whole-image rows and the crop rows; the
  CANDIDATES best items (an item at its best vector) are re-ranked by geometric verification:
  QUERY_FEATURES ORB keypoints of the query matched to each candidate's stored ones (Lowe's ratio
  test), then a similarity transform (rotation, scale, shift) fitted with RANSAC; a candidate with at
  least MIN_INLIERS inliers is verified. Verified candidates come first, by inliers; the others keep
  their vector order. When none is verified, the mirror image of the query is tried as well on the
  MIRROR_CANDIDATES best (ORB is not mirror-invariant; a mirrored copy's vector stays close).

The numbers (development split of `revsearch eval --copies`, README "Copy detection") and the costs
(milliseconds per query, bytes per item) are in the README. Runs in the decode pool: OpenCV releases
the GIL. An image too small for local features (a 16x16 thumbnail) has none and keeps its global
answer; items without features (collections created before copy detection) are never verified.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .errors import RevsearchError
from .imaging import ImageLimits, decode_image, model_input
from .index.base import Hit
from .models import ModelSpec
from .observability import Metrics, or_null

# The crop views stored besides the whole image: (left, top, right, bottom) as fractions of the image.
VIEWS = ((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0))
FEATURE_SIDE = 320          # local features are found on the image shrunk (or grown) to this long side
STORED_FEATURES = 300       # ORB keypoints stored per item (36 bytes each)
QUERY_FEATURES = 400        # ORB keypoints of a query (not stored; 600 found no more on the development split
                            # and matched 1.7x slower)
CANDIDATES = 24             # items re-ranked by local features (the original of a 50% crop of a portrait or
                            # video frame was among the 30 best 99% of the time on the development split)
MIRROR_CANDIDATES = 10      # of those, tried with the mirrored query when none is verified
RATIO = 0.8                 # Lowe's ratio test
RANSAC_PX = 5.0             # inlier distance in FEATURE_SIDE pixels
MIN_INLIERS = 20            # verified from this many inliers (wrong candidates: 99th percentile 18)
_MIN_MATCHES = 5
_FORMAT = 1


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints: points float32 [n, 2] (pixels of the FEATURE_SIDE image), descriptors uint8 [n, 32]."""
    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.descriptors)

    def encode(self) -> str:
        """Compact text for a stored row: base64 of a 4-byte header, uint16 points, descriptors."""
        pts = np.clip(np.round(self.points * 16), 0, 65535).astype("<u2")
        raw = struct.pack("<BBH", _FORMAT, 0, len(self)) + pts.tobytes() + self.descriptors.astype(np.uint8).tobytes()
        return base64.b64encode(raw).decode("ascii")

    @classmethod
    def decode(cls, text: str | None) -> "LocalFeatures":
        if not text:
            return EMPTY
        raw = base64.b64decode(text)
        version, _, n = struct.unpack_from("<BBH", raw)
        if version != _FORMAT:
            return EMPTY
        pts = np.frombuffer(raw, "<u2", 2 * n, 4).reshape(n, 2).astype(np.float32) / 16
        desc = np.frombuffer(raw, np.uint8, 32 * n, 4 + 4 * n).reshape(n, 32)
        return cls(pts, desc)


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))


def feature_image(img: Image.Image) -> np.ndarray:
    """The greyscale image local features are found on: long side FEATURE_SIDE."""
    grey = img.convert("L")
    w, h = grey.size
    scale = FEATURE_SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(grey.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX))


def extract(grey: np.ndarray, max_features: int) -> LocalFeatures:
    import cv2

    if min(grey.shape[:2]) < 32:  # too small for ORB's patches: no local features, the global answer stays
        return EMPTY
    orb = cv2.ORB_create(nfeatures=max_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
    keypoints, descriptors = orb.detectAndCompute(np.ascontiguousarray(grey), None)
    if descriptors is None or not keypoints:
        return EMPTY
    return LocalFeatures(np.array([k.pt for k in keypoints], np.float32), descriptors)


def inliers(query: LocalFeatures, stored: LocalFeatures) -> int:
    """How many of the query's keypoints match the stored ones under one similarity transform."""
    import cv2

    if len(query) < _MIN_MATCHES or len(stored) < _MIN_MATCHES:
        return 0
    # The two nearest stored descriptors of each query descriptor, as arrays (5x faster here than
    # BFMatcher.knnMatch, which makes a Python object per match).
    dist, nearest = cv2.batchDistance(query.descriptors, stored.descriptors, cv2.CV_32S,
                                      normType=cv2.NORM_HAMMING, K=2)
    good = np.flatnonzero(dist[:, 0] < RATIO * dist[:, 1])
    if len(good) < _MIN_MATCHES:
        return 0
    src = query.points[good]
    dst = stored.points[nearest[good, 0]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                                  maxIters=1000, confidence=0.99)
    if transform is None or mask is None:
        return 0
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 0.05 < scale < 20:  # a degenerate fit
        return 0
    return int(mask.sum())


@dataclass
class CopyInput:
    """What an indexed image stores for copy detection: the model inputs of the whole image and of
    each view (views[0] is the whole image), and its local features (encoded)."""
    views: list[np.ndarray]
    features: str


@dataclass
class QueryFeatures:
    grey: np.ndarray
    features: LocalFeatures
    _mirrored: LocalFeatures | None = None

    def mirrored(self) -> LocalFeatures:
        if self._mirrored is None:
            self._mirrored = extract(np.ascontiguousarray(self.grey[:, ::-1]), QUERY_FEATURES)
        return self._mirrored


def rerank(query: QueryFeatures, hits: list[Hit], stored: dict[str, LocalFeatures]) -> list[Hit]:
    """hits (best first) re-ordered: verified ones first by inliers, then the others in their order.
    Every candidate is verified: stopping at the first well-matched one (tried) let a near-duplicate
    ranked above the original (the next frame of a clip) win, -0.04 to -0.07 P@1 on crops."""
    counts = [inliers(query.features, stored.get(h.id, EMPTY)) for h in hits]
    if max(counts, default=0) < MIN_INLIERS and len(query.features) >= _MIN_MATCHES:
        mirrored = query.mirrored()
        counts = [max(c, inliers(mirrored, stored.get(h.id, EMPTY))) if n < MIRROR_CANDIDATES else c
                  for n, (c, h) in enumerate(zip(counts, hits))]
    verified = sorted((n for n, c in enumerate(counts) if c >= MIN_INLIERS), key=lambda n: -counts[n])
    rest = [n for n, c in enumerate(counts) if c < MIN_INLIERS]
    return [replace(hits[n], matched_keypoints=counts[n]) for n in verified] + [hits[n] for n in rest]


def _index_input(data: bytes, limits: ImageLimits, model: ModelSpec) -> CopyInput:
    img = decode_image(data, limits)
    w, h = img.size
    views = [model_input(img, model)] + [
        model_input(img.crop((round(x0 * w), round(y0 * h), max(round(x0 * w) + 1, round(x1 * w)),
                              max(round(y0 * h) + 1, round(y1 * h)))), model) for x0, y0, x1, y1 in VIEWS]
    return CopyInput(views, extract(feature_image(img), STORED_FEATURES).encode())


def _query_input(data: bytes, limits: ImageLimits, model: ModelSpec) -> tuple[np.ndarray, QueryFeatures]:
    img = decode_image(data, limits, draft_size=max(FEATURE_SIDE, model.resize_to))
    grey = feature_image(img)
    return model_input(img, model), QueryFeatures(grey, extract(grey, QUERY_FEATURES))


class CopyDetector:
    """Decoding into views and local features, and the re-ranking, in the decode pool."""

    def __init__(self, pool: Executor, limits: ImageLimits, metrics: Metrics | None = None):
        self._pool = pool
        self._limits = limits
        self._metrics = or_null(metrics)

    async def prepare_index(self, images: list[bytes], model: ModelSpec) -> list[CopyInput | RevsearchError]:
        loop = asyncio.get_running_loop()

        async def one(data: bytes):
            try:
                return await loop.run_in_executor(self._pool, _index_input, data, self._limits, model)
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            return list(await asyncio.gather(*(one(d) for d in images)))

    async def prepare_query(self, data: bytes, model: ModelSpec) -> tuple[np.ndarray, QueryFeatures]:
        """The query's whole-image model input and its local features; errors as decoding raises them."""
        with self._metrics.stage("decode"):
            return await asyncio.get_running_loop().run_in_executor(self._pool, _query_input, data, self._limits,
                                                                    model)

    async def rerank(self, query: QueryFeatures, hits: list[Hit], stored: dict[str, str]) -> list[Hit]:
        def run():
            return rerank(query, hits, {i: LocalFeatures.decode(t) for i, t in stored.items()})

        with self._metrics.stage("rerank"):
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
