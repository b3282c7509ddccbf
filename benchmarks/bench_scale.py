"""A collection at 100k and 1M items through the public API: ImportVectors, search by vector and by
image, recall against exact search, memory. Milvus Lite at 100k; the Milvus server (the embedded 2.3
standalone the tests use) at 100k and 1M, one collection grown from one size to the next.

Vectors with the structure of real embeddings, made once and cached outside git
($REVSEARCH_CACHE or ~/.cache/revsearch, `scale/`):

  real     EmbedImage with a copy-detection collection of efficientnet_lite0 named (the served model,
           managed Triton): the 128-d PCA-whitened vector such collections store, of every shared LFW
           image and one edit of it, every shared photo and each of its 16 edits, and every 3rd frame
           of the shared clips and one edit of it (copy_edits: crops, rotations, captions, borders,
           recolourings, re-compression; each edit seeded by the image's content).
  held out the images whose content hash starts with 0 (1/16 of them, with their edits) are never
           stored: 200 of their vectors are the queries.
  items    row n < R (R: the stored real vectors) is real vector n; row n >= R is
           normalize(real[b] + s * delta[d]), b and d uniform, s uniform in [0.5, 1.0], seeded: a real
           image moved by a real edit's displacement (delta = embedding(edit of X) - embedding(X)) of
           another image, so every stored vector lies where edited real images lie.
  gaussian a second, labelled row at 100k: isotropic Gaussian 128-d vectors, normalised.

Per backend and size: ImportVectors rows/s (one client stream, 1,000 items a message); time until
the last imported item is found; on the server, time until flushed, indexed (HNSW, the default) and
loaded; recall@20 of the 200 queries against exact search (numpy over the same vectors, float16-
rounded where the store keeps float16; a hit counts when it is in the true top 20 or ties the 20th
within 1e-3); single-query p50 / p99 (300 sequential searches by vector, top 20); vector queries/s
at concurrency 16, 32 and 64 (8 s each); RSS of the store's processes and of the revsearch server.
On the server, the same recall, latency and queries/s at 32 callers for each --breadths value set
per request (HNSW's ef), and the sealed segments the collection ended in: every search walks each
segment's graph, so their number sets the cost (--milvus-config sets the embedded server's
milvus.yaml, e.g. its segment size).
At the server's largest size: SearchImages by image without copy detection against EmbedImage alone
with the same model, 16 callers, interleaved rounds (Triton on the same two cores). On Lite at its
largest size, copy detection end to end: the 300 shared photos indexed through IndexImages (full
items: crop vectors and local features) into the same collection, then 200 sequential image searches
of edited copies of them (copy_edits, every edit in turn) with copy detection on: p50 / p99, P@1 and
the store's memory. Before those searches the server stops and the imported rows become full items
(fill_full_items, written into the Lite file with pymilvus): each gets the local features of an LFW
portrait and four crop-view rows (other rows' vectors), as IndexImages would store them, so every
search compares the query with 4 x the items' crop vectors and verifies candidates among them. Lite
runs twice: --milvus-float16 on (float16 vectors), then off (float32, what auto gives on Lite).
Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common import (LFW, SHARED_DATA, VIDEO, ServerControl, log, machine, now_utc, process_tree, rss_kb, saturate,
                    served_over_milvus_server, start_server, stop_server, write_results)
from revsearch.client import AsyncSearchClient, ImageInput, VectorInput
from revsearch.copy_distractors import cache_dir
from revsearch.copy_edits import ALL_EDITS, edited_bytes
from revsearch.errors import UnavailableError

MODEL = "efficientnet_lite0"
QUERIES = 200
TOP_K = 20
VERSION = 1


# -- vectors ------------------------------------------------------------------------------------------
def _frames(step: int = 3) -> list[bytes]:
    import cv2

    out = []
    for clip in sorted(VIDEO.glob("*.mp4")):
        cap = cv2.VideoCapture(str(clip))
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % step == 0:
                ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
                out.append(jpg.tobytes())
            n += 1
        cap.release()
    return out


def _images() -> list[tuple[str, bytes, int]]:
    """(group digest, JPEG bytes, original's index or -1) of every real image and its edits, in a fixed order."""
    out: list[tuple[str, bytes, int]] = []

    def add(data: bytes, edits: list[str]) -> None:
        digest = hashlib.sha256(data).hexdigest()
        first = len(out)
        out.append((digest, data, -1))
        for e in edits:
            out.append((digest, edited_bytes(data, e), first))

    photos = sorted((SHARED_DATA / "photos").glob("*.jpg"))
    for p in photos:
        add(p.read_bytes(), [e for e in ALL_EDITS if e != "original"])
    for p in sorted(LFW.rglob("*.jpg")):
        data = p.read_bytes()
        add(data, [ALL_EDITS[1 + int(hashlib.sha256(data).hexdigest()[:4], 16) % (len(ALL_EDITS) - 1)]])
    for data in _frames():
        add(data, [ALL_EDITS[1 + int(hashlib.sha256(data).hexdigest()[:4], 16) % (len(ALL_EDITS) - 1)]])
    return out


async def _embed_all(address: str, images: list[bytes], concurrency: int = 16) -> np.ndarray:
    out = np.zeros((len(images), 128), np.float32)
    async with AsyncSearchClient(address, timeout=300) as client:
        await client.create_collection("scale_embedder", model=MODEL, exist_ok=True)
        nxt = [0]

        async def worker():
            while nxt[0] < len(images):
                i = nxt[0]
                nxt[0] += 1
                resp = await client.embed(images[i], collection="scale_embedder")
                out[i] = resp.vector
                if i % 2000 == 0:
                    log(f"  embedded {i}/{len(images)}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def real_vectors(address: str) -> dict:
    """The cached real vectors (made through `address` the first time)."""
    path = cache_dir() / "scale" / f"real_v{VERSION}.npz"
    if path.is_file():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    images = _images()
    log(f"embedding {len(images)} real images (cached in {path})")
    vectors = asyncio.run(_embed_all(address, [b for _, b, _ in images]))
    held = np.array([d.startswith("0") for d, _, _ in images])
    original = np.array([o for _, _, o in images])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=vectors, held_out=held, original=original)
    return {"vectors": vectors, "held_out": held, "original": original}


def build_items(real: dict, size: int, seed: int = 0, bases: bool = False):
    """(items [size, 128], queries [QUERIES, 128]) as the module docstring says; with bases, also each
    item's base: the index in real["vectors"] of the real vector it is (or was moved from)."""
    vectors, held, original = real["vectors"], real["held_out"], real["original"]
    stored_at = np.flatnonzero(~held)
    stored = vectors[stored_at]
    edited = np.flatnonzero((original >= 0) & ~held)
    deltas = vectors[edited] - vectors[original[edited]]
    queries = vectors[np.random.default_rng(seed).choice(np.flatnonzero(held), QUERIES, replace=False)]
    if size <= len(stored):
        return (stored[:size].copy(), queries) + ((stored_at[:size],) if bases else ())
    out = np.empty((size, vectors.shape[1]), np.float32)
    base = np.empty(size, np.int64)
    out[:len(stored)], base[:len(stored)] = stored, stored_at
    chunk = 100_000  # chunk k of the made rows comes from its own generator: every size has the same prefix
    for k, start in enumerate(range(len(stored), size, chunk)):
        rng = np.random.default_rng([seed, k])
        b, d = rng.integers(0, len(stored), chunk), rng.integers(0, len(deltas), chunk)
        s = rng.uniform(0.5, 1.0, chunk).astype(np.float32)[:, None]
        n = min(chunk, size - start)
        v = stored[b[:n]] + s[:n] * deltas[d[:n]]
        out[start:start + n] = v / np.linalg.norm(v, axis=1, keepdims=True)
        base[start:start + n] = stored_at[b[:n]]
    return (out, queries) + ((base,) if bases else ())


def gaussian_items(size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((size + QUERIES, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[:size], v[size:]


def exact_top(items: np.ndarray, queries: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ items.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    top = np.take_along_axis(top, order, 1)
    return top, np.take_along_axis(scores, top, 1)


# -- measurements ---------------------------------------------------------------------------------------
def _id(n: int) -> str:
    return f"s{n}"


async def import_rows(client: AsyncSearchClient, collection: str, items: np.ndarray, start: int, model: str,
                      version: str) -> dict:
    t0 = time.perf_counter()
    resp = await client.import_vectors(collection, (VectorInput(id=_id(start + n), vector=v) for n, v in
                                                    enumerate(items)), model=model, model_version=version)
    elapsed = time.perf_counter() - t0
    assert resp.imported == len(items) and resp.failed == 0, (resp.imported, resp.failed, list(resp.failures)[:3])
    t1 = time.perf_counter()
    while (await client.search(collection, vector=items[-1], top_k=1)).hits[0].id != _id(start + len(items) - 1):
        await asyncio.sleep(0.05)
    return {"rows": len(items), "seconds": round(elapsed, 2), "rows_per_s": round(len(items) / elapsed),
            "searchable_after_s": round(time.perf_counter() - t1, 3)}


async def recall(client: AsyncSearchClient, collection: str, items: np.ndarray, queries: np.ndarray,
                 float16: bool, breadth: int | None = None) -> dict:
    ref = items.astype(np.float16).astype(np.float32) if float16 else items
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    top, scores = exact_top(ref, queries)
    # A hit that ties the 20th true score counts: within float16 rounding of the query (Lite sends it as
    # float16), else within float32 rounding.
    tie = 1e-3 if float16 else 1e-5
    found = []
    for q, t, s in zip(queries, top, scores):
        hits = (await client.search(collection, vector=q, top_k=TOP_K, search_breadth=breadth)).hits
        truth = {_id(int(i)) for i in t}
        found.append(sum(1 for h in hits if h.id in truth or h.score >= s[-1] - tie) / TOP_K)
    return {"recall_at_20": round(float(np.mean(found)), 4), "queries": len(queries)}


async def latency(client: AsyncSearchClient, collection: str, queries: np.ndarray, n: int = 300,
                  breadth: int | None = None) -> dict:
    for q in queries[:10]:
        await client.search(collection, vector=q, top_k=TOP_K, search_breadth=breadth)
    ms = []
    for i in range(n):
        t = time.perf_counter()
        await client.search(collection, vector=queries[i % len(queries)], top_k=TOP_K, search_breadth=breadth)
        ms.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "queries": n}


async def throughput(address: str, collection: str, queries: np.ndarray, seconds: float,
                     levels: tuple[int, ...] = (16, 32, 64), breadth: int | None = None) -> dict:
    out = {}
    async with AsyncSearchClient(address, timeout=120) as client:
        for c in levels:
            out[f"c{c}"] = await saturate(c, seconds, lambda i: client.search(
                collection, vector=queries[i % len(queries)], top_k=TOP_K, search_breadth=breadth))
    return out


async def breadth_sweep(address: str, client: AsyncSearchClient, collection: str, items: np.ndarray,
                        queries: np.ndarray, breadths: list[int], seconds: float) -> list[dict]:
    """Recall, single-query latency and queries/s at 32 callers per search breadth (ef for HNSW), set
    per request: what the collection's default could be."""
    out = []
    for b in breadths:
        row = {"breadth": b, "recall": await recall(client, collection, items, queries, False, b),
               "latency": await latency(client, collection, queries, breadth=b),
               "throughput": await throughput(address, collection, queries, seconds, (32,), b)}
        log(f"  breadth {b}: {row['recall']} {row['latency']} c32 {row['throughput']['c32']['per_s']:.1f}/s")
        out.append(row)
    return out


async def index_photos(address: str, collection: str, photos: list[bytes]) -> list[str]:
    """The shared photos as full items (IndexImages: crop vectors and local features); their ids."""
    async with AsyncSearchClient(address, timeout=300) as client:
        return [r.id async for r in client.index_images(collection, [ImageInput(image=b, uri=f"photo:{n}")
                                                                      for n, b in enumerate(photos)])]


async def copy_searches(address: str, collection: str, photos: list[bytes], ids: list[str], queries: int = 200
                        ) -> dict:
    async with AsyncSearchClient(address, timeout=300) as client:
        edits = [e for e in ALL_EDITS if e != "original"]
        ms, right = [], 0
        for n in range(queries):
            i = (n * 7) % len(photos)
            query = edited_bytes(photos[i], edits[n % len(edits)])
            t = time.perf_counter()
            hits = (await client.search(collection, image=query, top_k=TOP_K)).hits
            ms.append((time.perf_counter() - t) * 1000)
            right += bool(hits) and hits[0].id == ids[i]
    return {"queries": queries, "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "p_at_1": round(right / queries, 3),
            "indexed_photos": len(ids)}


async def searchable(address: str, collection: str, vector: np.ndarray, limit_s: float = 600.0) -> None:
    """Returns once a vector search of the collection answers (Milvus Lite loads a file's collections
    when the server starts; 500k rows take a while): the searches measured after it are warm."""
    t0 = time.perf_counter()
    async with AsyncSearchClient(address, timeout=120) as client:
        while True:
            try:
                await client.search(collection, vector=vector, top_k=1)
                return
            except UnavailableError:
                if time.perf_counter() - t0 > limit_s:
                    raise
                await asyncio.sleep(1.0)


def distractor_features(count: int = 1000) -> list[str]:
    """Stored local features (copies.py, format 3, as a new collection writes them) of `count` LFW
    portraits: the copy searches' queries are edits of the shared photos, so these never verify one
    of them."""
    from revsearch_server import copies

    paths = sorted(LFW.glob("*/*.jpg"))[::7][:count]
    return [copies.extract_stored(copies.feature_image(Image.open(p))).encode() for p in paths]


def fill_full_items(db: str, collection: str, items: np.ndarray, from_photos: np.ndarray, features: list[str],
                    float16: bool, seed: int = 2) -> dict:
    """Benchmark only, with the server stopped: make the imported rows of a Lite collection full
    copy-detection items, as IndexImages would have stored them. Each imported row gets the local
    features of a portrait (distractor_features, in turn) and four crop-view rows in the views
    collection, each the vector of another imported row drawn at random (seeded): real-structured
    vectors, searched by FLAT at the same cost as real crop vectors. `from_photos` marks the rows made
    from the shared photos (the copy searches' originals) and their edits: those would be copies of the
    originals with a portrait's features, so they take another row's vector and are never a view.
    Writes through pymilvus into the Lite file, rows copied from a template row of each collection so
    every field is as the server writes it."""
    from pymilvus import MilvusClient

    from revsearch_server.copy_vectors import leading
    from revsearch_server.rows import row_id

    t0 = time.perf_counter()
    client = MilvusClient(db)
    main, views = f"revsearch_{collection}", f"revsearch_{collection}__views"
    main_row = client.query(main, filter=f'id == "{_id(0)}"', output_fields=["*"])[0]
    view_row = client.query(views, filter='id != ""', output_fields=["*"], limit=1)[0]
    # The views keep the leading dimensions of the whitened vectors (copy_vectors.leading, 80 of 128).
    view_dim = next(f["params"]["dim"] for f in client.describe_collection(views)["fields"] if f["name"] == "vector")

    def vector(v: np.ndarray):
        return v.astype(np.float16).tobytes() if float16 else v.tolist()

    rng = np.random.default_rng(seed)
    others = np.flatnonzero(~from_photos)
    items = items.copy()
    items[from_photos] = items[rng.choice(others, int(from_photos.sum()))]
    perms = [others[rng.integers(0, len(others), len(items))] for _ in range(4)]
    view_vectors = leading(items, view_dim)  # cut once, not once a view row
    chunk = 500
    spent = {"upsert": 0.0, "insert": 0.0}
    for start in range(0, len(items), chunk):
        end = min(start + chunk, len(items))
        t = time.perf_counter()
        client.upsert(main, [main_row | {"id": _id(n), "vector": vector(items[n]),
                                         "local_features": features[n % len(features)]} for n in range(start, end)])
        spent["upsert"] += time.perf_counter() - t
        t = time.perf_counter()
        client.insert(views, [view_row | {"id": row_id(_id(n), k + 1), "vector": vector(view_vectors[perms[k][n]])}
                              for n in range(start, end) for k in range(4)])
        spent["insert"] += time.perf_counter() - t
    client.close()
    return {"items": len(items), "view_rows": 4 * len(items), "seconds": round(time.perf_counter() - t0, 1),
            "features_from": f"{len(features)} LFW portraits", "photo_rows_replaced": int(from_photos.sum()),
            "write_s": {k: round(v, 1) for k, v in spent.items()}}


async def images_vs_embed(address: str, collection: str, images: list[bytes], rounds: int, seconds: float) -> dict:
    async with AsyncSearchClient(address, timeout=120) as client:
        for b in images[:16]:
            await client.embed(b, collection=collection)
            await client.search(collection, image=b, top_k=TOP_K, copy_detection=False)
        per_round = []
        for r in range(rounds):
            row = {}
            for w in (("embed", "search") if r % 2 == 0 else ("search", "embed")):
                call = ((lambda i: client.embed(images[i % len(images)], collection=collection)) if w == "embed" else
                        (lambda i: client.search(collection, image=images[i % len(images)], top_k=TOP_K,
                                                 copy_detection=False)))
                row[w] = await saturate(16, seconds, call)
            row["ratio"] = round(row["search"]["per_s"] / row["embed"]["per_s"], 3)
            per_round.append(row)
            log(f"  images round {r + 1}: search {row['search']['per_s']:.1f}/s, embed {row['embed']['per_s']:.1f}/s")
    return {"rounds": per_round, "ratio_median": statistics.median(r["ratio"] for r in per_round)}


def server_rss_mb(pid: int) -> dict:
    tree = process_tree(pid)
    own = rss_kb(pid) / 1024
    return {"server_mb": round(own), "server_children_mb": round(sum(rss_kb(p) for p in tree[1:]) / 1024)}


def lite_rss_mb(data_dir: str) -> float:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "milvus" in cmd and data_dir in cmd and "revsearch" not in cmd:
                return round(rss_kb(int(p.name)) / 1024)
    return 0.0


# -- runs --------------------------------------------------------------------------------------------
async def run_backend(address: str, name: str, sizes: list[int], real: dict, store_mb, float16: bool,
                      control_uri: str | None, seconds: float, kind: str = "real",
                      breadths: list[int] = ()) -> list[dict]:
    rows = []
    async with AsyncSearchClient(address, timeout=600) as client:
        coll = (await client.create_collection(name, model=MODEL)).collection
        log(f"{name}: {coll.vector_index_detail}")
        have = 0
        for size in sizes:
            items, queries = build_items(real, size) if kind == "real" else gaussian_items(size)
            row = {"collection": name, "vectors": kind, "size": size, "index": coll.vector_index_detail}
            row["import"] = await import_rows(client, name, items[have:], have, coll.model, coll.model_version)
            log(f"{name} {size}: imported {row['import']}")
            have = size
            if control_uri:
                control = ServerControl(control_uri, f"revsearch_{name}")
                row["index_build"] = await asyncio.to_thread(control.flush_and_wait, size)
                control.close()
                log(f"{name} {size}: {row['index_build']}")
            row["recall"] = await recall(client, name, items, queries, float16)
            row["latency"] = await latency(client, name, queries)
            row["throughput"] = await throughput(address, name, queries, seconds)
            row["memory"] = {"store_mb": store_mb()}
            if breadths and control_uri:
                row["breadth_sweep"] = await breadth_sweep(address, client, name, items, queries, breadths, seconds)
            log(f"{name} {size}: {row['recall']} {row['latency']} {row['throughput']} {row['memory']}")
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lite-sizes", default="100000")
    parser.add_argument("--server-sizes", default="100000,1000000")
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--image-rounds", type=int, default=3)
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: lite, server, gaussian, images, copies")
    parser.add_argument("--milvus-config", action="append", default=[], metavar="DOTTED.KEY=VALUE",
                        help="a milvus.yaml setting for the embedded Milvus server (repeatable), e.g. "
                             "dataCoord.segment.maxSize=4096")
    parser.add_argument("--breadths", default="32,64,128,256",
                        help="search breadths (HNSW ef) swept on the server's real collections, per request")
    parser.add_argument("--results", default="scale", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    milvus_config = dict(kv.split("=", 1) for kv in args.milvus_config)
    skip = set(filter(None, args.skip.split(",")))
    load_before = os.getloadavg()
    result = {"date": now_utc(), "machine": machine(), "load_avg_before": load_before, "model": MODEL,
              "runs": [], "method": __doc__, "milvus_config": milvus_config}
    photos = [p.read_bytes() for p in sorted((SHARED_DATA / "photos").glob("*.jpg"))]
    features = distractor_features() if not {"lite", "copies"} & skip else []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for float16 in (True, False):  # --milvus-float16 on (half the bytes), then off (Lite's default, auto)
            if "lite" in skip:
                break
            where = f"{tmp}/lite{'' if float16 else '_f32'}"
            extra = ["--milvus-float16", "on" if float16 else "off"]
            proc, address = start_server(extra, where, allow_untrained=False)
            try:
                real = real_vectors(address)
                result["real_vectors"] = {"count": int(len(real["vectors"])), "held_out": int(real["held_out"].sum())}
                sizes = [int(s) for s in args.lite_sizes.split(",") if s]
                name = "scale_lite" if float16 else "scale_lite_f32"
                result["runs"] += asyncio.run(run_backend(address, name, sizes, real, lambda: lite_rss_mb(where),
                                                          float16, None, args.seconds))
                result["runs"][-1]["memory"].update(server_rss_mb(proc.pid))
                result["runs"][-1]["float16"] = float16
                if "copies" not in skip:
                    ids = asyncio.run(index_photos(address, name, photos))
                    stop_server(proc)
                    run = result["runs"][-1]
                    # In a process of its own: Milvus Lite lets the file go only when its client process ends.
                    items, _, bases = build_items(real, sizes[-1], bases=True)
                    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                        run["full_items"] = pool.submit(fill_full_items, f"{where}/milvus.db", name, items,
                                                        bases < len(photos) * len(ALL_EDITS), features,
                                                        float16).result()
                    log(f"{name}: full items {run['full_items']}")
                    t0 = time.perf_counter()
                    proc, address = start_server(extra, where, allow_untrained=False)
                    asyncio.run(searchable(address, name, items[0]))
                    run["full_items"]["searchable_after_restart_s"] = round(time.perf_counter() - t0, 1)
                    run["copy_searches"] = asyncio.run(copy_searches(address, name, photos, ids))
                    run["memory"]["store_mb_full_items"] = lite_rss_mb(where)
                    run["memory"]["server_full_items"] = server_rss_mb(proc.pid)
                    log(f"copy searches: {run['copy_searches']} {run['memory']}")
            finally:
                stop_server(proc)
        if "server" not in skip:
            with served_over_milvus_server(tmp, milvus_config=milvus_config) as (mproc, uri, proc, address):
                real = real_vectors(address)
                sizes = [int(s) for s in args.server_sizes.split(",") if s]
                store_mb = lambda: round(sum(rss_kb(p) for p in process_tree(mproc.pid)) / 1024)  # noqa: E731
                runs = asyncio.run(run_backend(address, "scale_server", sizes, real, store_mb, False, uri,
                                               args.seconds, breadths=[int(b) for b in args.breadths.split(",") if b]))
                runs[-1]["memory"].update(server_rss_mb(proc.pid))
                if "images" not in skip:
                    runs[-1]["images_vs_embed"] = asyncio.run(images_vs_embed(
                        address, "scale_server", photos, args.image_rounds, 10.0))
                result["runs"] += runs
                if "gaussian" not in skip:
                    result["runs"] += asyncio.run(run_backend(address, "scale_gaussian", [100_000], real, store_mb,
                                                              False, uri, args.seconds, kind="gaussian"))
    result["load_avg_after"] = os.getloadavg()
    write_results(args.results, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    md = [f"# A collection at 100k and 1M items ({result['model']} vectors, 128-d)", "",
          f"{result['date']}; load average {result['load_avg_before'][0]:.2f} before, "
          f"{result['load_avg_after'][0]:.2f} after; 2 cores. Method: benchmarks/bench_scale.py's docstring."
          + (f" {result['merged']}" if result.get("merged") else "")
          + (" The embedded Milvus server ran with " + ", ".join(f"`{k}: {v}`" for k, v in result["milvus_config"].items())
             + " (its milvus.yaml defaults otherwise)." if result.get("milvus_config") else ""), "",
          "| store | vectors | items | index | import rows/s | searchable after | indexed + loaded | recall@20 | "
          "p50 / p99 ms | q/s c16 / c32 / c64 | store RSS MB |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        build = r.get("index_build", {})
        t = r["throughput"]
        store = ("Milvus Lite, " + ("float16" if r.get("float16") else "float32") if "lite" in r["collection"]
                 else "Milvus 2.3 server, float32")
        md.append(f"| {store} | {r['vectors']} | "
                  f"{r['size']:,} | {r['index'].split(',')[0]} | {r['import']['rows_per_s']:,} | "
                  f"{r['import']['searchable_after_s']} s | "
                  f"{(str(build.get('indexed_and_loaded_s')) + ' s') if build else '-'} | "
                  f"{r['recall']['recall_at_20']} | {r['latency']['p50_ms']} / {r['latency']['p99_ms']} | "
                  f"{t['c16']['per_s']:.1f} / {t['c32']['per_s']:.1f} / {t['c64']['per_s']:.1f} | {r['memory']['store_mb']} |")
    for r in result["runs"]:
        if r.get("breadth_sweep"):
            md += ["", f"{r['collection']} at {r['size']:,}, search breadth (ef) set per request:", "",
                   "| ef | recall@20 | p50 / p99 ms | q/s at 32 callers |", "| --- | --- | --- | --- |"]
            md += [f"| {b['breadth']} | {b['recall']['recall_at_20']} | {b['latency']['p50_ms']} / "
                   f"{b['latency']['p99_ms']} | {b['throughput']['c32']['per_s']:.1f} |" for b in r["breadth_sweep"]]
    for r in result["runs"]:
        if r.get("index_build", {}).get("segments"):
            md.append(f"\n{r['collection']} at {r['size']:,}: sealed segments (rows) {r['index_build']['segments']}")
    for r in result["runs"]:
        if "copy_searches" in r:
            cs = r["copy_searches"]
            full = r.get("full_items", {})
            md += ["", f"Copy detection at {r['size']:,} full items on Milvus Lite, "
                       f"{'float16' if r.get('float16') else 'float32'} (the imported rows made full items: local "
                       f"features and {full.get('view_rows', 0):,} crop-view rows, fill_full_items; "
                       f"{cs['indexed_photos']} photos indexed through IndexImages): image searches of edited copies "
                       f"p50 {cs['p50_ms']} ms, p99 {cs['p99_ms']} ms, P@1 {cs['p_at_1']} over {cs['queries']} "
                       f"queries; the store's RSS {r['memory'].get('store_mb_full_items')} MB, the server's "
                       f"{r['memory'].get('server_full_items', {}).get('server_mb')} MB."]
        if "images_vs_embed" in r:
            iv = r["images_vs_embed"]
            md += ["", f"Image queries (SearchImages by image, copy detection off) at {r['size']:,} items against "
                       f"EmbedImage alone, 16 callers: ratio {iv['ratio_median']:.2f} (rounds: "
                       + ", ".join(f"search {x['search']['per_s']:.1f}/s vs embed {x['embed']['per_s']:.1f}/s"
                                   for x in iv["rounds"]) + ")."]
    errors = {f"{r['collection']} {r['size']:,} {c}": t["error_kinds"] for r in result["runs"]
              for c, t in r["throughput"].items() if t.get("errors")}
    if errors:
        md += ["", "Errors under load (counted, not in the q/s): " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
