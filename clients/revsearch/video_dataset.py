"""A generated video-retrieval benchmark: short clips built from the photos of LFW identities.

Every identity with at least ``2 * photos_per_clip`` photos gives one *query* clip and one (or more)
*gallery* clips, each made from DISJOINT photos of that person: a query has to find another clip of
the same person, never the same pixels. Identities with fewer photos become one *distractor*
gallery clip each. A clip shows its photos one after the other (``seconds_per_photo`` each) with a
slow, seeded "Ken Burns" motion (zoom 1.0 <-> 1.15 with a pan of a few pixels, a slight brightness
drift), placed at a seeded offset on a plain seeded background so the face is not always centred,
and a short cross-fade between photos. At the default size (320x240) every photo is shown 211-240 px
on a side, so its face stays fully visible and about 80-100 px wide (MTCNN boxes on 450 frames of 150
random clips: median 91 px, 5th percentile 77 px, no face missed with a 20 px minimum face).

Everything is deterministic for a seed: the plan (which photos go into which clip) and the pixels.
The subset for ``max_identities=N`` is the first N identity folders in sorted order, the same
identities that ``revsearch eval --max-identities N`` uses for images.

Layout written by :func:`generate`::

    out_dir/manifest.json
    out_dir/queries/<Identity>__q.mp4       the query clips (not to be indexed)
    out_dir/gallery/<Identity>__g1.mp4      gallery clips of query identities (the relevant ones)
    out_dir/gallery/<Identity>__d.mp4       distractor gallery clips

``manifest.json``::

    {"version": 1, "complete": true, "seed": 0, "source": ..., "options": {max_identities, ...},
     "render": {fps, seconds_per_photo, size, crossfade_s, codec, extension},
     "clips": [{"clip_id", "identity", "role", "file", "photos", "distractor", "frames", "duration_s",
                "fingerprint"}],
     "queries": [query clip ids], "relevant": {query clip id: [gallery clip ids of the same identity]},
     "stats": {"rendered", "reused", "render_seconds"}}

``file`` is relative to ``out_dir``; ``photos`` are relative to the LFW folder.

OpenCV (``opencv-python-headless``, part of the server extras) is needed to render; planning is not.
Command line: ``python -m revsearch.video_dataset LFW_DIR OUT_DIR [--max-identities N]``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_VERSION = 1
RENDER_VERSION = 2  # bump when the look of the clips changes: earlier renders are then not reused
MANIFEST_NAME = "manifest.json"
ROLE_DIRS = {"query": "queries", "gallery": "gallery"}
# (fourcc, extension) in order of preference; the first this OpenCV build can write AND read back wins.
CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
VIDEO_EXTENSIONS = tuple(ext for _, ext in CODECS)

ZOOM_RANGE = (1.0, 1.15)         # Ken Burns zoom over one photo (direction seeded)
PAN_PX = 8.0                     # pan of the crop centre, in photo pixels (clamped inside the photo)
BRIGHTNESS_RANGE = (0.88, 1.12)  # brightness factor at the start and at the end of a photo
DISPLAY_FRACTION = (0.88, 1.0)   # shown photo's side as a fraction of the frame's shorter side


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str             # stable and filename-safe: <Identity>__q, <Identity>__g1, <Identity>__d
    identity: str
    role: str                # "query" | "gallery"
    photos: tuple[str, ...]  # relative to the LFW folder, in display order
    seed: int                # drives the motion, placement and colours of this clip

    @property
    def distractor(self) -> bool:
        return self.clip_id.endswith("__d")


def _stable_int(*parts: object) -> int:
    """A 32-bit integer from the parts that is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _identities(lfw_dir: Path, max_identities: int | None) -> list[tuple[str, list[str]]]:
    if not lfw_dir.is_dir():
        raise FileNotFoundError(f"no LFW folder at {lfw_dir}")
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())
    if max_identities:
        people = people[:max_identities]
    out = []
    for person in people:
        photos = sorted(f.name for f in person.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if photos:
            out.append((person.name, [f"{person.name}/{name}" for name in photos]))
    return out


def plan(lfw_dir: Path | str, *, seed: int = 0, max_identities: int | None = None, photos_per_clip: int = 2,
         gallery_clips_per_identity: int = 1, distractors: bool = True) -> list[ClipPlan]:
    """The clips of the benchmark, deterministic for (folder contents, arguments).

    An identity with at least ``2 * photos_per_clip`` photos gives a query clip and up to
    ``gallery_clips_per_identity`` gallery clips (as many as its photos allow), every clip from its own
    photos. With ``distractors``, every other identity gives one gallery clip of up to
    ``photos_per_clip`` photos. An identity's photos are picked by a seeded shuffle of that identity
    alone, so a smaller ``max_identities`` plans a subset of the clips of a larger one.
    """
    if photos_per_clip < 1:
        raise ValueError("photos_per_clip must be at least 1")
    if gallery_clips_per_identity < 1:
        raise ValueError("gallery_clips_per_identity must be at least 1")
    lfw_dir = Path(lfw_dir)
    clips: list[ClipPlan] = []
    for identity, photos in _identities(lfw_dir, max_identities):
        shuffled = list(photos)
        random.Random(_stable_int(seed, "photos", identity)).shuffle(shuffled)
        groups = [shuffled[i:i + photos_per_clip] for i in range(0, len(shuffled), photos_per_clip)]
        groups = [g for g in groups if len(g) == photos_per_clip]
        base = _safe(identity)
        if len(groups) >= 2:
            named = [(f"{base}__q", "query", groups[0])]
            extra = groups[1:1 + gallery_clips_per_identity]
            named += [(f"{base}__g{k}", "gallery", g) for k, g in enumerate(extra, 1)]
        elif distractors:
            named = [(f"{base}__d", "gallery", shuffled[:photos_per_clip])]
        else:
            named = []
        clips += [ClipPlan(cid, identity, role, tuple(p), _stable_int(seed, "clip", cid)) for cid, role, p in named]
    return clips


def relevant_map(clips: list[ClipPlan]) -> dict[str, list[str]]:
    """Query clip id -> the gallery clip ids of the same identity (never the query itself)."""
    gallery: dict[str, list[str]] = {}
    for c in clips:
        if c.role == "gallery":
            gallery.setdefault(c.identity, []).append(c.clip_id)
    return {c.clip_id: gallery.get(c.identity, []) for c in clips if c.role == "query"}


# ----------------------------------------------------------------------------------------------
# rendering


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # the client package does not depend on OpenCV
        raise RuntimeError("rendering videos needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


@functools.lru_cache(maxsize=None)
def video_codec() -> tuple[str, str]:
    """(fourcc, extension) of the first codec this OpenCV build both writes and reads back."""
    cv2 = _cv2()
    with tempfile.TemporaryDirectory(prefix="revsearch-codec-") as tmp:
        for fourcc, ext in CODECS:
            path = os.path.join(tmp, "probe" + ext)
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
            if not writer.isOpened():
                continue
            for i in range(3):
                writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
            writer.release()
            cap = cv2.VideoCapture(path)
            read = 0
            while cap.read()[0]:
                read += 1
            cap.release()
            if read == 3:
                return fourcc, ext
    raise RuntimeError(f"this OpenCV build can write and read back none of {[c for c, _ in CODECS]}")


def frames_per_photo(fps: float, seconds_per_photo: float) -> int:
    return max(1, round(fps * seconds_per_photo))


def expected_frames(plan: ClipPlan, *, fps: float = 10, seconds_per_photo: float = 1.0) -> int:
    return len(plan.photos) * frames_per_photo(fps, seconds_per_photo)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A muted vertical two-colour gradient (BGR), different for every clip."""
    top, bottom = rng.uniform(25, 150, 3), rng.uniform(25, 150, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray(np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3))).round().astype(np.uint8)


def _segment_frames(photo: np.ndarray, background: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """The n frames of one photo: placed at a seeded offset, zooming and panning, brightness drifting."""
    cv2 = _cv2()
    frame_h, frame_w = background.shape[:2]
    ph, pw = photo.shape[:2]
    short = min(frame_w, frame_h)
    side = int(round(short * rng.uniform(*DISPLAY_FRACTION)))
    side = max(1, min(side, short))
    ox, oy = int(rng.integers(0, frame_w - side + 1)), int(rng.integers(0, frame_h - side + 1))
    zooms = ZOOM_RANGE if rng.random() < 0.5 else ZOOM_RANGE[::-1]
    pan0, pan1 = rng.uniform(-PAN_PX, PAN_PX, 2), rng.uniform(-PAN_PX, PAN_PX, 2)
    b0, b1 = rng.uniform(*BRIGHTNESS_RANGE, 2)
    frames = []
    for i in range(n):
        t = i / (n - 1) if n > 1 else 0.0
        t = t * t * (3 - 2 * t)  # ease in and out
        zoom = zooms[0] + (zooms[1] - zooms[0]) * t
        cw, ch = pw / zoom, ph / zoom  # crop window in photo pixels
        pan = pan0 + (pan1 - pan0) * t
        cx = np.clip(pw / 2 + pan[0], cw / 2, pw - cw / 2)
        cy = np.clip(ph / 2 + pan[1], ch / 2, ph - ch / 2)
        sx, sy = side / cw, side / ch
        m = np.array([[sx, 0, -(cx - cw / 2) * sx], [0, sy, -(cy - ch / 2) * sy]], np.float32)
        shown = cv2.warpAffine(photo, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        frame = background.copy()
        frame[oy:oy + side, ox:ox + side] = cv2.convertScaleAbs(shown, alpha=b0 + (b1 - b0) * t)
        frames.append(frame)
    return frames


def render_frames(plan: ClipPlan, lfw_dir: Path | str, *, fps: float = 10, seconds_per_photo: float = 1.0,
                  size: tuple[int, int] = (320, 240), crossfade_s: float = 0.2):
    """Yields the clip's frames (BGR uint8, ``size`` = (width, height)) without writing anything."""
    cv2 = _cv2()
    w, h = size
    rng = np.random.default_rng(plan.seed)
    background = _background(rng, w, h)
    per_photo = frames_per_photo(fps, seconds_per_photo)
    fade = min(per_photo - 1, max(0, round(crossfade_s * fps)))
    previous: list[np.ndarray] | None = None
    for rel in plan.photos:
        photo = cv2.imread(str(Path(lfw_dir) / rel), cv2.IMREAD_COLOR)
        if photo is None:
            raise FileNotFoundError(f"unreadable photo: {Path(lfw_dir) / rel}")
        segment = _segment_frames(photo, background, rng, per_photo)
        if previous is not None:
            # The last `fade` frames of the previous photo blend into this photo's first frame.
            for k in range(fade):
                a = (k + 1) / (fade + 1)
                i = per_photo - fade + k
                previous[i] = cv2.addWeighted(previous[i], 1 - a, segment[0], a, 0.0)
            yield from previous
        previous = segment
    if previous is not None:
        yield from previous


def video_info(path: Path | str) -> tuple[int, int, int, float] | None:
    """(frames, width, height, fps) from the container, or None when OpenCV cannot open it."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        return (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), float(cap.get(cv2.CAP_PROP_FPS)))
    finally:
        cap.release()


def read_video(path: Path | str) -> tuple[list[np.ndarray], float]:
    """Every frame (BGR, decode order) and the container's fps; no frames when OpenCV cannot open it."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames, fps
            frames.append(frame)
    finally:
        cap.release()


def _matches(path: Path, frames: int, size: tuple[int, int], fps: float) -> bool:
    info = path.is_file() and video_info(path)
    return bool(info) and abs(info[0] - frames) <= 1 and (info[1], info[2]) == tuple(size) and abs(info[3] - fps) < 0.01


def render(plan: ClipPlan, lfw_dir: Path | str, out_dir: Path | str, *, fps: float = 10,
           seconds_per_photo: float = 1.0, size: tuple[int, int] = (320, 240), crossfade_s: float = 0.2,
           codec: tuple[str, str] | None = None) -> Path:
    """Writes ``out_dir/<clip_id><ext>`` and returns its path, checked to read back with the right frame
    count and size. Written under a temporary name and renamed, so a killed run leaves no half file."""
    cv2 = _cv2()
    fourcc, ext = codec or video_codec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{plan.clip_id}{ext}"
    tmp = out_dir / f".{plan.clip_id}.{os.getpid()}.part{ext}"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {tmp}")
    try:
        written = 0
        for frame in render_frames(plan, lfw_dir, fps=fps, seconds_per_photo=seconds_per_photo, size=size,
                                   crossfade_s=crossfade_s):
            writer.write(frame)
            written += 1
        writer.release()
        if not _matches(tmp, written, size, fps):
            raise RuntimeError(f"{tmp} does not read back as {written} frames of {size[0]}x{size[1]}: "
                               f"{video_info(tmp)}")
        os.replace(tmp, path)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# the whole benchmark


def _render_job(args: tuple) -> str:
    plan_, lfw_dir, out_dir, kwargs = args
    render(plan_, lfw_dir, out_dir, **kwargs)
    return plan_.clip_id


def _worker_init(parent_pid: int) -> None:
    """In each pool worker: one OpenCV thread (one process per core already), and exit when the parent
    dies (a killed parent otherwise leaves spawned workers waiting on their queue forever)."""
    import threading

    _cv2().setNumThreads(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def clip_fingerprint(clip: ClipPlan, render_options: dict) -> str:
    """Changes whenever the clip's pixels would: its photos, its seed, the render options or the renderer."""
    blob = json.dumps([RENDER_VERSION, clip.seed, list(clip.photos), render_options], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def generate(lfw_dir: Path | str, out_dir: Path | str, *, seed: int = 0, max_identities: int | None = None,
             photos_per_clip: int = 2, gallery_clips_per_identity: int = 1, distractors: bool = True,
             fps: float = 10, seconds_per_photo: float = 1.0, size: tuple[int, int] = (320, 240),
             crossfade_s: float = 0.2, workers: int = 2, progress: bool = True) -> dict:
    """Plans and renders the benchmark into ``out_dir`` and writes ``out_dir/manifest.json``.

    A clip is kept from an earlier run (re-runs are fast) when the earlier manifest lists it with the
    same fingerprint (photos, seed, render options) and its file reads back with the expected frame
    count, size and fps; every other clip is rendered. While rendering, the manifest on disk says
    ``"complete": false`` and lists only the clips finished so far, so an interrupted run resumes
    where it stopped and is never taken for a whole benchmark. Video files in ``queries/`` and
    ``gallery/`` that the plan does not name (left from a run with other arguments) are removed, so
    indexing ``gallery/`` indexes exactly the planned gallery. Returns the manifest.
    """
    lfw_dir, out_dir = Path(lfw_dir), Path(out_dir)
    size = (int(size[0]), int(size[1]))
    clips = plan(lfw_dir, seed=seed, max_identities=max_identities, photos_per_clip=photos_per_clip,
                 gallery_clips_per_identity=gallery_clips_per_identity, distractors=distractors)
    if not clips:
        raise ValueError(f"no clips to make from {lfw_dir}")
    fourcc, ext = video_codec()
    options = {"fps": fps, "seconds_per_photo": seconds_per_photo, "size": list(size), "crossfade_s": crossfade_s,
               "codec": fourcc, "extension": ext}
    dirs = {role: out_dir / sub for role, sub in ROLE_DIRS.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    per_photo = frames_per_photo(fps, seconds_per_photo)
    entries = {c.clip_id: {"clip_id": c.clip_id, "identity": c.identity, "role": c.role,
                           "file": f"{ROLE_DIRS[c.role]}/{c.clip_id}{ext}", "photos": list(c.photos),
                           "distractor": c.distractor, "frames": len(c.photos) * per_photo,
                           "duration_s": round(len(c.photos) * per_photo / fps, 3),
                           "fingerprint": clip_fingerprint(c, options)} for c in clips}

    planned = {out_dir / e["file"] for e in entries.values()}
    for d in dirs.values():
        for f in d.iterdir():
            if f.is_file() and f.suffix in VIDEO_EXTENSIONS and f not in planned:
                f.unlink()

    manifest_path = out_dir / MANIFEST_NAME
    try:
        earlier = {e["clip_id"]: e.get("fingerprint") for e in json.loads(manifest_path.read_text())["clips"]}
    except (OSError, ValueError, KeyError, TypeError):
        earlier = {}
    kept = [e for e in entries.values()
            if earlier.get(e["clip_id"]) == e["fingerprint"] and _matches(out_dir / e["file"], e["frames"], size, fps)]
    kept_ids = {e["clip_id"] for e in kept}
    todo = [c for c in clips if c.clip_id not in kept_ids]

    header = {"version": MANIFEST_VERSION, "seed": seed, "source": str(lfw_dir.resolve()),
              "options": {"max_identities": max_identities, "photos_per_clip": photos_per_clip,
                          "gallery_clips_per_identity": gallery_clips_per_identity, "distractors": distractors},
              "render": options}
    # While rendering, the manifest on disk lists the kept clips and those rendered so far (every few
    # seconds), so an interrupted run resumes where it stopped.
    done = list(kept)
    last_checkpoint = 0.0

    def checkpoint(clip_id: str | None = None) -> None:
        nonlocal last_checkpoint
        if clip_id is not None:
            done.append(entries[clip_id])
        if time.monotonic() - last_checkpoint >= 5.0:
            _write_json(manifest_path, {**header, "complete": False, "clips": done})
            last_checkpoint = time.monotonic()

    if todo:
        checkpoint()
    started = time.perf_counter()
    render_kwargs = dict(fps=fps, seconds_per_photo=seconds_per_photo, size=size, crossfade_s=crossfade_s,
                         codec=(fourcc, ext))
    _run_jobs([(c, str(lfw_dir), str(dirs[c.role]), render_kwargs) for c in todo], workers, progress, len(clips),
              checkpoint)
    elapsed = time.perf_counter() - started

    manifest = {**header, "complete": True,
                "clips": list(entries.values()),
                "queries": [c.clip_id for c in clips if c.role == "query"],
                "relevant": relevant_map(clips),
                "stats": {"rendered": len(todo), "reused": len(kept), "render_seconds": round(elapsed, 2)}}
    _write_json(manifest_path, manifest)
    return manifest


def _run_jobs(jobs: list[tuple], workers: int, progress: bool, total: int, on_done) -> None:
    """Renders the jobs, in-process or in a pool of ``workers`` processes; ``on_done(clip_id)`` after each."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("rendering clips"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("render", total=total, completed=total - len(jobs))
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                on_done(_render_job(job))
                bar.update(task, advance=1)
            return
        import multiprocessing

        # spawn: safe in callers that run threads (gRPC clients, asyncio); costs one import per worker.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_render_job, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    on_done(future.result())
                    bar.update(task, advance=1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def load_manifest(out_dir: Path | str) -> dict:
    """The manifest of a generated benchmark, with every clip's ``path`` (absolute) added."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"unsupported video benchmark manifest version {manifest.get('version')}")
    if not manifest.get("complete"):
        raise ValueError(f"the video benchmark in {out_dir} is incomplete (an interrupted run): generate it again")
    for clip in manifest["clips"]:
        clip["path"] = str((out_dir / clip["file"]).resolve())
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m revsearch.video_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("lfw_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-identities", type=int, default=None)
    p.add_argument("--photos-per-clip", type=int, default=2)
    p.add_argument("--gallery-clips-per-identity", type=int, default=1)
    p.add_argument("--no-distractors", action="store_true")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    m = generate(args.lfw_dir, args.out_dir, seed=args.seed, max_identities=args.max_identities,
                 photos_per_clip=args.photos_per_clip, gallery_clips_per_identity=args.gallery_clips_per_identity,
                 distractors=not args.no_distractors, workers=args.workers, progress=not args.quiet)
    gallery = sum(c["role"] == "gallery" for c in m["clips"])
    print(f"{len(m['clips'])} clips ({len(m['queries'])} queries, {gallery} gallery) in {args.out_dir}; "
          f"rendered {m['stats']['rendered']} in {m['stats']['render_seconds']} s, reused {m['stats']['reused']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
