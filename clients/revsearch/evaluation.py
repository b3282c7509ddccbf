"""`revsearch eval`: retrieval quality of whole pipelines, measured through a running server.

DIR is in LFW layout (Person/Person_NNNN.jpg; same folder = same identity). Each pipeline gets its
own collection; every image of an identity with at least two images queries the collection by
its stored item id (the same vector an image query would compute), the query itself is removed
from its results, and P@1, mAP@20, R@20 and Hit@5 are averaged over the queries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .client import AsyncSearchClient, ImageInput, Security
from .errors import InvalidArgumentError, NotFoundError
from .metrics import QueryScore, score_query, summarise
from .names import ITEM_STATUSES, name_of
from .v1 import search_service_pb2 as pb


@dataclass(frozen=True)
class Pipeline:
    name: str
    model: str
    crop: str
    index: str
    description: str


PIPELINES = {
    p.name: p for p in (
        Pipeline("baseline", "resnet50", "none", "exact_knn",
                 "ResNet50 on the whole image, exact KNN (original baseline)"),
        Pipeline("resnet50-face", "resnet50", "largest", "milvus",
                 "MTCNN face crop, ResNet50, Milvus (original improvement)"),
        Pipeline("face", "face_dlib", "largest", "milvus", "MTCNN face crop, aligned, dlib face model, Milvus"),
        Pipeline("resnet50-milvus", "resnet50", "none", "milvus", "ResNet50 on the whole image, Milvus"),
        Pipeline("face-int8", "face_dlib_int8", "largest", "milvus", "as face, with the dlib face model in INT8"),
        Pipeline("baseline-int8", "resnet50_int8", "none", "exact_knn", "as baseline, with ResNet50 in INT8"),
    )
}
DEFAULT_PIPELINES = "baseline,resnet50-face,face"
TOP_K = 20


def scan_dataset(root: Path, max_identities: int | None = None) -> list[tuple[Path, str]]:
    """(image path, identity) in LFW layout, sorted; optionally the first N identities."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    if max_identities:
        people = people[:max_identities]
    return [(f, person.name) for person in people for f in sorted(person.glob("*.jpg"))]


def collection_name(pipeline: str, root: Path, count: int) -> str:
    digest = hashlib.sha1(f"{root.resolve()}:{count}".encode()).hexdigest()[:8]
    return f"eval_{pipeline.replace('-', '_')}_{digest}"


async def run_pipeline(client: AsyncSearchClient, pipeline: Pipeline, images: list[tuple[Path, str]],
                       root: Path, concurrency: int) -> dict:
    name = collection_name(pipeline.name, root, len(images))
    try:
        await client.drop_collection(name)
    except NotFoundError:
        pass
    try:
        created = await client.create_collection(name, model=pipeline.model, crop_mode=pipeline.crop,
                                                 index_backend=pipeline.index, description=pipeline.description)
    except InvalidArgumentError as exc:
        return {"pipeline": pipeline.name, "skipped": exc.details, "description": pipeline.description}

    label_of_id: dict[str, str] = {}
    id_of_path: dict[Path, str] = {}
    outcomes: Counter = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    async for resp in client.index_images(name, (ImageInput.from_path(p) for p, _ in images)):
        path, label = images[resp.item_index]
        status = name_of(ITEM_STATUSES, resp.status, "unspecified")
        outcomes[status] += 1
        if resp.status in (pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE):
            label_of_id[resp.id] = label
            id_of_path[path] = resp.id
        else:
            failures.append(f"{path.name}: {resp.error.message}")
    index_seconds = time.perf_counter() - started

    per_label = Counter(label for path, label in images if path in id_of_path)
    queries = [(p, label) for p, label in images if p in id_of_path and per_label[label] >= 2]
    semaphore = asyncio.Semaphore(concurrency)

    async def query(path: Path, label: str) -> tuple[QueryScore, list[tuple[int, float, str, bool]]]:
        async with semaphore:
            resp = await client.search(name, item_id=id_of_path[path], top_k=TOP_K + 1)
        hits = [h for h in resp.hits if h.id != id_of_path[path]][:TOP_K]
        labels = [label_of_id.get(h.id, "") for h in hits]
        shown = [(n, h.score, h.uri, lab == label) for n, (h, lab) in enumerate(zip(hits, labels), start=1)]
        return score_query(str(path), label, labels, per_label[label] - 1), shown

    started = time.perf_counter()
    results = await asyncio.gather(*(query(p, label) for p, label in queries))
    query_seconds = time.perf_counter() - started
    scores = [s for s, _ in results]
    return {
        "pipeline": pipeline.name, "description": pipeline.description, "collection": name,
        "model": created.collection.model, "model_trained": created.collection.model_trained,
        "crop": pipeline.crop, "index": pipeline.index, "images": len(images),
        "indexed": outcomes["indexed"] + outcomes["duplicate"], "failed": outcomes["failed"],
        "no_face": sum("no face" in f.lower() for f in failures), "failures": failures[:20],
        "index_images_per_s": len(images) / index_seconds if index_seconds else 0.0,
        "queries_per_s": len(queries) / query_seconds if query_seconds else 0.0,
        **summarise(scores),
        "examples": _examples(results),
    }


def _examples(results, n: int = 3) -> dict:
    """The best and worst queries by AP@20, with their hits, for contact sheets."""
    ordered = sorted(results, key=lambda r: (r[0].ap_at_20, r[0].p_at_1))
    pick = lambda rs: [{"query": s.query, "label": s.label, "ap_at_20": s.ap_at_20, "hits": hits[:10]}  # noqa: E731
                       for s, hits in rs]
    return {"good": pick(ordered[::-1][:n]), "bad": pick(ordered[:n])}


async def evaluate(target: str, root: Path, pipelines: list[str], concurrency: int = 8,
                   max_identities: int | None = None, timeout: float = 600, security: Security | None = None) -> dict:
    """Runs the pipelines through the server at `target`; `security`: TLS and API key (None: plaintext)."""
    images = scan_dataset(root, max_identities)
    if not images:
        raise FileNotFoundError(f"no Person/*.jpg images under {root}")
    async with AsyncSearchClient(target, timeout=timeout, security=security) as client:
        info = await client.info()
        reports = [await run_pipeline(client, PIPELINES[p], images, root, concurrency) for p in pipelines]
    counts = Counter(label for _, label in images)
    return {"dataset": str(root), "images": len(images), "identities": len(counts),
            "identities_with_2_or_more": sum(1 for c in counts.values() if c >= 2),
            "server_version": info.version, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pipelines": reports}


def markdown_table(report: dict) -> str:
    rows = ["| pipeline | model | P@1 | mAP@20 | R@20 | Hit@5 | queries | index images/s | no face |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["pipelines"]:
        if "skipped" in p:
            rows.append(f"| {p['pipeline']} | skipped: {p['skipped']} | | | | | | | |")
            continue
        model = p["model"] + ("" if p["model_trained"] else " (UNTRAINED)")
        rows.append(f"| {p['pipeline']} | {model} | {p['p_at_1']:.3f} | {p['map_at_20']:.3f} | {p['r_at_20']:.3f} | "
                    f"{p['hit_at_5']:.3f} | {p['queries']} | {p['index_images_per_s']:.1f} | {p['no_face']} |")
    return "\n".join(rows) + "\n"


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """report.json, report.md, metrics.png and good/bad contact sheets per pipeline."""
    from .contact_sheet import write

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "report.md", out_dir / "metrics.png"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    written[1].write_text(f"# revsearch eval: {report['dataset']}\n\n{report['images']} images, "
                          f"{report['identities']} identities ({report['identities_with_2_or_more']} with 2+ "
                          f"images), {report['date']}\n\n" + markdown_table(report))
    _chart(report, written[2])
    for p in report["pipelines"]:
        for kind, examples in p.get("examples", {}).items():
            for n, ex in enumerate(examples, start=1):
                path = out_dir / f"{p['pipeline']}-{kind}-{n}.png"
                hits = [(rank, score, uri) for rank, score, uri, _ in ex["hits"]]
                title = f"{p['pipeline']} {kind} query {Path(ex['query']).name}: AP@20 {ex['ap_at_20']:.2f}"
                write(path, Path(ex["query"]).read_bytes(), hits, title)
                written.append(path)
    return written


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [p for p in report["pipelines"] if "skipped" not in p]
    metrics = [("p_at_1", "P@1"), ("map_at_20", "mAP@20"), ("r_at_20", "R@20"), ("hit_at_5", "Hit@5")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(done))
    for i, p in enumerate(done):
        label = p["pipeline"] + ("" if p["model_trained"] else " (untrained)")
        ax.bar([m + i * width for m in range(len(metrics))], [p[k] for k, _ in metrics], width, label=label)
    ax.set_xticks([m + width * (len(done) - 1) / 2 for m in range(len(metrics))], [t for _, t in metrics])
    ax.set_ylim(0, 1)
    ax.set_title(f"retrieval on {Path(report['dataset']).name} ({report['images']} images)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_dict(report: dict) -> dict:
    """The report without the example hit lists, for --json."""
    return {**report, "pipelines": [{k: v for k, v in p.items() if k != "examples"} for p in report["pipelines"]]}

