"""`revsearch eval --copies DIR`: copy detection measured through a running server.

Gallery: the images of DIR (e.g. ../shared/data/photos), distractors (every `lfw_step`-th image of
an LFW-layout folder) and frames of video clips (one every `frame_step` frames). Queries: edited
copies (copy_edits.py: deterministic per image content) of the gallery images of the REPORT split
(copy_edits.dev_split by content hash; `--copy-split dev` evaluates the development half, which is
the one the parameters were tuned on): up to `per_source` images of each source (DIR, LFW, video
frames) per edit. A query's one relevant item is its original; P@1 and AP (= 1 / rank of the
original within the top 20, 0 beyond) per edit and per model. "Other views": a frame `view_gap`
frames after a gallery frame of the same clip (not indexed) queries the collection; its rank is that
of the first gallery frame of the same clip, reported apart from the edits.

With distractors (`--copy-distractors N`, copy_distractors.py): the photos and LFW images are split in
two by content hash; one half is the gallery's originals (with the frames), the other half only the
source of N distractors (crops, rescales, recolourings). The collection grows in steps, gallery size
1x, 3x, 10x (`sizes`) and finally 1x + N, and every edit is measured at each size (`by_size`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from . import copy_distractors, copy_edits
from .client import AsyncSearchClient, ImageInput, Security
from .errors import NotFoundError
from .v1 import search_service_pb2 as pb

TOP_K = 20
DEFAULT_MODELS = "efficientnet_lite0,efficientnet_lite0_int8"


@dataclass
class GalleryImage:
    key: str      # source:name, the uri stored
    source: str   # "photos", "lfw", "video"
    data: bytes
    clip: str = ""  # video frames: the clip's name

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _frames(video_dir: Path, step: int, offset: int = 0) -> list[GalleryImage]:
    import cv2

    out = []
    for clip in sorted(video_dir.glob("*.mp4")):
        cap = cv2.VideoCapture(str(clip))
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % step == offset:
                data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
                out.append(GalleryImage(f"{clip.name}#{n}", "video", data, clip.name))
            n += 1
        cap.release()
    return out


def gallery(photos: Path, lfw: Path | None, video: Path | None, lfw_step: int, frame_step: int) -> list[GalleryImage]:
    images = [GalleryImage(str(p), "photos", p.read_bytes()) for p in sorted(photos.rglob("*.jpg"))
              + sorted(photos.rglob("*.png"))]
    if lfw is not None and lfw.is_dir():
        images += [GalleryImage(str(p), "lfw", p.read_bytes())
                   for p in sorted(lfw.glob("*/*.jpg"))[::lfw_step]]
    if video is not None and video.is_dir():
        images += _frames(video, frame_step)
    return images


def queries(images: list[GalleryImage], split: str, per_source: int) -> list[GalleryImage]:
    """The originals to edit: report split ("test") or development split ("dev"), per source."""
    want_dev = split == "dev"
    out = []
    for source in ("photos", "lfw", "video"):
        chosen = [g for g in images if g.source == source and copy_edits.dev_split(g.digest) == want_dev]
        out += chosen[:per_source]
    return out


async def run_model(client: AsyncSearchClient, model: str, images: list[GalleryImage], originals: list[GalleryImage],
                    edits: list[str], views: list[tuple[GalleryImage, bytes]], concurrency: int, log,
                    reuse: bool = False, distractors: list[Path] | None = None, sizes: tuple[float, ...] = ()
                    ) -> dict:
    distractors = distractors or []
    digest = hashlib.sha1("\n".join([g.digest for g in images] + [str(len(distractors))]).encode()).hexdigest()[:8]
    name = f"eval_copies_{model}_{digest}"
    existing = None
    if reuse:
        try:
            existing = await client.describe_collection(name)
        except NotFoundError:
            pass
    if existing is not None and existing.item_count == len({g.digest for g in images}) and not distractors:
        # The same gallery, indexed before: ids are the content's (the server's default id).
        created, index_s = pb.CreateCollectionResponse(collection=existing), 0.0
        id_of = {g.key: g.digest[:32] for g in images}
        log(f"  {model}: reusing {name} ({existing.item_count} items)")
    else:
        try:
            await client.drop_collection(name)
        except NotFoundError:
            pass
        created = await client.create_collection(name, model=model, description="revsearch eval --copies")
        started = time.perf_counter()
        id_of = {}
        async for resp in client.index_images(name, (ImageInput(id="", uri=g.key, image=g.data) for g in images)):
            id_of[images[resp.item_index].key] = resp.id
        index_s = time.perf_counter() - started
        log(f"  {model}: indexed {len(images)} images in {index_s:.0f}s ({len(images) / index_s:.1f} images/s)")
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(query: bytes, want: set[str], copy: bool | None = None) -> tuple[int, list]:
        async with semaphore:
            t = time.perf_counter()
            resp = await client.search(name, image=query, top_k=TOP_K, copy_detection=copy)
            latencies.append(time.perf_counter() - t)
        ranked = [h.id for h in resp.hits]
        rank = next((n for n, i in enumerate(ranked, start=1) if i in want), 0)
        return rank, [(h.rank, h.score, h.uri, h.matched_keypoints) for h in resp.hits[:10]]

    queries_of = {edit: [(g, copy_edits.edited_bytes(g.data, edit)) for g in originals] for edit in edits}

    async def measure(label: str) -> tuple[dict, list]:
        per_edit, worst = {}, []
        for edit in edits:
            jobs = queries_of[edit]
            results = await asyncio.gather(*(one(q, {id_of[g.key]}) for g, q in jobs))
            ranks = [r for r, _ in results]
            per_source = {s: _scores([r for (g, _), r in zip(jobs, ranks) if g.source == s])
                          for s in ("photos", "lfw", "video") if any(g.source == s for g, _ in jobs)}
            per_edit[edit] = {**_scores(ranks), "by_source": per_source}
            for (g, q), (rank, hits) in zip(jobs, results):
                if rank != 1:
                    worst.append({"edit": edit, "original": g.key, "rank": rank, "query": q, "hits": hits})
            log(f"  {model} {label} {edit:16s} P@1 {per_edit[edit]['p_at_1']:.3f}  mAP {per_edit[edit]['map']:.3f}")
        return per_edit, worst

    gallery_items = len({g.digest for g in images})
    per_edit, worst = await measure("1x")
    by_size = [{"items": gallery_items, "multiple": 1.0, "distractors": 0, "edits": per_edit,
                "mean_p_at_1": statistics.mean(e["p_at_1"] for e in per_edit.values())}]
    added = 0
    steps = sorted({min(len(distractors), round(gallery_items * (m - 1))) for m in sizes if m > 1}
                   | ({len(distractors)} if distractors else set()))
    for target in steps:
        if target <= added:
            continue
        started = time.perf_counter()
        batch = distractors[added:target]
        async for _ in client.index_images(name, (ImageInput(id="", uri=f"distractor:{p.name}", image=p.read_bytes())
                                                  for p in batch)):
            pass
        log(f"  {model}: {len(batch)} distractors indexed in {time.perf_counter() - started:.0f}s")
        added = target
        multiple = (gallery_items + added) / gallery_items
        size_edits, _ = await measure(f"{multiple:.1f}x")
        by_size.append({"items": gallery_items + added, "multiple": round(multiple, 2), "distractors": added,
                        "edits": size_edits, "mean_p_at_1": statistics.mean(e["p_at_1"] for e in size_edits.values())})
    # The same queries with copy detection off: what one global vector does.
    global_only = {}
    for edit in ("crop50", "rotate"):
        jobs = [(g, copy_edits.edited_bytes(g.data, edit)) for g in originals]
        ranks = [r for r, _ in await asyncio.gather(*(one(q, {id_of[g.key]}, False) for g, q in jobs))]
        global_only[edit] = _scores(ranks)
    clips: dict[str, set[str]] = {}
    for g in images:
        if g.clip:
            clips.setdefault(g.clip, set()).add(id_of[g.key])
    view_ranks = [r for r, _ in await asyncio.gather(*(one(q, clips.get(g.clip, set())) for g, q in views))]
    lat_ms = sorted(x * 1000 for x in latencies)
    ukbench = await _ukbench(client, name, originals, id_of, semaphore)
    log(f"  {model} UKBench-style N-S {ukbench['ns']:.3f} of 4 ({ukbench['queries']} queries)")
    worst.sort(key=lambda w: (w["rank"] == 0, w["rank"]), reverse=True)
    return {"model": model, "collection": name, "model_trained": created.collection.model_trained,
            "copy_detection": created.collection.copy_detection, "gallery": len(images),
            "index_s": round(index_s, 1),
            "index_images_per_s": round(len(images) / index_s, 2) if index_s else None,
            "edits": per_edit, "mean_p_at_1": statistics.mean(e["p_at_1"] for e in per_edit.values()),
            "mean_map": statistics.mean(e["map"] for e in per_edit.values()),
            "global_only": global_only, "by_size": by_size,
            "other_views": {"pairs": len(views), "ranks": view_ranks, **_scores(view_ranks)},
            "ukbench": ukbench,
            "latency_ms": {"p50": lat_ms[len(lat_ms) // 2], "p95": lat_ms[int(len(lat_ms) * 0.95)],
                           "queries": len(lat_ms), "concurrency": concurrency},
            "worst": worst[:6]}


# UKBench-style groups of four: an original and these three edited copies of it.
UKBENCH_EDITS = ("crop70", "grey+border", "rotate+caption")


async def _ukbench(client: AsyncSearchClient, name: str, originals: list[GalleryImage], id_of: dict[str, str],
                   semaphore: asyncio.Semaphore) -> dict:
    """UKBench's N-S on groups of four (each original of the report split and UKBENCH_EDITS copies of it,
    the copies indexed for this and deleted after): every member queries, top 4; N-S is the mean
    number of its group among them (4 at best; the query itself is in the collection, as in UKBench)."""
    copies = [(g, edit, copy_edits.edited_bytes(g.data, edit)) for g in originals for edit in UKBENCH_EDITS]
    added: list[str] = []
    async for resp in client.index_images(name, [ImageInput(id="", uri=f"ukbench:{g.key}:{e}", image=q)
                                                 for g, e, q in copies]):
        added.append(resp.id)
    group = {g.key: {id_of[g.key]} for g in originals}
    for (g, _, _), item in zip(copies, added):
        group[g.key].add(item)
    queries = [(g, g.data) for g in originals] + [(g, q) for g, _, q in copies]

    async def one(g: GalleryImage, query: bytes) -> int:
        async with semaphore:
            resp = await client.search(name, image=query, top_k=4)
        return len({h.id for h in resp.hits} & group[g.key])

    found = await asyncio.gather(*(one(g, q) for g, q in queries))
    await client.delete(name, added)
    return {"ns": statistics.mean(found) if found else 0.0, "queries": len(found), "groups": len(originals),
            "edits": list(UKBENCH_EDITS)}


def _scores(ranks: list[int]) -> dict:
    if not ranks:
        return {"queries": 0, "p_at_1": 0.0, "map": 0.0}
    return {"queries": len(ranks), "p_at_1": sum(r == 1 for r in ranks) / len(ranks),
            "map": sum(1 / r for r in ranks if r) / len(ranks)}


async def evaluate(target: str, photos: Path, models: list[str], lfw: Path | None = None, video: Path | None = None,
                   lfw_step: int = 4, frame_step: int = 25, per_source: int = 40, split: str = "test",
                   edits: list[str] | None = None, concurrency: int = 2, timeout: float = 600,
                   security: Security | None = None, log=print, reuse: bool = False, distractors: int = 0,
                   sizes: tuple[float, ...] = (3, 10)) -> dict:
    """reuse: keep a collection of the same gallery indexed by an earlier run (index_images_per_s None).
    distractors: that many distractors (copy_distractors.py) from the half of the photos and LFW
    images that leaves the gallery; measured at gallery sizes 1x, `sizes` and 1x + distractors."""
    images = gallery(photos, lfw, video, lfw_step, frame_step)
    if not images:
        raise FileNotFoundError(f"no images under {photos}")
    distractor_paths: list[Path] = []
    if distractors:
        sources = [g for g in images if g.source != "video" and copy_distractors.in_distractor_half(g.digest)]
        images = [g for g in images if g.source == "video" or not copy_distractors.in_distractor_half(g.digest)]
        distractor_paths = await asyncio.to_thread(copy_distractors.make, [g.data for g in sources], distractors, log)
    originals = queries(images, split, per_source)
    frames = [g for g in images if g.source == "video"]
    later = {f.key: f for f in _frames(video, frame_step, offset=5)} if video is not None and frames else {}
    views = [(v, v.data) for v in later.values() if copy_edits.dev_split(v.digest) == (split == "dev")][:per_source]
    edits = edits or list(copy_edits.ALL_EDITS)
    counts = ", ".join(f"{s} {sum(g.source == s for g in images)}" for s in ("photos", "lfw", "video"))
    log(f"gallery {len(images)} images ({counts}); "
        f"{len(originals)} originals x {len(edits)} edits; {len(views)} other-view pairs")
    async with AsyncSearchClient(target, timeout=timeout, security=security) as client:
        info = await client.info()
        reports = [await run_model(client, m, images, originals, edits, views, concurrency, log, reuse,
                                   distractor_paths, sizes) for m in models]
    return {"gallery": str(photos), "gallery_images": len(images), "split": split, "originals": len(originals),
            "distractors": len(distractor_paths),
            "edits": edits, "server_version": info.version,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": reports}


def markdown_table(report: dict) -> str:
    models = report["models"]
    rows = ["| edit | " + " | ".join(f"{m['model']} P@1 | mAP" for m in models) + " |",
            "| --- |" + " --- | --- |" * len(models)]
    for edit in report["edits"]:
        rows.append(f"| {edit} | " + " | ".join(f"{m['edits'][edit]['p_at_1']:.3f} | {m['edits'][edit]['map']:.3f}"
                                               for m in models) + " |")
    rows.append("| **mean over edits** | " + " | ".join(f"**{m['mean_p_at_1']:.3f}** | **{m['mean_map']:.3f}**"
                                                       for m in models) + " |")
    for edit in ("crop50", "rotate"):
        rows.append(f"| {edit}, copy detection off | " + " | ".join(
            f"{m['global_only'][edit]['p_at_1']:.3f} | {m['global_only'][edit]['map']:.3f}" for m in models) + " |")
    rows.append("| other view (frame +5 of a clip) | " + " | ".join(
        f"{m['other_views']['p_at_1']:.3f} | {m['other_views']['map']:.3f}" for m in models) + " |")
    rows.append("| index images/s | " + " | ".join(
        (f"{m['index_images_per_s']:.1f} | " if m["index_images_per_s"] else "(reused) | ") for m in models) + " |")
    rows.append("| UKBench-style N-S (of 4) | " + " | ".join(f"{m['ukbench']['ns']:.3f} | " for m in models) + " |")
    rows.append("| query p50 / p95 ms | " + " | ".join(
        f"{m['latency_ms']['p50']:.0f} / {m['latency_ms']['p95']:.0f} | " for m in models) + " |")
    for m in models:
        if len(m.get("by_size", [])) > 1:
            sizes = m["by_size"]
            rows += ["", f"P@1 of {m['model']} by gallery size (items: originals + distractors):", "",
                     "| edit | " + " | ".join(f"{s['multiple']:g}x ({s['items']})" for s in sizes) + " |",
                     "| --- |" + " --- |" * len(sizes)]
            rows += [f"| {edit} | " + " | ".join(f"{s['edits'][edit]['p_at_1']:.3f}" for s in sizes) + " |"
                     for edit in report["edits"]]
            rows.append("| **mean over edits** | " + " | ".join(f"**{s['mean_p_at_1']:.3f}**" for s in sizes) + " |")
    return "\n".join(rows) + "\n"


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """report_copies.json, report_copies.md, copies.png and contact sheets of the worst queries."""
    from .contact_sheet import write

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report_copies.json", out_dir / "report_copies.md", out_dir / "copies.png"]
    written[0].write_text(json.dumps(summary_dict(report), indent=2) + "\n")
    written[1].write_text(f"# revsearch eval --copies: {report['gallery']}\n\n{report['gallery_images']} gallery "
                          f"images, {report['originals']} originals ({report['split']} split), {report['date']}\n\n"
                          + markdown_table(report))
    _chart(report, written[2])
    for m in report["models"]:
        for n, w in enumerate(m["worst"], start=1):
            path = out_dir / f"copies-{m['model']}-worst-{n}.png"
            hits = [(rank, score, uri) for rank, score, uri, _ in w["hits"]]
            write(path, w["query"], hits, f"{m['model']} {w['edit']} of {w['original']}: rank {w['rank'] or '>20'}")
            written.append(path)
    return written


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edits = report["edits"]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(1, len(report["models"]))
    for i, m in enumerate(report["models"]):
        ax.bar([e + i * width for e in range(len(edits))], [m["edits"][e]["p_at_1"] for e in edits], width,
               label=f"{m['model']} (mean {m['mean_p_at_1']:.3f})")
    ax.set_xticks([e + width * (len(report["models"]) - 1) / 2 for e in range(len(edits))], edits, rotation=45,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("P@1")
    ax.set_title(f"copy detection: {report['gallery_images']} gallery images, {report['originals']} originals per edit")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_dict(report: dict) -> dict:
    """The report without query bytes."""
    return {**report, "models": [{**m, "worst": [{k: v for k, v in w.items() if k != "query"} for w in m["worst"]]}
                                 for m in report["models"]]}
