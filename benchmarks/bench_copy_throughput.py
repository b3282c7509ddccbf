"""Copy detection's costs against EmbedImage, 16 callers, one server, interleaved rounds:
IndexImages into a copy-detection collection, image searches with copy detection (queries that are
the indexed photos, and edited copies of them), and EmbedImage with the same model; plus the bytes
one item takes in the store, per stored-row layout.

A server as users run it (`make serve`: the managed Triton; `--local` for ONNX Runtime in the server
process) indexes the first --gallery shared photos into a copy-detection collection of --model. Each
round runs, for --seconds each, in an order that rotates from round to round (this machine's speed
drifts; only numbers of one round are compared): EmbedImage by model name (the model alone:
decode, resize, one forward pass) of the photos, and of the edited copies below (most are PNG files
of 200-290 KB, so EmbedImage of them costs more: the like-for-like base of their searches);
IndexImages of one image per call (a new JPEG each time: the
photos with a comment that makes their bytes new) into a fresh collection; SearchImages (top 10)
of the indexed photos; SearchImages of edited copies of them (copy_edits.ALL_EDITS in turn). Ratios
are taken within a round, against EmbedImage of the photos and against EmbedImage of the same kind of
bytes (SAME_BYTES); the medians over rounds are reported.

Bytes per item: after the server stops, the Milvus Lite file is opened and every row of the search
collection and of its views index is read back; an item's bytes are its rows' vectors (dimension x 2
for float16, x 4 for float32) and field values as stored (VARCHAR and JSON as their UTF-8 text,
8 bytes per INT64 / DOUBLE); the same rows with the other vector type are computed beside them
(--milvus-float16 chooses what the server stores: auto is float32 on Milvus Lite). The first copy-detection layout (five 1280-d float32 vectors, 300
keypoints of format 1) and the compact layout before this release (128-d crop views, features in
format 2) are computed from the same photos' features for comparison.
Writes benchmarks/results/copy_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import SHARED_DATA, log, machine, now_utc, saturate, start_server, stop_server, write_results
from revsearch.client import AsyncSearchClient, ImageInput
from revsearch.copy_edits import ALL_EDITS, edited_bytes
from revsearch.loadtest import distinct_jpeg
from revsearch_server import copies

WORKLOADS = ("embed", "index", "index_stream", "search", "search_edited", "embed_edited")
# The EmbedImage each workload's like-for-like ratio divides by: the same kind of bytes. The edited
# copies are PNG files of 200-290 KB for most edits (copy_edits keeps them lossless) where the photos
# are JPEGs of about 75 KB; decoding and receiving those costs EmbedImage as much as a search.
SAME_BYTES = {"index": "embed", "index_stream": "embed", "search": "embed", "search_edited": "embed_edited"}


async def run_rounds(address: str, model: str, gallery: list[bytes], edited: list[bytes], rounds: int,
                     seconds: float, concurrency: int) -> tuple[list[dict], dict]:
    async with AsyncSearchClient(address, timeout=300) as client:
        created = await client.create_collection("bench_copies_search", model=model)
        async for resp in client.index_images("bench_copies_search", [ImageInput(image=b, uri=f"photo:{n}")
                                                                      for n, b in enumerate(gallery)]):
            if resp.HasField("error") and resp.error.message:
                raise RuntimeError(f"indexing failed: {resp.error.message}")
        described = await client.describe_collection("bench_copies_search")
        for b in gallery[:concurrency]:  # warm-up: sessions, batchers, the search path
            await client.embed(b, model=model)
            await client.search("bench_copies_search", image=b, top_k=10)
        results = []
        for r in range(rounds):
            name = f"bench_copies_index_{r}"
            await client.create_collection(name, model=model)

            async def index(n, name=name):
                item = ImageInput(image=distinct_jpeg(gallery[n % len(gallery)], n), uri=f"bench://{n}")
                async for resp in client.index_images(name, [item]):
                    if resp.HasField("error") and resp.error.message:
                        raise RuntimeError(resp.error.message)

            async def index_stream(seconds: float, name=name) -> dict:
                """Each caller one IndexImages stream for the whole time (the bulk path: the server
                takes what has arrived as one batch), images counted as they are answered."""
                stop_at = time.perf_counter() + seconds
                done = [0]
                errors = [0]

                async def caller(c: int):
                    def items():
                        n = 0
                        while time.perf_counter() < stop_at:
                            n += 1
                            yield ImageInput(image=distinct_jpeg(gallery[(c * 997 + n) % len(gallery)], 10**6 * c + n),
                                             uri=f"bench://stream/{c}/{n}")
                    async for resp in client.index_images(name, items()):
                        if resp.HasField("error") and resp.error.message:
                            errors[0] += 1
                        else:
                            done[0] += 1

                started = time.perf_counter()
                await asyncio.gather(*(caller(c) for c in range(concurrency)))
                elapsed = time.perf_counter() - started
                return {"per_s": done[0] / elapsed, "requests": done[0], "errors": errors[0], "p50_ms": 0.0,
                        "p99_ms": 0.0}

            calls = {
                "embed": lambda n: client.embed(gallery[n % len(gallery)], model=model),
                "embed_edited": lambda n: client.embed(edited[n % len(edited)], model=model),
                "index": index,
                "search": lambda n: client.search("bench_copies_search", image=gallery[n % len(gallery)], top_k=10),
                "search_edited": lambda n: client.search("bench_copies_search", image=edited[n % len(edited)],
                                                         top_k=10),
            }
            order = WORKLOADS[r % len(WORKLOADS):] + WORKLOADS[:r % len(WORKLOADS)]
            row = {"round": r + 1, "order": list(order), "load_avg_before": os.getloadavg()[0]}
            for workload in order:
                row[workload] = (await index_stream(seconds) if workload == "index_stream"
                                 else await saturate(concurrency, seconds, calls[workload]))
                log(f"round {r + 1} {workload:14s} {row[workload]['per_s']:6.1f}/s  p50 {row[workload]['p50_ms']:.0f} ms"
                    f"  errors {row[workload]['errors']}")
            await client.drop_collection(name)
            results.append(row)
        info = {"collection": {"copy_detection": described.copy_detection,
                               "detail": described.copy_detection_detail,
                               "items": described.item_count, "dimension": described.dimension}}
        assert created.collection.copy_detection, "the collection has no copy detection: nothing to measure"
    return results, info


def _value_bytes(value, kind: str, dimension: int) -> int:
    if kind == "FLOAT16_VECTOR":
        return 2 * dimension
    if kind == "FLOAT_VECTOR":
        return 4 * dimension
    if kind in ("INT64", "DOUBLE"):
        return 8
    if kind == "JSON":
        return len(json.dumps(value, separators=(",", ":")).encode())
    return len(str(value).encode())


def stored_bytes(db: Path, collection: str) -> dict:
    """Bytes per item of a copy-detection collection, read back from the Milvus Lite file."""
    from pymilvus import MilvusClient

    client = MilvusClient(str(db))
    out = {}
    for suffix in ("", "__views"):
        name = f"revsearch_{collection}{suffix}"
        fields = {f["name"]: (f["type"].name, f.get("params", {}).get("dim", 0))
                  for f in client.describe_collection(name)["fields"]}
        rows = client.query(name, filter='id != ""', output_fields=["*"], limit=16384)
        totals: dict[str, int] = {}
        for row in rows:
            for key, value in row.items():
                kind, dim = fields.get(key, ("VARCHAR", 0))
                totals[key] = totals.get(key, 0) + _value_bytes(value, kind, int(dim))
        out[suffix or "main"] = {"rows": len(rows), "bytes_by_field": totals, "bytes": sum(totals.values()),
                                 "dimension": int(fields["vector"][1])}
    vector_kind = fields["vector"][0]
    client.close()
    items = out["main"]["rows"]
    per_field = {f"{part}.{k}": round(v / items, 1) for part, d in out.items() for k, v in d["bytes_by_field"].items()}
    per_item = (out["main"]["bytes"] + out["__views"]["bytes"]) / items
    vectors = sum(v for k, v in per_field.items() if k.endswith(".vector"))
    # The same rows with the other vector type (float16 halves a vector's bytes), computed, not stored.
    other_vectors = vectors * (2 if vector_kind == "FLOAT16_VECTOR" else 0.5)
    other = per_item - vectors + other_vectors
    return {"items": items, "bytes_per_item": round(per_item), "vector_type": vector_kind, "vector_bytes": round(vectors),
            "bytes_per_item_other_vector_type": round(other),
            "vector_bytes_other_vector_type": round(other_vectors),
            "by_field": per_field, "dimension": out["main"]["dimension"], "view_dimension": out["__views"]["dimension"],
            "rows_per_item": round((out["main"]["rows"] + out["__views"]["rows"]) / items, 2)}


# A view row of a full schema holds, empty: created_at_ms, face_count, timestamp_s (8 bytes each) and
# face_box and metadata as "{}" (2 each).
_FULL_VIEW_ROW_EMPTY_FIELDS = 28


def earlier_compact_bytes(photos: list[Path], measured: dict) -> dict:
    """The compact layout before this release for the same photos, computed from the measured rows:
    crop views of the item vector's dimension (not its leading ones) and local features in format 2
    (base85), the same vector type and other fields."""
    per_number = 2 if measured["vector_type"] == "FLOAT16_VECTOR" else 4
    texts = [copies.extract_stored(copies.feature_image(Image.open(p))) for p in photos]
    now = statistics.mean(len(f.encode()) for f in texts)
    before = statistics.mean(len(f.encode(2)) for f in texts)
    views = 4 * (measured["dimension"] - measured["view_dimension"]) * per_number
    return {"bytes_per_item": round(measured["bytes_per_item"] + views + before - now),
            "vectors": round(measured["vector_bytes"] + views), "local_features": round(before),
            "local_features_format_3_same_photos": round(now)}


def first_layout_bytes(photos: list[Path], measured: dict) -> dict:
    """The first copy-detection layout's bytes per item for the same photos: five 1280-d float32
    vectors, up to 300 keypoints of format 1 (base64 of 36 bytes each), the same other fields."""
    counts = [len(copies.extract(copies.feature_image(Image.open(p)), 300)) for p in photos]
    features = statistics.mean(len(copies.LocalFeatures(np.zeros((n, 2), np.float32), np.zeros((n, 32), np.uint8))
                                   .encode_v1()) for n in counts)
    other = sum(v for k, v in measured["by_field"].items() if not k.endswith((".vector", ".local_features")))
    if "__views.created_at_ms" not in measured["by_field"]:  # measured views are vectors-only (lean_views)
        other += 4 * _FULL_VIEW_ROW_EMPTY_FIELDS  # the first layout's four view rows carry every field
    return {"bytes_per_item": round(5 * 1280 * 4 + features + other), "vectors": 5 * 1280 * 4,
            "local_features": round(features), "other_fields": round(other)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--gallery", type=int, default=200, help="photos in the searched collection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="per workload and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--local", action="store_true", help="ONNX Runtime in the server process, not Triton")
    parser.add_argument("--milvus-float16", choices=["auto", "on", "off"], default="auto",
                        help="the server's --milvus-float16 (auto: float32 on Milvus Lite)")
    args = parser.parse_args()
    photos = sorted((SHARED_DATA / "photos").glob("*.jpg"))[:args.gallery]
    gallery = [p.read_bytes() for p in photos]
    edited = [edited_bytes(gallery[n % len(gallery)], ALL_EDITS[n % len(ALL_EDITS)]) for n in range(len(gallery))]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-copy-throughput-") as tmp:
        proc, address = start_server((["--triton-url", "off"] if args.local else [])
                                     + ["--milvus-float16", args.milvus_float16], tmp, allow_untrained=False)
        try:
            rounds, info = asyncio.run(run_rounds(address, args.model, gallery, edited, args.rounds, args.seconds,
                                                  args.concurrency))
        finally:
            stop_server(proc)
        stored = stored_bytes(Path(tmp) / "milvus.db", "bench_copies_search")
    ratios = {w: [r[w]["per_s"] / r["embed"]["per_s"] for r in rounds] for w in WORKLOADS if w != "embed"}
    like = {w: [r[w]["per_s"] / r[base]["per_s"] for r in rounds] for w, base in SAME_BYTES.items()}
    result = {
        "date": now_utc(), "machine": machine(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "model": args.model, "inference": "ONNX Runtime in the server process" if args.local else "managed Triton",
        "concurrency": args.concurrency, "seconds_per_workload": args.seconds, "gallery": len(gallery),
        "rounds": rounds, **info,
        "median_per_s": {w: round(statistics.median(r[w]["per_s"] for r in rounds), 1) for w in WORKLOADS},
        "median_ratio_to_embed": {w: round(statistics.median(v), 3) for w, v in ratios.items()},
        "median_ratio_to_embed_of_the_same_bytes": {w: round(statistics.median(v), 3) for w, v in like.items()},
        "targets": {"index": 0.7, "index_stream": 0.7, "search": 0.5, "search_edited": 0.5},
        "bytes": {"compact": stored, "earlier_compact": earlier_compact_bytes(photos[:50], stored),
                  "first_layout": first_layout_bytes(photos[:50], stored)},
    }
    med, rat = result["median_per_s"], result["median_ratio_to_embed"]
    md = [f"# Copy detection against EmbedImage ({args.model}, {result['inference']}, {args.concurrency} callers)",
          "", f"{result['date']}; {args.rounds} interleaved rounds of {args.seconds:g} s per workload; load average "
          f"{load_before[0]:.2f} before, {result['load_avg_after'][0]:.2f} after; "
          f"{info['collection']['detail']}", "",
          "| workload | requests/s (median) | ratio to EmbedImage of the photos (median of rounds) | "
          "ratio to EmbedImage of the same bytes (median of rounds) | target |",
          "| --- | --- | --- | --- | --- |", f"| EmbedImage, the photos | {med['embed']} | 1 | 1 | |"]
    names = {"index": "IndexImages, one image per call", "index_stream": "IndexImages, one stream per caller",
             "search": "SearchImages, the indexed photos", "search_edited": "SearchImages, edited copies",
             "embed_edited": "EmbedImage, the edited copies"}
    like_med = result["median_ratio_to_embed_of_the_same_bytes"]
    for w in ("embed_edited", "index", "index_stream", "search", "search_edited"):
        target = f">= {result['targets'][w]}" if w in result["targets"] else ""
        same = "1" if w == "embed_edited" else f"{like_med[w]:.3f} ({', '.join(f'{x:.2f}' for x in like[w])})"
        md.append(f"| {names[w]} | {med[w]} | {rat[w]:.3f} ({', '.join(f'{x:.2f}' for x in ratios[w])}) | {same} | "
                  f"{target} |")
    md += ["", "Per round (requests/s):", "", "| round | order | " + " | ".join(WORKLOADS) + " |",
           "| --- | --- |" + " --- |" * len(WORKLOADS)]
    md += [f"| {r['round']} | {' > '.join(r['order'])} | " + " | ".join(f"{r[w]['per_s']:.1f}" for w in WORKLOADS)
           + " |" for r in rounds]
    c, e, f = result["bytes"]["compact"], result["bytes"]["earlier_compact"], result["bytes"]["first_layout"]
    kinds = {"FLOAT16_VECTOR": "float16", "FLOAT_VECTOR": "float32"}
    other_kind = "float32" if c["vector_type"] == "FLOAT16_VECTOR" else "float16"
    md += ["", "Bytes per item in the store:", "", "| layout | bytes per item | of which vectors | local features |",
           "| --- | --- | --- | --- |",
           f"| compact (one forward pass, {c['dimension']}-d item vector, {c['view_dimension']}-d crop views, "
           f"format 3 features), {kinds[c['vector_type']]} vectors "
           f"(measured) | {c['bytes_per_item']} | {c['vector_bytes']} | {c['by_field'].get('main.local_features', 0):.0f} |",
           f"| the same rows with {other_kind} vectors (computed) | {c['bytes_per_item_other_vector_type']} | "
           f"{c['vector_bytes_other_vector_type']} | "
           f"{c['by_field'].get('main.local_features', 0):.0f} |",
           f"| the earlier compact layout ({c['dimension']}-d crop views, format 2 features), "
           f"{kinds[c['vector_type']]} vectors (computed; {e['local_features_format_3_same_photos']} bytes of "
           f"format 3 for its first 50 photos) | {e['bytes_per_item']} | {e['vectors']} | {e['local_features']} |",
           f"| first copy-detection layout (5 x 1280-d float32, format 1 features) | {f['bytes_per_item']} | "
           f"{f['vectors']} | {f['local_features']} |", "", f"Fields (bytes per item): {c['by_field']}", ""]
    write_results("copy_throughput", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
