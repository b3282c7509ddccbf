"""Copy detection, a shared domain service: find the original of an edited copy (cropped, rotated,
mirrored, captioned, re-compressed, recoloured, bordered) among many images.

One global vector cannot do it: a 50% crop or a 15-degree rotation moves it too far. So, for the
collections that have it (CollectionSpec.copy_detection):

* Indexing: every item stores its whole-image vector (the collection's row) and the vectors of four
  crop views (the quadrants) in the collection's views index (rows `<id>~k`, k = 1..4), and compact
  local features in the row's `local_features`: up to STORED_FEATURES ORB keypoints of the image
  shrunk to FEATURE_SIDE on its long side, spread over a grid, each as 2 bytes of position and the
  first STORED_DESCRIPTOR_BYTES of its descriptor (LocalFeatures.encode: format 3, 7 bits a character,
  in collections created from this release; format 2, base85, in those created before).
  Collections of the compact kind (CollectionSpec.copy_vectors "regions") take all five vectors from
  one forward pass (copy_vectors.py: regional GeM, PCA-whitened to 128 dimensions); collections
  created before it (copy_vectors "") embed each crop view with its own model run, as they always did.
* Searching: the query's whole-image vector searches the whole-image rows and the crop rows; the
  best items (an item at its best vector; compact collections add the vector of the query shrunk to
  ModelSpec.copy_query_side, which meets a crop's original in its quadrant's scale) are re-ranked by
  geometric verification: the query's ORB keypoints (extract_query: at two scales) matched to each
  candidate's stored ones (Lowe's ratio test), then a
  similarity transform (rotation, scale, shift) fitted with RANSAC; a candidate with at least
  MIN_INLIERS inliers is verified. Verified candidates come first, by inliers; the others keep their
  vector order. Candidates are verified in vector order and the verification stops once the answer
  is settled (Verifier): PATIENCE unverified candidates after the last verified one.
  When none is verified, the mirror image of the query is tried on the MIRROR_CANDIDATES best (ORB
  is not mirror-invariant; a mirrored copy's vector stays close).

The numbers and costs (milliseconds per query, bytes per item) are in docs/copy-detection.md and
benchmarks/results/. Runs in the decode pool: OpenCV releases the GIL. An image too small for local
features (a 16x16 thumbnail) has none and keeps its global answer; items without features, or whose
stored features do not decode, are never verified (never an error).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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

# The crop views stored besides the whole image: (left, top, right, bottom) as fractions of the image
# (collections created before the compact kind embed these crops; the compact kind pools the
# corresponding quadrants of the feature map).
VIEWS = ((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0))
FEATURE_SIDE = 320          # local features are found on the image shrunk (or grown) to this long side
# The numbers below were chosen on the development split (copy_edits.dev_split) of
# `revsearch eval --copies`: 104 originals x 8 edits, each query against its original and 12 other
# gallery images of its source (never a frame of the same clip); docs/copy-detection.md has the table.
STORED_FEATURES = 280       # ORB keypoints stored per item, the strongest of each cell of a GRID x GRID grid in turn
STORED_DESCRIPTOR_BYTES = 10  # of ORB's 32 (its first tests are its most discriminative, rBRIEF's order): with
                            # the matching below 280 x 10 bytes verified a 50% crop 0.95 of the time, 190 x 16 0.88
GRID = 4
OVERSAMPLE = 4              # ORB is asked for OVERSAMPLE x STORED_FEATURES keypoints, of which the grid keeps the spread
QUERY_FEATURES = 300        # ORB keypoints of a query (not stored) on its FEATURE_SIDE image, and
QUERY_HALF_FEATURES = 150   # more on that image at half size: a crop, enlarged to FEATURE_SIDE, meets the
                            # stored image's scale there (50% crops verified 0.76 -> 0.88 with 190 x 16 bytes)
CANDIDATES = 48             # items that may be verified, in vector order (32 before 80-d crop views: with
                            # 20,000 distractors, mean P@1 0.949 with 32, 0.952 with 48; a query settles
                            # long before on most images, docs/copy-detection.md)
PATIENCE = 3                # verification stops this many unverified candidates after the last verified one
ZOOM_CANDIDATES = 16        # candidates the zoomed-out query vector may add
MIRROR_CANDIDATES = 8       # of those, tried with the mirrored query when none of them is verified
SURE_SCORE, SURE_GAP = 0.6, 0.2  # a first candidate this close and this far ahead of the second (vector
                            # scores of the rows) is the answer even when it does not verify (nothing more
                            # is verified then): on the development split 52% of the queries were that sure,
                            # every one of them right by the vector alone
FIRST_FETCH = 8             # candidates whose rows are fetched at a time while nothing is verified
RATIO = 0.8                 # Lowe's ratio test
RANSAC_PX = 3.0             # inlier distance in FEATURE_SIDE pixels (at 5 px wrong images reached 11 inliers)
MIN_INLIERS = 10            # verified from this many distinct stored keypoints among the inliers: of 832
                            # queries, none verified any of 12 wrong images (their most: 8); 50% crops 0.95
_MIN_MATCHES = 5
_FORMAT_V1, _FORMAT_V2, _FORMAT_V3 = 1, 2, 3
_V2_PREFIX, _V3_PREFIX = "2:", "3:"  # ':' is not in base64's alphabet: format 1 rows are plain base64
FEATURE_FORMAT = _FORMAT_V3  # what new copy-detection collections write (CollectionSpec.feature_format)
_POSITION_SCALE = 256 / FEATURE_SIDE  # positions stored as uint8: 1.25 px steps, well inside RANSAC_PX


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints: points float32 [n, 2] (pixels of the FEATURE_SIDE image), descriptors uint8
    [n, 32] (a query's) or [n, STORED_DESCRIPTOR_BYTES] (stored ones of format 2)."""
    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.descriptors)

    def encode(self, text_format: int = FEATURE_FORMAT) -> str:
        """The stored text of a 4-byte header (format, descriptor bytes, count), uint8 positions and
        the first STORED_DESCRIPTOR_BYTES of each descriptor: format 3 "3:" + 7 bits a character
        (seven_bit_encode: 3,847 characters for 280 keypoints), format 2 "2:" + base85 (4,207)."""
        width = min(STORED_DESCRIPTOR_BYTES, self.descriptors.shape[1] if len(self) else STORED_DESCRIPTOR_BYTES)
        pts = np.clip(np.round(self.points * _POSITION_SCALE), 0, 255).astype(np.uint8)
        body = pts.tobytes() + np.ascontiguousarray(self.descriptors[:, :width], dtype=np.uint8).tobytes()
        if text_format == _FORMAT_V3:
            return _V3_PREFIX + seven_bit_encode(struct.pack("<BBH", _FORMAT_V3, width, len(self)) + body)
        if text_format == _FORMAT_V2:
            return _V2_PREFIX + b85encode(struct.pack("<BBH", _FORMAT_V2, width, len(self)) + body)
        raise ValueError(f"local features are written in format 2 or 3, not {text_format}")

    def encode_v1(self) -> str:
        """Format 1 (collections created before format 2 wrote it): base64 of a 4-byte header, uint16
        sixteenths-of-a-pixel positions and 32-byte descriptors. Kept for the tests of old rows."""
        pts = np.clip(np.round(self.points * 16), 0, 65535).astype("<u2")
        raw = struct.pack("<BBH", _FORMAT_V1, 0, len(self)) + pts.tobytes() + self.descriptors.astype(np.uint8).tobytes()
        return base64.b64encode(raw).decode("ascii")

    @classmethod
    def decode(cls, text: str | None) -> "LocalFeatures":
        """Any format; EMPTY for none and for text that does not decode (a corrupt row is never
        an error for the query: that candidate stays unverified)."""
        if not text:
            return EMPTY
        try:
            if text.startswith((_V2_PREFIX, _V3_PREFIX)):
                v3 = text.startswith(_V3_PREFIX)
                raw = seven_bit_decode(text[len(_V3_PREFIX):]) if v3 else b85decode(text[len(_V2_PREFIX):])
                version, width, n = struct.unpack_from("<BBH", raw)
                if (version != (_FORMAT_V3 if v3 else _FORMAT_V2) or not 0 < width <= 32
                        or len(raw) != 4 + n * (2 + width)):
                    return EMPTY
                pts = np.frombuffer(raw, np.uint8, 2 * n, 4).reshape(n, 2).astype(np.float32) / _POSITION_SCALE
                desc = np.frombuffer(raw, np.uint8, width * n, 4 + 2 * n).reshape(n, width)
                return cls(pts, desc)
            raw = base64.b64decode(text, validate=True)
            version, _, n = struct.unpack_from("<BBH", raw)
            if version != _FORMAT_V1 or len(raw) != 4 + 36 * n:
                return EMPTY
            pts = np.frombuffer(raw, "<u2", 2 * n, 4).reshape(n, 2).astype(np.float32) / 16
            desc = np.frombuffer(raw, np.uint8, 32 * n, 4 + 4 * n).reshape(n, 32)
            return cls(pts, desc)
        except (ValueError, struct.error, binascii.Error, UnicodeEncodeError):
            return EMPTY


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))

# Format 3's text: 7 bits of the bytes in each character, 0-127 (one UTF-8 byte each; Milvus Lite 2.5.1
# and Milvus 2.3 store and return all 128, NUL included, in a VARCHAR): 8/7 characters a byte against
# base85's 5/4, 360 fewer bytes an item.
def seven_bit_encode(raw: bytes) -> str:
    """raw's bits, big-endian, 7 to a character (zero-padded to a multiple of 7)."""
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    bits = np.concatenate([bits, np.zeros(-len(bits) % 7, np.uint8)]).reshape(-1, 7)
    return np.packbits(np.pad(bits, ((0, 0), (1, 0))), axis=1).tobytes().decode("ascii")


def seven_bit_decode(text: str) -> bytes:
    """seven_bit_encode's inverse (the padding, under 8 bits, dropped); UnicodeEncodeError for a
    character above 127."""
    values = np.frombuffer(text.encode("ascii", "strict"), np.uint8)
    bits = np.unpackbits(values[:, None], axis=1)[:, 1:].ravel()
    return np.packbits(bits[:len(bits) - len(bits) % 8]).tobytes()


# Base85 (RFC 1924's alphabet, as base64.b85encode) in numpy: the standard library's is pure Python
# and took 7% of a loaded server's time decoding candidates' features (0.3 ms per blob here).
_B85 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~", np.uint8)
_B85_VALUE = np.full(256, 255, np.uint8)
_B85_VALUE[_B85] = np.arange(85, dtype=np.uint8)
_B85_POWERS = 85 ** np.arange(4, -1, -1, dtype=np.uint64)


def b85encode(raw: bytes) -> str:
    """base64.b85encode(raw).decode() (no padding), vectorised."""
    pad = -len(raw) % 4
    words = np.frombuffer(raw + b"\0" * pad, ">u4").astype(np.uint64)
    digits = (words[:, None] // _B85_POWERS) % 85
    text = _B85[digits.astype(np.intp)].tobytes()
    return text[:len(text) - pad].decode("ascii")


def b85decode(text: str) -> bytes:
    """base64.b85decode(text), vectorised; ValueError for a character outside the alphabet or a
    group that overflows 32 bits."""
    data = text.encode("ascii", "strict")
    pad = -len(data) % 5
    values = _B85_VALUE[np.frombuffer(data + b"~" * pad, np.uint8)]
    if (values == 255).any():
        raise ValueError("not base85")
    words = (values.reshape(-1, 5).astype(np.uint64) * _B85_POWERS).sum(axis=1)
    if (words > 0xFFFFFFFF).any():
        raise ValueError("base85 overflow")
    out = words.astype(">u4").tobytes()
    return out[:len(out) - pad]


def feature_image(img: Image.Image) -> np.ndarray:
    """The greyscale image local features are found on: long side FEATURE_SIDE."""
    grey = img.convert("L")
    w, h = grey.size
    scale = FEATURE_SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(grey.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX))


def _orb(grey: np.ndarray, max_features: int):
    import cv2

    orb = cv2.ORB_create(nfeatures=max_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
    return orb.detectAndCompute(np.ascontiguousarray(grey), None)


def extract(grey: np.ndarray, max_features: int) -> LocalFeatures:
    """ORB's max_features strongest keypoints of one image."""
    import cv2

    if min(grey.shape[:2]) < 32:  # too small for ORB's patches: no local features, the global answer stays
        return EMPTY
    keypoints, descriptors = _orb(grey, max_features)
    if descriptors is None or not keypoints:
        return EMPTY
    return LocalFeatures(cv2.KeyPoint_convert(keypoints).reshape(-1, 2).astype(np.float32), descriptors)


def extract_query(grey: np.ndarray) -> LocalFeatures:
    """A query's keypoints: QUERY_FEATURES of its FEATURE_SIDE image and QUERY_HALF_FEATURES of that
    image at half size (their positions doubled), in one set."""
    full = extract(grey, QUERY_FEATURES)
    h, w = grey.shape[:2]
    half = extract(np.asarray(Image.fromarray(grey).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX)),
                   QUERY_HALF_FEATURES)
    if not len(half):
        return full
    if not len(full):
        return LocalFeatures(half.points * 2, half.descriptors)
    return LocalFeatures(np.concatenate([full.points, half.points * 2]),
                         np.concatenate([full.descriptors, half.descriptors]))


def grid_round_robin(points: np.ndarray, extent: tuple[float, float, float, float], strength: np.ndarray,
                     count: int) -> np.ndarray:
    """Indices of `count` of the points [n, 2]: the strongest of each cell of a GRID x GRID grid over
    extent (x0, y0, width, height) in turn, then the second strongest of each, and so on (ties in
    the points' order)."""
    x0, y0, w, h = extent
    cells = (np.minimum(GRID - 1, ((points[:, 1] - y0) * GRID / h).astype(int)) * GRID
             + np.minimum(GRID - 1, ((points[:, 0] - x0) * GRID / w).astype(int)))
    order = np.lexsort((-strength, cells))  # by cell, strongest first within a cell
    rank_in_cell = np.empty(len(order), int)
    starts = np.searchsorted(cells[order], np.arange(GRID * GRID))
    rank_in_cell[order] = np.arange(len(order)) - starts[cells[order]]
    return np.lexsort((-strength, rank_in_cell))[:count]


def extract_stored(grey: np.ndarray, max_features: int = STORED_FEATURES) -> LocalFeatures:
    """An item's keypoints to store: of OVERSAMPLE x as many ORB corners, the strongest of each grid
    cell in turn, so that every part of the image keeps some (a crop of any quarter still finds its
    own); descriptors are computed for the chosen ones only (2.5 instead of 3.8 ms an image)."""
    import cv2

    if min(grey.shape[:2]) < 32:
        return EMPTY
    grey = np.ascontiguousarray(grey)
    orb = cv2.ORB_create(nfeatures=OVERSAMPLE * max_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
    keypoints = orb.detect(grey, None)
    if not keypoints:
        return EMPTY
    points = cv2.KeyPoint_convert(keypoints).reshape(-1, 2)
    h, w = grey.shape[:2]
    strength = np.fromiter((k.response for k in keypoints), np.float32, len(keypoints))
    chosen = np.sort(grid_round_robin(points, (0.0, 0.0, w, h), strength, max_features))
    kept, descriptors = orb.compute(grey, [keypoints[i] for i in chosen])
    if descriptors is None or not kept:
        return EMPTY
    return LocalFeatures(cv2.KeyPoint_convert(kept).reshape(-1, 2).astype(np.float32), descriptors)


def _same_width(query: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both descriptor sets cut to the stored width and zero-padded to a multiple of 16 bytes (the
    same Hamming distances; two_nearest's kernel for 16-byte codes ran 2.7x its generic one on 10)."""
    width = stored.shape[1]
    fits = query.shape[1] == width and width % 16 == 0
    return (query if fits else padded_codes(query, width)), padded_codes(stored, width)


def padded_codes(descriptors: np.ndarray, width: int) -> np.ndarray:
    """The first `width` bytes of each descriptor, zero-padded to a multiple of 16 bytes (faiss's
    fast Hamming kernels; the same distances)."""
    out = np.zeros((len(descriptors), width + (-width % 16)), np.uint8)
    out[:, :width] = descriptors[:, :width]
    return out


def two_nearest(query: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Hamming distances (int32 [n, 2]) and indices (int64 [n, 2]) of the two nearest stored
    descriptors of each query descriptor, nearest first; both uint8 [*, 16] (_same_width). faiss's
    popcount kernel for 16-byte codes: 0.18 ms for 450 x 280 against 0.89 ms for OpenCV's
    batchDistance (which BFMatcher.knnMatch runs, then makes a Python object per match), the same
    distances; matching was a quarter of a loaded server's time on copy-detection searches.
    One OpenMP thread, set in the calling thread (a per-thread setting, 0.1 µs): the decode workers
    are the parallelism, and with OpenMP's default of one thread per core its spinning threads took
    the gain (the server's CPU per search fell only from 21.5 to 19.5 ms)."""
    import faiss

    faiss.omp_set_num_threads(1)
    return faiss.knn_hamming(query, stored, 2)


def inliers(query: LocalFeatures, stored: LocalFeatures) -> int:
    """How many of the stored keypoints are matched by the query's under one similarity transform
    (distinct stored keypoints: several query keypoints on one stored one count once, which kept
    chance fits of wrong images from 17 down to 7 at the 99th percentile)."""
    import cv2

    if len(query) < _MIN_MATCHES or len(stored) < _MIN_MATCHES:
        return 0
    dist, nearest = two_nearest(*_same_width(query.descriptors, stored.descriptors))
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
    return len(np.unique(nearest[good[mask.ravel().astype(bool)], 0]))


@dataclass
class CopyInput:
    """What an indexed image stores for copy detection: its model inputs (views[0] the whole image;
    the crop views only for collections that embed each crop) and its local features (encoded)."""
    views: list[np.ndarray]
    features: str


@dataclass
class QueryFeatures:
    grey: np.ndarray
    features: LocalFeatures
    _mirrored: LocalFeatures | None = None
    # The zoomed-out model input (ModelSpec.copy_query_side square), None for models without one.
    zoomed_out: np.ndarray | None = None

    def mirrored(self) -> LocalFeatures:
        if self._mirrored is None:
            self._mirrored = extract_query(np.ascontiguousarray(self.grey[:, ::-1]))
        return self._mirrored


class Verifier:
    """One query's verification of candidates in vector order, stopping once the answer is settled.

    feed() verifies the next candidates (their stored features); `settled` says whether more can
    change the answer: PATIENCE unverified candidates after the last verified one, or every candidate
    seen, or a sure vector answer (SURE_SCORE, SURE_GAP) whose first candidate did not verify.
    Each verified copy gives the ones after it PATIENCE more: a search is also "where else does this
    picture appear", and an image's copies lie at vector ranks 2 to 24 (UKBench-style N-S fell from
    3.48 to 3.00 when verification stopped at a sure first copy). Stopping at the first verified one
    also let a near-duplicate ranked above the original (the next frame of a clip) win.
    Once a copy is verified, a later candidate the query does not verify is matched against that
    copy's stored keypoints (query expansion): a copy of the copy is a copy too, and it ranks after
    the directly verified ones. On the development split UKBench-style N-S went from 3.308 to 3.373
    with mean P@1 unchanged (0.991); re-checking the candidates before the first copy as well gave
    3.373 too, so only later ones are."""

    def __init__(self, query: QueryFeatures, candidates: list[Hit], sure: bool = False):
        """sure: the vector ranking is already sure of the first candidate (SURE_SCORE, SURE_GAP):
        when it does not verify, nothing more is (its place stands); when it does, the others as usual."""
        self.query = query
        self.candidates = list(candidates)
        self.sure = sure
        self.counts: list[int] = []
        self._best = -1
        self._last = -1  # the last verified candidate: every copy found gives the next ones PATIENCE more
        self._stored: dict[str, LocalFeatures] = {}  # every candidate's features fed so far
        self._mirrored = False
        # Candidates verified through the best verified copy, not the query (query expansion): their
        # inliers against that copy's stored keypoints.
        self.through_copy: dict[int, int] = {}

    @property
    def found(self) -> bool:
        """Whether some candidate verified."""
        return self._best >= 0

    @property
    def wanted(self) -> list[str]:
        """The ids of candidates not verified yet."""
        return [h.id for h in self.candidates[len(self.counts):]]

    @property
    def settled(self) -> bool:
        if len(self.counts) >= len(self.candidates) or len(self.query.features) < _MIN_MATCHES:
            return True
        if self.sure and self.counts and self._best < 0:
            return True  # the vector ranking's sure answer stands; its first did not verify
        if self._best < 0:
            return False
        return len(self.counts) - 1 - self._last >= PATIENCE

    def add(self, hits: list[Hit]) -> None:
        """More candidates (the zoomed-out query's): those not seen yet join the ones not verified
        yet, in vector order."""
        known = {h.id for h in self.candidates}
        fresh = [h for h in hits if h.id not in known][:ZOOM_CANDIDATES]
        done = len(self.counts)
        self.candidates = self.candidates[:done] + sorted(self.candidates[done:] + fresh, key=lambda h: -h.score)

    def feed(self, stored: dict[str, LocalFeatures]) -> None:
        """Verifies the next candidates whose features are in stored (EMPTY for none), until settled."""
        self._stored.update(stored)
        while not self.settled and self.candidates[len(self.counts)].id in self._stored:
            n = len(self.counts)
            stored = self._stored[self.candidates[n].id]
            count = inliers(self.query.features, stored)
            if count < MIN_INLIERS and self._best >= 0:
                # Query expansion: a copy of the best verified copy is a copy too (a copy of a copy is
                # two edits from the query, and 280 stored keypoints often match too few of it).
                through = inliers(self._stored[self.candidates[self._best].id], stored)
                if through >= MIN_INLIERS:
                    self.through_copy[n] = through
                    self._last = n
            self.counts.append(count)
            if count >= MIN_INLIERS:
                self._last = n
                if self._best < 0 or count > self.counts[self._best]:
                    self._best = n
            if len(self.counts) == MIRROR_CANDIDATES and self._best < 0:
                self.mirror()  # before verifying further: a mirrored copy is common, and its original near the top

    @property
    def needs_mirror(self) -> bool:
        """None of the MIRROR_CANDIDATES best verified (or all of fewer candidates seen without one):
        a mirrored copy looks like that (ORB is not mirror-invariant), so the mirrored query is tried
        on them."""
        return (not self._mirrored and len(self.query.features) >= _MIN_MATCHES
                and self._best < 0 and (self.settled or len(self.counts) >= MIRROR_CANDIDATES))

    @property
    def mirror_wanted(self) -> list[str]:
        """The ids whose features the mirrored query needs and that were not fed yet."""
        return [h.id for h in self.candidates[:1 if self.sure else MIRROR_CANDIDATES] if h.id not in self._stored]

    def mirror(self) -> None:
        """The mirrored query on the MIRROR_CANDIDATES best, when needs_mirror."""
        if not self.needs_mirror:
            return
        self._mirrored = True
        mirrored = self.query.mirrored()
        top = min(1 if self.sure else MIRROR_CANDIDATES, len(self.candidates))  # a sure answer: its first only
        self.counts += [0] * max(0, top - len(self.counts))
        for n in range(top):
            self.counts[n] = max(self.counts[n], inliers(mirrored, self._stored.get(self.candidates[n].id, EMPTY)))
            if self.counts[n] >= MIN_INLIERS:
                self._last = max(self._last, n)
                if self._best < 0 or self.counts[n] > self.counts[self._best]:
                    self._best = n

    def ranked(self) -> list[Hit]:
        """The candidates re-ordered: verified ones first by inliers, then those verified through the
        best verified copy by their inliers against it, then the rest in vector order."""
        counts = self.counts + [0] * (len(self.candidates) - len(self.counts))
        verified = sorted((n for n, c in enumerate(counts) if c >= MIN_INLIERS), key=lambda n: -counts[n])
        through = sorted((n for n, c in enumerate(counts) if c < MIN_INLIERS and n in self.through_copy),
                         key=lambda n: -self.through_copy[n])
        rest = [n for n, c in enumerate(counts) if c < MIN_INLIERS and n not in self.through_copy]
        return ([replace(self.candidates[n], matched_keypoints=counts[n]) for n in verified]
                + [replace(self.candidates[n], matched_keypoints=self.through_copy[n]) for n in through]
                + [self.candidates[n] for n in rest])


def rerank(query: QueryFeatures, hits: list[Hit], stored: dict[str, LocalFeatures]) -> list[Hit]:
    """hits (best first) re-ordered by verification (Verifier), all features at hand."""
    verifier = Verifier(query, hits)
    verifier.feed({h.id: stored.get(h.id, EMPTY) for h in hits})
    verifier.mirror()
    return verifier.ranked()


def _crop_box(w: int, h: int, view: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = view
    return (round(x0 * w), round(y0 * h), max(round(x0 * w) + 1, round(x1 * w)), max(round(y0 * h) + 1, round(y1 * h)))


def _index_input(data: bytes, limits: ImageLimits, model: ModelSpec, crop_views: bool, feature_format: int
                 ) -> CopyInput:
    img = decode_image(data, limits, draft_size=None if crop_views else max(FEATURE_SIDE, model.resize_to))
    views = [model_input(img, model)]
    if crop_views:  # collections of the first kind: each crop view is a model input of its own
        w, h = img.size
        views += [model_input(img.crop(_crop_box(w, h, v)), model) for v in VIEWS]
    return CopyInput(views, extract_stored(feature_image(img)).encode(feature_format))


def _query_input(data: bytes, limits: ImageLimits, model: ModelSpec, features: bool = True
                 ) -> tuple[np.ndarray, QueryFeatures]:
    img = decode_image(data, limits, draft_size=max(FEATURE_SIDE, model.resize_to))
    if not features:  # only the model input (EmbedImage of a compact collection)
        return model_input(img, model), QueryFeatures(np.zeros((0, 0), np.uint8), EMPTY)
    grey = feature_image(img)
    pixels = model_input(img, model)
    return pixels, QueryFeatures(grey, extract_query(grey), zoomed_out=_zoomed_out(img, pixels, model))


def _zoomed_out(img: Image.Image, pixels: np.ndarray, model: ModelSpec) -> np.ndarray | None:
    """The whole image at ModelSpec.copy_query_side square: box-reduced from the model input when that
    is a whole-image square of a multiple of the side (0.02 ms instead of 0.9 ms resizing the image)."""
    side = model.copy_query_side
    if not side:
        return None
    h, w = pixels.shape[:2]
    if model.whole_image and h == w and h % side == 0:
        return np.asarray(Image.fromarray(pixels).reduce(h // side), dtype=np.uint8)
    return np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


class CopyDetector:
    """Decoding into model inputs and local features, and the verification, in the decode pool."""

    def __init__(self, pool: Executor, limits: ImageLimits, metrics: Metrics | None = None):
        self._pool = pool
        self._limits = limits
        self._metrics = or_null(metrics)

    async def prepare_index(self, images: list[bytes], model: ModelSpec, crop_views: bool = False,
                            feature_format: int = FEATURE_FORMAT) -> list[CopyInput | RevsearchError]:
        """crop_views: also the crop views' model inputs (collections that embed each crop);
        feature_format: the collection's (CollectionSpec.feature_format)."""
        loop = asyncio.get_running_loop()

        async def one(data: bytes):
            try:
                return await loop.run_in_executor(self._pool, _index_input, data, self._limits, model, crop_views,
                                                  feature_format)
            except RevsearchError as exc:
                return exc

        with self._metrics.stage("decode"):
            return list(await asyncio.gather(*(one(d) for d in images)))

    async def prepare_query(self, data: bytes, model: ModelSpec, features: bool = True
                            ) -> tuple[np.ndarray, QueryFeatures]:
        """The query's whole-image model input and its local features (none when features is
        False); errors as decoding raises them."""
        with self._metrics.stage("decode"):
            return await asyncio.get_running_loop().run_in_executor(self._pool, _query_input, data, self._limits,
                                                                    model, features)

    async def verify(self, verifier: Verifier, stored: dict[str, str | None], last: bool) -> None:
        """Feeds the verifier the candidates' stored features (text as stored, None for none); last:
        no more will come, so the mirrored query is tried when nothing was verified."""
        def run():
            verifier.feed({i: LocalFeatures.decode(t) for i, t in stored.items()})
            if last:
                verifier.mirror()

        with self._metrics.stage("rerank"):
            await asyncio.get_running_loop().run_in_executor(self._pool, run)
