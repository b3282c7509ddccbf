"""Frame sampling from a video file: a few RGB frames per video, decoding only what is needed.

Input is a path (uploads are spooled to a temporary file); decoding is OpenCV's FFmpeg backend.
All functions are synchronous and CPU-bound: run them in the decode pool, one call per thread.

What is accepted
    Containers: mp4/mov (ISO BMFF, also 3gp/m4v), avi, mkv/webm (Matroska), recognised by their
    magic bytes before FFmpeg sees the file. FFmpeg itself probes many more formats, including
    playlist formats (HLS, concat) that open other files or URLs; the allow-list keeps those out.
    Codecs: whatever this OpenCV build decodes (checked here: H.264, MPEG-4 Part 2, VP8, VP9, MJPEG,
    FFV1). A container whose codec has no decoder is reported as such.

Modes (`SamplingOptions.mode`)
    uniform  frame at the centre of each of N equal slots of the video: floor((k + 0.5) * n / N).
    jitter   one frame at a seeded uniform random position inside each slot (integer slots
             [floor(k n / N), floor((k + 1) n / N))); the same seed gives the same frames.
             The original project sampled frames at random; this keeps the spread of uniform.
    scene    the first frame plus the frames right after the N-1 largest scene changes; when the
             video has fewer changes than that, the remaining frames are the uniform slot centres
             farthest from the frames already chosen. Changes are found by decoding every frame
             (grab) but converting only about SCENE_ANALYSIS_FPS frames per second, shrunk to
             64x36: score = mean of (mean abs colour difference, Bhattacharyya distance of the
             hue/saturation histograms) between consecutive analysed frames, a change counts from
             SCENE_THRESHOLD, and two picked changes are at least SCENE_MIN_GAP_S apart. Cost: one
             full decode of the video (see benchmarks/results/video_decode.md), unlike uniform.

How uniform/jitter decode (seek vs grab)
    A raw-packet pass (CAP_PROP_FORMAT=-1: demux only, no decoding, about 5 us a packet) first
    counts the video packets and records which are keyframes. Each target frame is then reached
    by whichever decodes fewer frames: grab() forward from the current position (grab decodes
    but skips the colour conversion), or a seek (CAP_PROP_POS_FRAMES), which OpenCV implements
    as "jump to the keyframe at or before target-16, then decode forward". So a seek is used only
    when a keyframe lies far enough past the current position; for short clips with one keyframe
    (common: the shared test clips) that means decoding forward, for long videos with regular
    keyframes it means seeking. After a seek the position OpenCV reports is checked against the
    target; on a mismatch the frame is reached by decoding forward instead.

Limits and errors (messages name the problem and what to do; raised before decoding when the
container states the values)
    InvalidArgument   not a supported container (an image, random bytes), a container FFmpeg
                      cannot open (e.g. an mp4 cut off before its index: "truncated"), a codec
                      with no decoder, zero decodable frames, a stream that stops early (below),
                      bad options.
    ResourceExhausted duration over VideoLimits.max_duration_s, frames larger than
                      max_width x max_height (compared orientation-free: long side against the
                      larger limit, short side against the smaller, so portrait phone video of
                      an allowed size passes), more requested frames than max_frames.

Streams that stop early (truncated or corrupt files; decided here)
    The frame count the container declares defines the sampling positions. When decoding stops
    before some of them (fewer packets than declared, or grab()/read() failing), the frames that
    did decode are returned if they are at least half of the planned frames, and a warning is
    logged; the caller sees `len(frames) < options.frames`. Fewer than half is an InvalidArgument
    naming where the stream stops. Scene mode applies the same rule to the length decoded: the
    stream must reach at least half its declared length. A video with fewer frames than asked
    for gives each of its frames once (not an error).

Frame count and duration
    OpenCV's count comes from the container and can be missing or estimated (mkv/webm derive it
    from the duration). The packet pass gives the real count: it is used when the container
    states none or states fewer, and when the two differ by at most 1% (or 2 frames); a larger
    shortfall is a truncated file (above). Without a usable packet pass the count comes from
    the metadata, and failing that from decoding the stream with grab() up to the duration limit.
    A missing or absurd frame rate is taken as 25 fps (logged). Timestamps are frame_index / fps,
    so for variable-frame-rate video they are approximate.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..domain import SamplingMode
from ..errors import InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)

MODES = tuple(m.value for m in SamplingMode)
READABLE = "mp4 (m4v), mov, avi, mkv or webm"
FALLBACK_FPS = 25.0
MAX_FPS = 1000.0
SEEK_BACKOFF_FRAMES = 16  # OpenCV's seek lands on the keyframe at or before target-16 ...
SEEK_OVERHEAD_FRAMES = 4  # ... and flushing the decoder costs about this many decoded frames
SCENE_ANALYSIS_FPS = 6.0  # frames a second converted and compared in scene mode
SCENE_THRESHOLD = 0.15  # change score (0..1) from which a change counts as a scene change
SCENE_MIN_GAP_S = 0.5  # picked scene changes are at least this far apart
_TINY = (64, 36)


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float = 600.0
    max_width: int = 3840
    max_height: int = 2160  # frames larger -> ResourceExhausted (orientation-free, see module doc)
    max_frames: int = 64  # max frames a request may ask to sample


@dataclass(frozen=True)
class SamplingOptions:
    frames: int = 5
    mode: SamplingMode = SamplingMode.UNIFORM
    seed: int = 0

    def validate(self, limits: VideoLimits) -> "SamplingOptions":
        if isinstance(self.frames, bool) or not isinstance(self.frames, (int, np.integer)) or self.frames < 1:
            raise InvalidArgument(f"frames must be a whole number of at least 1, got {self.frames!r}")
        if self.frames > limits.max_frames:
            raise ResourceExhausted(
                f"asked for {self.frames} frames per video, over the limit of {limits.max_frames}; "
                f"ask for at most {limits.max_frames}")
        if self.mode not in MODES:
            raise InvalidArgument(f"unknown frame sampling mode {self.mode!r}; use one of {', '.join(MODES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**64:
            raise InvalidArgument(f"seed must be a whole number from 0 to 2**64-1, got {self.seed!r}")
        return self


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    fps: float
    width: int
    height: int
    frame_count: int
    codec: str  # fourcc text, e.g. "h264", "FMP4", "VP90", "MJPG"


@dataclass
class SampledFrame:
    timestamp_s: float
    frame_index: int
    image: np.ndarray  # RGB uint8 HxWx3


# ----------------------------------------------------------------------------------------------
# Public entry points


def probe(path: str | os.PathLike, limits: VideoLimits, *, name: str | None = None) -> VideoInfo:
    """Opens the video, checks it against the limits and decodes its first frame; no sampling.

    name is how the video is called in error messages (default: the file's base name).
    """
    opened = _open(path, limits, name)
    opened.cap.release()
    return opened.info


def sample_frames(path: str | os.PathLike, options: SamplingOptions, limits: VideoLimits, *,
                  name: str | None = None) -> tuple[VideoInfo, list[SampledFrame]]:
    """Samples options.frames frames (fewer only per the module's rules), in increasing time."""
    options = options.validate(limits)
    opened = _open(path, limits, name)
    try:
        if options.mode == SamplingMode.SCENE:
            picked = _sample_scene(opened, options.frames, limits)
        else:
            targets = uniform_targets(opened.info.frame_count, options.frames, jitter=options.mode == SamplingMode.JITTER,
                                      seed=options.seed)
            picked = _read_targets(opened, targets, limits)
    finally:
        opened.cap.release()
    fps = opened.info.fps
    frames = [SampledFrame(timestamp_s=i / fps, frame_index=i, image=_rgb(img)) for i, img in picked]
    return opened.info, frames


# ----------------------------------------------------------------------------------------------
# Planning (pure functions)


def uniform_targets(frame_count: int, n: int, jitter: bool = False, seed: int = 0) -> list[int]:
    """Frame indices to sample: slot centres, or one seeded random frame per slot (sorted, unique)."""
    if frame_count <= 0 or n <= 0:
        return []
    if jitter:
        bounds = [(k * frame_count) // n for k in range(n + 1)]
        offsets = np.random.default_rng(seed).random(n)
        idx = [bounds[k] + int(offsets[k] * max(bounds[k + 1] - bounds[k], 1)) for k in range(n)]
    else:
        idx = [int((k + 0.5) * frame_count / n) for k in range(n)]
    return sorted({min(max(i, 0), frame_count - 1) for i in idx})


def plan_reads(targets: list[int], keyframes: list[int] | None, position: int = 0) -> list[tuple[str, int]]:
    """For each target, "seek" or "grab": whichever decodes fewer frames from `position`.

    keyframes: sorted frame indices of keyframes (None when unknown: decode forward only).
    """
    plan = []
    for t in targets:
        action = "grab"
        if keyframes and t > position:
            k_i = bisect.bisect_right(keyframes, max(t - SEEK_BACKOFF_FRAMES, 0)) - 1
            if k_i >= 0 and keyframes[k_i] - position > SEEK_OVERHEAD_FRAMES:
                action = "seek"
        plan.append((action, t))
        position = t + 1
    return plan


# ----------------------------------------------------------------------------------------------
# Opening and probing


@dataclass
class _Opened:
    cap: cv2.VideoCapture
    info: VideoInfo
    name: str
    path: str
    first: np.ndarray  # frame 0, BGR
    position: int  # index of the frame the next grab() decodes
    available: int | None  # frames present in the stream (packet count), None when unknown
    declared: int  # frame count the container states (0: none)
    keyframes: list[int] | None = field(default=None)


def _open(path: str | os.PathLike, limits: VideoLimits, name: str | None) -> _Opened:
    path = os.fspath(path)
    name = name or os.path.basename(path)
    container = _sniff_container(path, name)

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise InvalidArgument(_open_failure(path, name, container))
    try:
        return _probe_opened(cap, path, name, container, limits)
    except BaseException:
        cap.release()
        raise


def _probe_opened(cap: cv2.VideoCapture, path: str, name: str, container: str, limits: VideoLimits) -> _Opened:
    codec = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width > 0 and height > 0:
        _check_resolution(width, height, limits, name)
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        log.warning("%s: frame rate %r unknown or implausible; assuming %s fps", name, fps, FALLBACK_FPS)
        fps = FALLBACK_FPS
    raw_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    declared = int(round(raw_count)) if math.isfinite(raw_count) and 0 < raw_count < 1e9 else 0
    max_frames_by_duration = int(limits.max_duration_s * fps) + 1
    if declared and declared / fps > limits.max_duration_s:
        raise _too_long(name, declared / fps, limits)

    packets, keyframes = _scan_packets(path, max_frames_by_duration)
    if packets is not None and packets >= max_frames_by_duration:
        raise _too_long(name, packets / fps, limits, at_least=True)

    ok, first = cap.read()
    if not ok or first is None or first.size == 0:
        raise InvalidArgument(
            f"{name} has zero decodable frames: the {container} container opened but no frame of its "
            f"{codec or 'video'} stream decodes; the file is corrupt or its codec is not supported by "
            f"OpenCV's FFmpeg build (re-encode it to H.264, VP9 or MJPEG)")
    height, width = first.shape[:2]
    _check_resolution(width, height, limits, name)

    if packets:
        if not declared or packets >= declared or declared - packets <= max(2, 0.01 * declared):
            count = packets
        else:
            count = declared  # fewer packets than declared: truncated, handled when sampling
    elif declared:
        count, packets, keyframes = declared, None, None
    else:
        count = _count_by_decoding(path, max_frames_by_duration)
        if count >= max_frames_by_duration:
            raise _too_long(name, count / fps, limits, at_least=True)
        packets, keyframes = count, None
    info = VideoInfo(duration_s=count / fps, fps=float(fps), width=int(width), height=int(height),
                     frame_count=int(count), codec=codec)
    return _Opened(cap=cap, info=info, name=name, path=path, first=first, position=1, available=packets,
                   declared=declared, keyframes=keyframes)


def _scan_packets(path: str, max_packets: int) -> tuple[int | None, list[int] | None]:
    """Counts the video packets and lists the keyframes without decoding (demux only)."""
    raw = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not raw.isOpened():
            return None, None
        n, keyframes = 0, []
        while n < max_packets and raw.grab():
            if raw.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
                keyframes.append(n)
            n += 1
        return n, keyframes
    finally:
        raw.release()


def _count_by_decoding(path: str, max_frames: int) -> int:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        n = 0
        while n < max_frames and cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _check_resolution(width: int, height: int, limits: VideoLimits, name: str) -> None:
    long_side, short_side = max(width, height), min(width, height)
    long_limit, short_limit = max(limits.max_width, limits.max_height), min(limits.max_width, limits.max_height)
    if long_side > long_limit or short_side > short_limit:
        raise ResourceExhausted(
            f"{name} is {width}x{height}, over the resolution limit of {limits.max_width}x{limits.max_height} "
            f"(either orientation); scale it down before uploading")


def _too_long(name: str, duration_s: float, limits: VideoLimits, at_least: bool = False) -> ResourceExhausted:
    length = "longer than" if at_least else f"{duration_s:.1f} s long, over"
    return ResourceExhausted(
        f"{name} is {length} the duration limit of {limits.max_duration_s:g} s; cut it into shorter clips")


# ----------------------------------------------------------------------------------------------
# Container recognition and open failures

_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"}


def _sniff_container(path: str, name: str) -> str:
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidArgument(f"{name} is empty (0 bytes); upload the video file itself")
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) >= 8 and head[4:8] in _BMFF_BOXES:
        if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS:
            raise InvalidArgument(f"{name} is a HEIF/AVIF image, not a video; send images to the image endpoints")
        return "mp4/mov"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv/webm"
    kind = _image_kind(head)
    if kind:
        raise InvalidArgument(f"{name} is {kind}, not a video; send images to the image endpoints, "
                              f"videos as {READABLE}")
    raise InvalidArgument(f"could not open {name} as a video: its bytes are not an {READABLE} container; "
                          "send one of those")


def _image_kind(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:2] == b"BM":
        return "a BMP image"
    return None


def _open_failure(path: str, name: str, container: str) -> str:
    if container == "mp4/mov":
        problem = _bmff_problem(path)
        if problem:
            return (f"could not open {name} as a video: the mp4/mov file is truncated or corrupt ({problem}); "
                    f"upload the complete file")
    raw = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        demuxes = raw.isOpened() and raw.grab()
    finally:
        raw.release()
    if demuxes:
        return (f"could not open {name} as a video: the {container} container was read but its video codec "
                f"is not supported by OpenCV's FFmpeg build; re-encode it to H.264, VP9 or MJPEG")
    return (f"could not open {name} as a video: the {container} file is corrupt, truncated or has no video "
            f"stream (OpenCV's FFmpeg build reads {READABLE})")


def _bmff_problem(path: str) -> str | None:
    """What is structurally wrong with an mp4/mov file's top-level boxes, if anything."""
    size = os.path.getsize(path)
    seen = []
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size and len(seen) < 256:
            f.seek(offset)
            head = f.read(16)
            box_size, box_type = int.from_bytes(head[:4], "big"), head[4:8]
            if box_size == 1 and len(head) >= 16:
                box_size = int.from_bytes(head[8:16], "big")
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return f"invalid box size {box_size} at byte {offset}"
            seen.append(box_type)
            if offset + box_size > size:
                missing = "" if b"moov" in seen else ", and the index (moov box) is missing"
                return (f"its {box_type.decode('latin-1')!r} box needs {box_size} bytes from byte {offset} "
                        f"but the file ends after {size - offset}{missing}")
            offset += box_size
    if b"moov" not in seen:
        return "it has no index (moov box)"
    return None


def _fourcc_text(value: float) -> str:
    try:
        code = int(value)
    except (TypeError, ValueError, OverflowError):
        return ""
    if code <= 0:
        return ""
    raw = (code & 0xFFFFFFFF).to_bytes(4, "little")
    text = raw.decode("latin-1").strip("\x00 ")
    return text if text.isprintable() else raw.hex()


# ----------------------------------------------------------------------------------------------
# Decoding


def _read_targets(opened: _Opened, targets: list[int], limits: VideoLimits,
                  strategy: str = "auto") -> list[tuple[int, np.ndarray]]:
    """Decodes the target frames (sorted); strategy "auto" (plan_reads), "seek" or "grab" (benchmarks)."""
    cap = opened.cap
    reachable = [t for t in targets if opened.available is None or t < opened.available]
    if strategy == "seek":
        plan = [("seek", t) for t in reachable]
    else:
        plan = plan_reads(reachable, opened.keyframes if strategy == "auto" else None, opened.position)
    out: list[tuple[int, np.ndarray]] = []
    stopped_at = opened.available if len(reachable) < len(targets) else None
    position = opened.position
    for action, t in plan:
        if t == 0:
            out.append((0, opened.first))
            continue
        if action == "seek" and t != position:
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            position = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
            if position > t:  # overshot: start again and decode forward
                log.info("%s: seek to frame %d landed on %d; decoding forward instead", opened.name, t, position)
                cap.release()
                cap = opened.cap = cv2.VideoCapture(opened.path, cv2.CAP_FFMPEG)
                position = 0
        while position < t and cap.grab():
            position += 1
        ok, img = cap.read() if position == t else (False, None)
        if not ok or img is None:
            stopped_at = position
            break
        position = t + 1
        _check_resolution(img.shape[1], img.shape[0], limits, opened.name)
        out.append((t, img))
    opened.position = position
    if stopped_at is not None:
        _stream_stopped(opened, stopped_at, len(out), len(targets))
    return out


def _stream_stopped(opened: _Opened, stopped_at: int, got: int, planned: int) -> None:
    info = opened.info
    where = (f"stops at frame {stopped_at} ({stopped_at / info.fps:.2f} s) of {info.frame_count} "
             f"({info.duration_s:.2f} s)")
    if 2 * got < planned:
        raise InvalidArgument(
            f"{opened.name}: the video stream {where}, so only {got} of {planned} frames decode; the file is "
            f"truncated or corrupt: upload the complete file")
    log.warning("%s: the video stream %s; returning %d of %d frames", opened.name, where, got, planned)


def _sample_scene(opened: _Opened, n: int, limits: VideoLimits) -> list[tuple[int, np.ndarray]]:
    info, cap = opened.info, opened.cap
    step = max(1, round(info.fps / SCENE_ANALYSIS_FPS))
    min_gap = max(step + 1, round(info.fps * SCENE_MIN_GAP_S))
    pads_wanted = set(uniform_targets(info.frame_count, n))
    pads: dict[int, np.ndarray] = {0: opened.first} if 0 in pads_wanted else {}
    end = opened.available if opened.available is not None else int(limits.max_duration_s * info.fps) + 1
    cuts: list[tuple[float, int, np.ndarray]] = []  # (score, index, BGR frame), at most n-1
    previous = _signature(opened.first)
    i = opened.position
    while i < end:
        analyse = i % step == 0
        if analyse or i in pads_wanted:
            ok, img = cap.read()
            if not ok or img is None:
                break
            if i in pads_wanted:
                _check_resolution(img.shape[1], img.shape[0], limits, opened.name)
                pads[i] = img
            if analyse:
                current = _signature(img)
                score = _change_score(previous, current)
                previous = current
                if score >= SCENE_THRESHOLD and n > 1:
                    _offer_cut(cuts, score, i, img, n - 1, min_gap)
        elif not cap.grab():
            break
        i += 1
    opened.position = i
    decoded = i
    if decoded < info.frame_count:
        if opened.available is None and opened.declared == 0:
            pass  # the length was only known by decoding: nothing is missing
        else:
            # Same rule as uniform: at least half of the declared length must decode.
            _stream_stopped(opened, decoded, got=decoded, planned=info.frame_count)

    chosen: dict[int, np.ndarray] = {0: opened.first}
    for _, idx, img in cuts:
        chosen[idx] = img
    spare = sorted(pads.items())
    while len(chosen) < n and spare:
        picked = max(spare, key=lambda p: min(abs(p[0] - c) for c in chosen))
        spare.remove(picked)
        if picked[0] not in chosen:
            chosen[picked[0]] = picked[1]
    return sorted(chosen.items())


def _offer_cut(cuts: list, score: float, idx: int, img: np.ndarray, keep: int, min_gap: int) -> None:
    """Keeps the `keep` strongest changes at least min_gap frames apart (greedy, streaming)."""
    near = [c for c in cuts if abs(c[1] - idx) < min_gap]
    if any(c[0] >= score for c in near):
        return
    for c in near:
        cuts.remove(c)
    cuts.append((score, idx, img))
    if len(cuts) > keep:
        cuts.remove(min(cuts, key=lambda c: c[0]))


def _signature(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tiny = cv2.resize(bgr, _TINY, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(tiny, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return tiny.astype(np.int16), hist


def _change_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    pixels = float(np.abs(a[0] - b[0]).mean()) / 255.0
    histogram = float(cv2.compareHist(a[1], b[1], cv2.HISTCMP_BHATTACHARYYA))
    return 0.5 * (pixels + min(max(histogram, 0.0), 1.0))


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
