"""`revsearch eval --videos`: video retrieval quality, measured through a running server.

Two benchmarks, each indexed once into its own video collection (the server's defaults for video:
the face model over every face of 5 uniformly sampled frames) and then queried once per ranking:

* ``shared-clips``: the clips in ``../shared/data/video``. Each of the five talking heads is cut into
  two halves; the gallery holds the second halves, the stage clip and the crowd clip; the first halves
  are queries whose one relevant video is their own second half, and the still photo is a query whose
  one relevant video is the stage clip it appears in.
* ``crowd-faces``: the gallery of ``shared-clips``; the queries are the faces (at least 40 px) in
  frames of the stage and the crowd clip taken midway between the frames indexing samples, each cut
  out as a photo whose relevant video is its clip. Most of them are not the most prominent face of
  their frame, so the video's mean vector (built from each frame's most prominent face) barely holds
  them: this is the case the ``frames`` ranking exists for. The faces are found by the server itself
  (a scratch collection indexes a clip of those frames and answers their face boxes).
* ``lfw-clips``: short clips generated from LFW identities (:mod:`revsearch.video_dataset`): per
  identity with four or more photos a query clip and a gallery clip made of disjoint photos, and a
  distractor gallery clip per other identity. Rendered into a cache folder outside the repository
  (re-runs reuse the rendered clips).

Every query runs with each ranking (``mean_vector``: cosine of the mean vectors; ``frames``: per query
frame the best-matching stored face of a video, averaged) for the top 20 videos, and P@1, mAP@10 (AP
over the top 10 divided by min(10, relevant)) and Hit@5 are averaged over the queries, with the margin
(best relevant video's score minus best other video's: how safely the first place was won). A query
the server cannot answer (no face in it) counts as a miss and is reported. The gallery is indexed one
video at a time (the fastest on 2 CPUs); queries run ``concurrency`` at a time, the rankings taking
turns over chunks of queries so that both see the same machine load. The generated clips and cut
halves live in a cache folder (default: ``revsearch-video-eval`` in the system temp folder), never in
the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .client import SearchClient, Security
from .errors import InvalidArgumentError, NotFoundError, RevsearchClientError
from .metrics import average_precision_at_k, hit_at_k, precision_at_1
from .names import INFERENCE_BACKENDS, ITEM_STATUSES, name_of
from .video_dataset import read_video

BENCHMARKS = ("shared-clips", "crowd-faces", "lfw-clips")
RANKINGS = ("mean_vector", "frames")  # names.RANKINGS in the order they are run and reported
TOP_K = 20
MAP_K = 10
HIT_K = 5
DEFAULT_IDENTITIES = 400
DEFAULT_CONCURRENCY = 4        # concurrent queries
DEFAULT_INDEX_CONCURRENCY = 1  # concurrent uploads while indexing (measured: 1 is fastest on 2 CPUs)
QUERY_CHUNK_PER_WORKER = 4  # the rankings take turns every 4 x concurrency queries
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TALKING = tuple(f"video-retalking_face_{n}.mp4" for n in range(1, 6))
STAGE = "face_recognition_short_hamilton_clip.mp4"
CROWD = "facenet-pytorch_examples_video.mp4"
PHOTO = "face_recognition_alex-lacamoire.png"
CROWD_FACE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)  # of the duration: midway between the 5 uniformly sampled frames
CROWD_FACE_MIN_PX = 40  # faces smaller than this (short side, in the clip's pixels) make no query
CROWD_FACE_MARGIN = 0.4  # of the face box's size, added on every side of a query crop

_RELEVANT = "+"  # the label of a relevant hit, for the label-based functions in metrics.py


@dataclass
class Query:
    id: str
    path: Path
    relevant: list[str]
    kind: str = "clip"  # "clip" | "image"


@dataclass
class Benchmark:
    name: str
    description: str
    gallery: list[tuple[str, Path]]  # (id, file)
    queries: list[Query]
    source: str
    details: dict = field(default_factory=dict)


def default_data_dir(name: str) -> Path | None:
    """``../shared/data/<name>`` next to the repository, when it exists."""
    path = SHARED_DATA / name
    return path if path.is_dir() else None


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "revsearch-video-eval"


# ----------------------------------------------------------------------------------------------
# the benchmarks


def _write_mp4v(path: Path, frames: list, fps: float) -> None:
    """BGR frames of one size as an MPEG-4 Part 2 file (this OpenCV build has no H.264 encoder)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v to {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


def cut_in_halves(clip: Path, out_dir: Path) -> tuple[Path, Path]:
    """The first and the second half of a clip as two mp4 files (kept from an earlier run when they
    are newer than the clip); written under temporary names and renamed."""
    first, second = out_dir / f"{clip.stem}_a.mp4", out_dir / f"{clip.stem}_b.mp4"
    if all(p.is_file() and p.stat().st_mtime >= clip.stat().st_mtime for p in (first, second)):
        return first, second
    frames, fps = read_video(clip)
    if len(frames) < 2:
        raise ValueError(f"cannot cut {clip} in halves: {len(frames)} frame(s) read")
    mid = len(frames) // 2
    for path, part in ((first, frames[:mid]), (second, frames[mid:])):
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.part.mp4")
        _write_mp4v(tmp, part, fps)
        os.replace(tmp, path)
    return first, second


def shared_clips(video_dir: Path, cache_dir: Path) -> Benchmark:
    """Half-clip and photo-to-clip queries over the shared clips (halves cut into ``cache_dir``)."""
    video_dir = Path(video_dir)
    missing = [n for n in (*TALKING, STAGE, CROWD, PHOTO) if not (video_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"shared video clips missing in {video_dir}: {', '.join(missing)}")
    out = Path(cache_dir) / "shared-clips"
    out.mkdir(parents=True, exist_ok=True)
    gallery: list[tuple[str, Path]] = []
    queries: list[Query] = []
    for name in TALKING:
        first, second = cut_in_halves(video_dir / name, out)
        stem = Path(name).stem
        gallery.append((f"{stem}_b", second))
        queries.append(Query(f"{stem}_a", first, [f"{stem}_b"]))
    gallery += [("stage", video_dir / STAGE), ("crowd", video_dir / CROWD)]
    queries.append(Query("photo", video_dir / PHOTO, ["stage"], kind="image"))
    return Benchmark("shared-clips", "first half of a talking head -> its second half; still photo -> the stage "
                     "clip it appears in; stage and crowd clips as distractors", gallery, queries, str(video_dir),
                     {"clips_dir": str(out)})


def _frames_at(clip: Path, fractions: tuple[float, ...]) -> tuple[list[int], list, float]:
    """(frame indices, BGR frames, fps) at the given fractions of a clip's frame count, read in one pass."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    total, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    wanted = sorted({min(total - 1, int(round(f * total))) for f in fractions})
    frames, index = {}, 0
    while index <= wanted[-1]:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            frames[index] = frame
        index += 1
    cap.release()
    kept = [i for i in wanted if i in frames]
    return kept, [frames[i] for i in kept], fps


def crowd_faces(client: SearchClient, video_dir: Path, cache_dir: Path) -> Benchmark:
    """Faces in unsampled frames of the stage and crowd clips as photo queries over the shared-clips gallery.

    The frames are written as a small clip (one frame per second) that a scratch video collection indexes
    with one sampled frame per second; its answer lists every face box of every frame (the server's own
    detector), and each face of at least CROWD_FACE_MIN_PX is cut out with a margin into ``cache_dir``."""
    import cv2

    base = shared_clips(video_dir, cache_dir)
    out = Path(cache_dir) / "crowd-faces"
    out.mkdir(parents=True, exist_ok=True)
    scratch = f"eval_video_probe_{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]}"
    queries: list[Query] = []
    try:
        client.drop_collection(scratch)
    except NotFoundError:
        pass
    client.create_collection(scratch, media_type="video", description="revsearch eval --videos: face boxes")
    try:
        for video_id, name in (("stage", STAGE), ("crowd", CROWD)):
            indices, frames, _ = _frames_at(Path(video_dir) / name, CROWD_FACE_FRACTIONS)
            h, w = frames[0].shape[:2]
            probe = out / f"{Path(name).stem}_probe.mp4"
            _write_mp4v(probe, frames, 1.0)
            resp = client.index_video(scratch, probe, id=video_id, frames=len(frames))
            for sampled in resp.frames:
                n = min(len(frames) - 1, int(sampled.timestamp_s))  # 1 fps: frame n spans [n, n + 1) s
                for k, box in enumerate(sampled.face_boxes):
                    bw, bh = box.x_max - box.x_min, box.y_max - box.y_min
                    if min(bw, bh) < CROWD_FACE_MIN_PX:
                        continue
                    mx, my = CROWD_FACE_MARGIN * bw, CROWD_FACE_MARGIN * bh
                    x0, y0 = int(max(0, box.x_min - mx)), int(max(0, box.y_min - my))
                    x1, y1 = int(min(w, box.x_max + mx)), int(min(h, box.y_max + my))
                    path = out / f"{video_id}_f{indices[n]}_{k}.png"
                    cv2.imwrite(str(path), frames[n][y0:y1, x0:x1])
                    queries.append(Query(f"{video_id}@{indices[n]}#{k}", path, [video_id], kind="image"))
    finally:
        try:
            client.drop_collection(scratch)
        except RevsearchClientError:
            pass
    return Benchmark("crowd-faces", f"every face of {CROWD_FACE_MIN_PX} px or more in frames of the stage and crowd "
                     "clips between the sampled ones, as a photo -> its clip (gallery as shared-clips)", base.gallery,
                     queries, base.source, {"clips_dir": str(out), "gallery_as": "shared-clips"})


def lfw_clips(lfw_dir: Path, cache_dir: Path, identities: int | None = DEFAULT_IDENTITIES, *, seed: int = 0,
              workers: int | None = None, progress: bool = False) -> Benchmark:
    """The generated LFW clip benchmark for the first ``identities`` identities, rendered (or reused) in
    ``cache_dir/lfw-clips-<source>-n<identities>-s<seed>``."""
    from .video_dataset import generate

    lfw_dir = Path(lfw_dir)
    if not lfw_dir.is_dir():
        raise FileNotFoundError(f"no LFW folder at {lfw_dir} (give it as DIR)")
    digest = hashlib.sha1(str(lfw_dir.resolve()).encode()).hexdigest()[:8]
    out = Path(cache_dir) / f"lfw-clips-{digest}-n{identities or 'all'}-s{seed}"
    manifest = generate(lfw_dir, out, seed=seed, max_identities=identities, workers=workers or os.cpu_count() or 1,
                        progress=progress)
    clips = {c["clip_id"]: c for c in manifest["clips"]}
    gallery = [(c["clip_id"], out / c["file"]) for c in manifest["clips"] if c["role"] == "gallery"]
    queries = [Query(q, out / clips[q]["file"], list(manifest["relevant"][q])) for q in manifest["queries"]]
    return Benchmark("lfw-clips", f"LFW identities as clips ({identities or 'all'} identities, seed {seed}): a query "
                     "clip of a person -> the gallery clip of other photos of that person", gallery, queries,
                     str(lfw_dir), {"clips_dir": str(out), "identities": len({c["identity"] for c in clips.values()}),
                                    "distractors": sum(c["distractor"] for c in clips.values()),
                                    "render": manifest["render"], "render_stats": manifest["stats"]})


# ----------------------------------------------------------------------------------------------
# running one benchmark


def collection_name(bench: Benchmark) -> str:
    """Named after the benchmark whose gallery it holds (crowd-faces shares the shared-clips gallery)."""
    owner = bench.details.get("gallery_as", bench.name)
    blob = json.dumps([owner, bench.source, [g for g, _ in bench.gallery]])
    return f"eval_video_{owner.replace('-', '_')}_{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def _status(code: int) -> str:
    return name_of(ITEM_STATUSES, code, "unspecified")


def _score(hits: list[tuple[str, float]], relevant: list[str]) -> dict:
    """The query's metrics from its ranked (video id, score) hits, plus its margin: the best relevant
    video's score minus the best other video's (> 0 when a relevant video ranks first; None when no
    relevant video is in the hits). P@1 saturates on easy benchmarks; the margin says by how much."""
    labels = [_RELEVANT if h in relevant else "" for h, _ in hits]
    first = next((n for n, lab in enumerate(labels, 1) if lab), None)
    best_relevant = max((s for h, s in hits if h in relevant), default=None)
    best_other = max((s for h, s in hits if h not in relevant), default=None)
    margin = None if best_relevant is None or best_other is None else best_relevant - best_other
    return {"p_at_1": precision_at_1(labels, _RELEVANT),
            f"ap_at_{MAP_K}": average_precision_at_k(labels, _RELEVANT, len(relevant), MAP_K),
            f"hit_at_{HIT_K}": hit_at_k(labels, _RELEVANT, HIT_K), "first_relevant_rank": first, "margin": margin}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_benchmark(client: SearchClient, bench: Benchmark, rankings: tuple[str, ...] = RANKINGS,
                  concurrency: int = DEFAULT_CONCURRENCY, index_concurrency: int = DEFAULT_INDEX_CONCURRENCY,
                  log: Callable[[str], None] = lambda _: None, indexed_galleries: dict | None = None) -> dict:
    """Indexes the gallery into a fresh video collection, then runs every query with every ranking.

    ``indexed_galleries`` (collection name -> its indexing summary) lets benchmarks of one run that share
    a gallery index it once."""
    name = collection_name(bench)
    base = {"benchmark": bench.name, "description": bench.description, "source": bench.source,
            "collection": name, **bench.details}
    indexed_galleries = {} if indexed_galleries is None else indexed_galleries
    if name in indexed_galleries:
        summary = indexed_galleries[name]
        log(f"{bench.name}: gallery already indexed in {name}")
    else:
        summary = _index_gallery(client, bench, name, index_concurrency, log)
        indexed_galleries[name] = summary
    if "skipped" in summary:
        return {**base, "skipped": summary["skipped"]}
    stored = summary["stored"]

    results = _run_queries(client, bench, name, rankings, concurrency, log)
    return {**base, **{k: v for k, v in summary.items() if k != "stored"},
            "gallery_videos": len(bench.gallery), "queries": len(bench.queries),
            "queries_without_relevant_indexed": sum(not set(q.relevant) & stored for q in bench.queries),
            "warmup_queries": min(len(bench.queries), max(1, concurrency)), "rankings": results}


def _index_gallery(client: SearchClient, bench: Benchmark, name: str, index_concurrency: int,
                   log: Callable[[str], None]) -> dict:
    try:
        client.drop_collection(name)
    except NotFoundError:
        pass
    try:
        created = client.create_collection(name, media_type="video",
                                           description=f"revsearch eval --videos: {bench.name}")
    except InvalidArgumentError as exc:
        return {"skipped": exc.details}
    coll = created.collection

    def index(item: tuple[str, Path]):
        vid, path = item
        t0 = time.perf_counter()
        try:
            resp = client.index_video(name, path, id=vid, metadata={"benchmark": bench.name})
        except RevsearchClientError as exc:
            return vid, "failed", f"{exc.code.name}: {exc.details}", 0, time.perf_counter() - t0
        return vid, _status(resp.status), "", resp.vector_count, time.perf_counter() - t0

    log(f"{bench.name}: indexing {len(bench.gallery)} gallery videos into {name}")
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, index_concurrency)) as pool:
        indexed = list(pool.map(index, bench.gallery))
    index_seconds = time.perf_counter() - started
    statuses = Counter(status for _, status, _, _, _ in indexed)
    failures = [f"{vid}: {why}" for vid, status, why, _, _ in indexed if status == "failed"]
    return {"model": coll.model, "model_trained": coll.model_trained,
            "index": {"indexed": statuses["indexed"], "duplicate": statuses["duplicate"],
                      "no_face": statuses["no_face"], "failed": statuses["failed"],
                      "vectors": sum(v for _, _, _, v, _ in indexed), "seconds": round(index_seconds, 3),
                      "videos_per_s": len(bench.gallery) / index_seconds if index_seconds else 0.0,
                      "latency_p50_s": round(_percentile([s for *_, s in indexed], 0.5), 4)},
            "no_face_gallery": [vid for vid, status, _, _, _ in indexed if status == "no_face"],
            "failures": failures[:20],
            "stored": {vid for vid, status, _, _, _ in indexed if status in ("indexed", "duplicate")}}


def _run_queries(client: SearchClient, bench: Benchmark, name: str, rankings: tuple[str, ...], concurrency: int,
                 log: Callable[[str], None]) -> dict[str, dict]:
    def query(q: Query, ranking: str) -> dict:
        t0 = time.perf_counter()
        try:
            if q.kind == "image":
                resp = client.search_videos(name, image=q.path.read_bytes(), top_k=TOP_K, ranking=ranking)
            else:
                resp = client.search_videos(name, clip=q.path, top_k=TOP_K, ranking=ranking)
        except RevsearchClientError as exc:
            no_face = isinstance(exc, InvalidArgumentError) and "no face" in exc.details.lower()
            return {"query": q.id, "relevant": q.relevant, "error": f"{exc.code.name}: {exc.details}",
                    "no_face": no_face, "seconds": time.perf_counter() - t0, **_score([], q.relevant)}
        hits = [(h.id, float(h.score)) for h in resp.hits]
        return {"query": q.id, "relevant": q.relevant, "seconds": time.perf_counter() - t0,
                "backend": name_of(INFERENCE_BACKENDS, resp.inference_backend),
                "top": [(h, round(s, 4)) for h, s in hits[:3]], **_score(hits, q.relevant)}

    # A few untimed queries first, so the first ranking does not pay for the server's warm-up alone.
    warmup = bench.queries[:max(1, concurrency)]
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(lambda q: query(q, rankings[0]), warmup))

    # The rankings take turns over chunks of queries (which goes first alternates), so a change in the
    # machine's load during the run weighs on both alike; each ranking's time is the sum of its turns.
    chunk = QUERY_CHUNK_PER_WORKER * max(1, concurrency)
    log(f"{bench.name}: {len(bench.queries)} queries x {len(rankings)} rankings, taking turns every {chunk} queries")
    answers: dict[str, list[dict]] = {r: [] for r in rankings}
    wall: dict[str, float] = {r: 0.0 for r in rankings}
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for turn, start in enumerate(range(0, len(bench.queries), chunk)):
            part = bench.queries[start:start + chunk]
            for ranking in (rankings if turn % 2 == 0 else rankings[::-1]):
                started = time.perf_counter()
                answers[ranking] += pool.map(lambda q, r=ranking: query(q, r), part)
                wall[ranking] += time.perf_counter() - started

    results: dict[str, dict] = {}
    for ranking in rankings:
        per_query, seconds = answers[ranking], wall[ranking]
        n = len(per_query) or 1
        latencies = [r["seconds"] for r in per_query]
        margins = [r["margin"] for r in per_query if r["margin"] is not None]
        results[ranking] = {
            "queries": len(per_query),
            "p_at_1": sum(r["p_at_1"] for r in per_query) / n,
            f"map_at_{MAP_K}": sum(r[f"ap_at_{MAP_K}"] for r in per_query) / n,
            f"hit_at_{HIT_K}": sum(r[f"hit_at_{HIT_K}"] for r in per_query) / n,
            "margin_mean": sum(margins) / len(margins) if margins else None,
            "margin_min": min(margins) if margins else None,
            "no_face_queries": sum(bool(r.get("no_face")) for r in per_query),
            "failed_queries": sum("error" in r and not r.get("no_face") for r in per_query),
            "seconds": round(seconds, 3), "queries_per_s": len(per_query) / seconds if seconds else 0.0,
            "latency_p50_s": round(_percentile(latencies, 0.5), 4),
            "latency_p95_s": round(_percentile(latencies, 0.95), 4),
            # which inference backend embedded the queries (a Triton failure falls back to ONNX Runtime)
            "inference_backends": dict(Counter(r["backend"] for r in per_query if "backend" in r)),
            "misses": [r["query"] for r in per_query if not r["p_at_1"]],
            "per_query": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in per_query],
        }
    return results


def evaluate(target: str, benchmarks: list[str], *, lfw_dir: Path | None = None, video_dir: Path | None = None,
             identities: int | None = DEFAULT_IDENTITIES, cache_dir: Path | None = None,
             rankings: tuple[str, ...] = RANKINGS, concurrency: int = DEFAULT_CONCURRENCY,
             index_concurrency: int = DEFAULT_INDEX_CONCURRENCY, timeout: float = 120,
             progress: bool = False, log: Callable[[str], None] = lambda _: None,
             security: Security | None = None) -> dict:
    """Prepares and runs the named benchmarks through the server at ``target``; returns the report.
    ``security``: TLS and API key (None: plaintext)."""
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown video benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    load_before = [round(x, 2) for x in os.getloadavg()]
    videos = video_dir or default_data_dir("video")
    if videos is None and {"shared-clips", "crowd-faces"} & set(benchmarks):
        raise FileNotFoundError("no shared video folder (../shared/data/video): give --video-dir")
    lfw = lfw_dir or default_data_dir("lfw")
    if lfw is None and "lfw-clips" in benchmarks:
        raise FileNotFoundError("no LFW folder (../shared/data/lfw): give DIR")
    with SearchClient(target, timeout=timeout, security=security) as client:
        info = client.info()
        galleries: dict[str, dict] = {}
        reports = []
        for name in benchmarks:
            started = time.perf_counter()
            if name == "shared-clips":
                bench = shared_clips(videos, cache_dir)
            elif name == "crowd-faces":
                log("crowd-faces: finding the faces in frames of the stage and crowd clips")
                bench = crowd_faces(client, videos, cache_dir)
            else:
                log(f"lfw-clips: rendering (or reusing) clips of {identities or 'all'} identities in {cache_dir}")
                bench = lfw_clips(lfw, cache_dir, identities, progress=progress)
            bench.details["prepare_seconds"] = round(time.perf_counter() - started, 2)
            reports.append(run_benchmark(client, bench, rankings, concurrency, index_concurrency, log, galleries))
        info_after = client.info()
    return {"kind": "video", "server_version": info.version, "server": target,
            "inference_backend": {"before": name_of(INFERENCE_BACKENDS, info.inference_backend),
                                  "after": name_of(INFERENCE_BACKENDS, info_after.inference_backend)},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cache_dir": str(cache_dir),
            "top_k": TOP_K, "map_k": MAP_K, "hit_k": HIT_K, "concurrency": concurrency,
            "index_concurrency": index_concurrency, "cpus": os.cpu_count(),
            # 1-minute load averages of this machine before and after: timings are only comparable on a quiet one
            "load_average": {"before": load_before[0], "after": round(os.getloadavg()[0], 2)},
            "rankings": list(rankings), "benchmarks": reports}


# ----------------------------------------------------------------------------------------------
# the report


def markdown_table(report: dict) -> str:
    rows = [f"| benchmark | ranking | P@1 | mAP@{MAP_K} | Hit@{HIT_K} | queries | gallery videos | index videos/s "
            "| queries/s | margin mean (min) | no face (gallery / queries) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in report["benchmarks"]:
        if "skipped" in b:
            rows.append(f"| {b['benchmark']} | skipped: {b['skipped']} | | | | | | | | | |")
            continue
        for ranking, r in b["rankings"].items():
            label = ranking + ("" if b["model_trained"] else " (UNTRAINED)")
            rows.append(f"| {b['benchmark']} | {label} | {r['p_at_1']:.3f} | {r[f'map_at_{MAP_K}']:.3f} | "
                        f"{r[f'hit_at_{HIT_K}']:.3f} | {r['queries']} | {b['gallery_videos']} | "
                        f"{b['index']['videos_per_s']:.2f} | {r['queries_per_s']:.2f} | {_margin(r)} | "
                        f"{b['index']['no_face']} / {r['no_face_queries']} |")
    return "\n".join(rows) + "\n"


def _margin(r: dict) -> str:
    if r.get("margin_mean") is None:
        return "-"
    return f"{r['margin_mean']:+.4f} ({r['margin_min']:+.4f})"


def _markdown(report: dict) -> str:
    backends = sorted({name for b in report["benchmarks"] for r in b.get("rankings", {}).values()
                       for name in r.get("inference_backends", {})})
    lines = [f"# revsearch eval --videos ({report['date']})", "",
             f"Server {report['server_version']}, inference {report['inference_backend']['before']} before and "
             f"{report['inference_backend']['after']} after the run (queries embedded by: {', '.join(backends)}), "
             f"top {report['top_k']} videos per query, {report['concurrency']} concurrent queries, "
             f"{report['index_concurrency']} concurrent upload(s) while indexing, "
             f"{report['cpus']} CPUs (load average {report['load_average']['before']} before, "
             f"{report['load_average']['after']} after). mAP@{MAP_K}: AP over the top {MAP_K} divided by "
             f"min({MAP_K}, relevant). Margin: the best relevant video's score minus the best other video's, per "
             "query (> 0: a relevant video ranked first), averaged (and the smallest). A query without a face "
             "counts as a miss. The rankings take turns over chunks of queries, so both see the same machine "
             "load; queries/s is per ranking, over the time of its own turns.", "", markdown_table(report)]
    for b in report["benchmarks"]:
        if "skipped" in b:
            continue
        idx = b["index"]
        shared = f" (indexed once, for {b['gallery_as']})" if b.get("gallery_as") else ""
        lines += [f"**{b['benchmark']}**: {b['description']}. Gallery {b['gallery_videos']} videos indexed in "
                  f"{idx['seconds']:.1f} s{shared} ({idx['indexed']} indexed, {idx['no_face']} without a face, "
                  f"{idx['failed']} failed; {idx['vectors']} vectors), {b['queries']} queries, model {b['model']}."]
        for ranking, r in b["rankings"].items():
            misses = ", ".join(r["misses"][:10]) + (" ..." if len(r["misses"]) > 10 else "")
            lines.append(f"- {ranking}: {r['seconds']:.1f} s for the queries (p50 {r['latency_p50_s']:.3f} s, "
                         f"p95 {r['latency_p95_s']:.3f} s per query); misses at rank 1: {misses or 'none'}")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """report_videos.json, report_videos.md and the videos.png chart."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report_videos.json", out_dir / "report_videos.md", out_dir / "videos.png"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    written[1].write_text(_markdown(report))
    _chart(report, written[2])
    return written


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [b for b in report["benchmarks"] if "skipped" not in b]
    metrics = [("p_at_1", "P@1"), (f"map_at_{MAP_K}", f"mAP@{MAP_K}"), (f"hit_at_{HIT_K}", f"Hit@{HIT_K}")]
    fig, axes = plt.subplots(1, max(1, len(done)), figsize=(5 * max(1, len(done)), 4.2), squeeze=False)
    for ax, b in zip(axes[0], done):
        rankings = list(b["rankings"])
        width = 0.8 / max(1, len(rankings))
        for i, ranking in enumerate(rankings):
            values = [b["rankings"][ranking][k] for k, _ in metrics]
            bars = ax.bar([m + i * width for m in range(len(metrics))], values, width, label=ranking)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([m + width * (len(rankings) - 1) / 2 for m in range(len(metrics))], [t for _, t in metrics])
        ax.set_ylim(0, 1.25)
        trained = "" if b["model_trained"] else ", UNTRAINED"
        ax.set_title(f"{b['benchmark']}: {b['queries']} queries, {b['gallery_videos']} videos{trained}", fontsize=9)
        ax.legend(loc="upper center", ncol=len(rankings), fontsize=8)
    fig.suptitle("video retrieval by ranking")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_dict(report: dict) -> dict:
    """The report without the per-query lists, for --json."""
    def slim(b: dict) -> dict:
        if "rankings" not in b:
            return b
        return {**b, "rankings": {k: {kk: vv for kk, vv in r.items() if kk != "per_query"}
                                  for k, r in b["rankings"].items()}}

    return {**report, "benchmarks": [slim(b) for b in report["benchmarks"]]}
