"""Where copy detection's candidates could come from at 20,000 distractors: recall of the original
among the first N candidates of each candidate source, offline, on the development split.

Copy detection verifies the candidates its vectors find (docs/copy-detection.md); a copy whose
original is not among them cannot be found. With 20,000 distractors (`revsearch eval --copies
--copy-distractors 20000`) 50% crops fell to P@1 0.70 because their originals were no longer among
the candidates. This benchmark measures, without a server, how often the original is among the first
N candidates of:

  served      what the server searches today: the item rows' 128-d vectors and the crop views'
              leading 80 dimensions (their scores times sqrt(80/128)), each item at its best score;
              "+ zoomed out": the 16 the query's 112 px vector adds among the views
  rows        the item rows' vectors alone
  words       a second descriptor: the item's ORB descriptors (the stored ones, 10 bytes) quantised
              to visual words (K centroids learned by k-means on the bits of descriptors of the
              gallery's report-half originals, never a development query's original), the item a
              set of words (those of `--word-keypoints` of its keypoints, chosen round-robin over a
              4 x 4 grid as the stored ones are); a query scores an item by the idf (learned from
              the same training images) of the words they share (the query: all its ORB keypoints
              at both scales). In Milvus this would be a sparse vector, 8 bytes a word.
  a ∪ b       the two lists interleaved, each item once, the first N

The gallery, distractors and queries are those of the eval: the shared photos, every LFW portrait
and a frame every 25 of the clips, split in two by content hash (copy_distractors); 20,000
distractors made from the other half; the development half's originals (104) under every edit of
copy_edits (17). Region vectors come from efficientnet_lite0's graph (in-process ONNX Runtime) and
the build's whitening, local features from the server's own code (copies.py); both are cached under
~/.cache/revsearch/copy_candidates (about 5 minutes to make on 2 cores). Gallery sizes 1x, 3x and
9.9x are prefixes of the gallery in the eval's order (originals, then distractors).

Writes benchmarks/results/copy_candidates.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import ROOT, SHARED_DATA, VIDEO, LFW, log, machine, now_utc, write_results
from revsearch import copy_distractors, copy_edits
from revsearch import copy_evaluation as ce
from revsearch_server import copies
from revsearch_server.copy_vectors import VIEW_DIMENSION, CopyProjections
from revsearch_server.imaging import ImageLimits
from revsearch_server.models import ModelSpec

LIMITS = ImageLimits(50_000_000, 100_000_000)
DEPTHS = (16, 32, 48)
ZOOM = copies.ZOOM_CANDIDATES
WORD_BYTES = 8  # a Milvus sparse vector's nonzero: uint32 index + float32 value


class Regions:
    """Whitened regional vectors of model inputs ([N, 5, D]), in-process ONNX Runtime, batches of 32."""

    def __init__(self, model: ModelSpec):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.model = model
        self.session = ort.InferenceSession(str(model.onnx_path), options, providers=["CPUExecutionProvider"])
        self.projections = CopyProjections()

    def __call__(self, pixels: list[np.ndarray]) -> np.ndarray:
        out = [self.session.run([self.model.copy_output], {self.model.input_name: np.stack(pixels[i:i + 32])})[0]
               for i in range(0, len(pixels), 32)]
        return self.projections.project(self.model, np.concatenate(out)).astype(np.float32)


def _stored(data: bytes, model: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    item = copies._index_input(data, LIMITS, model, False, copies.FEATURE_FORMAT)
    features = copies.LocalFeatures.decode(item.features)
    return item.views[0], features.points, np.ascontiguousarray(features.descriptors[:, :copies.STORED_DESCRIPTOR_BYTES])


def _query(data: bytes, model: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pixels, q = copies._query_input(data, LIMITS, model)
    return pixels, q.zoomed_out, q.features.descriptors


def _pack(parts: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(p) for p in parts])
    return (np.concatenate(parts) if len(parts) else np.zeros((0, width), np.uint8)).reshape(-1, width), offsets


def prepare(model: ModelSpec, distractors: int) -> dict:
    """Vectors and features of the gallery (originals + distractors) and of every edited query, cached."""
    images = ce.gallery(SHARED_DATA / "photos", LFW, VIDEO, 1, 25)
    sources = [g for g in images if g.source != "video" and copy_distractors.in_distractor_half(g.digest)]
    originals = [g for g in images if g.source == "video" or not copy_distractors.in_distractor_half(g.digest)]
    paths = copy_distractors.make([g.data for g in sources], distractors, log)
    queries = ce.queries(originals, "dev", 40)
    key = hashlib.sha1("\n".join([g.digest for g in originals] + [str(distractors), model.version,
                                  hashlib.sha256(model.onnx_path.read_bytes()).hexdigest(),
                                  str(copies.STORED_FEATURES), str(copies.QUERY_FEATURES)]).encode()).hexdigest()[:12]
    cache = copy_distractors.cache_dir() / "copy_candidates" / f"{key}.npz"
    if cache.is_file():
        with np.load(cache) as npz:
            return dict(npz)
    log(f"embedding and extracting {len(originals) + len(paths)} gallery images and "
        f"{len(queries) * len(copy_edits.ALL_EDITS)} queries into {cache}")
    regions = Regions(model)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        gallery_data = [g.data for g in originals] + [p.read_bytes() for p in paths]
        stored = list(pool.map(lambda d: _stored(d, model), gallery_data))
        log(f"  gallery decoded and its features extracted in {time.perf_counter() - started:.0f}s")
        edited = [(n, e, copy_edits.edited_bytes(g.data, e)) for n, g in enumerate(queries) for e in copy_edits.ALL_EDITS]
        asked = list(pool.map(lambda x: _query(x[2], model), edited))
    vectors = regions([s[0] for s in stored])
    query_vectors = regions([a[0] for a in asked])[:, 0]
    zoomed = regions([a[1] for a in asked])[:, 0]
    log(f"  embedded in {time.perf_counter() - started:.0f}s")
    index_of = {g.digest: i for i, g in enumerate(originals)}
    points, point_offsets = _pack([s[1] for s in stored], 2)
    descriptors, _ = _pack([s[2] for s in stored], copies.STORED_DESCRIPTOR_BYTES)
    query_descriptors, query_offsets = _pack([a[2] for a in asked], 32)
    data = {"vectors": vectors.astype(np.float16), "points": points.astype(np.float32), "offsets": point_offsets,
            "descriptors": descriptors, "query_vectors": query_vectors, "zoomed": zoomed,
            "query_descriptors": query_descriptors, "query_offsets": query_offsets,
            "target": np.array([index_of[queries[n].digest] for n, _, _ in edited]),
            "edit": np.array([e for _, e, _ in edited]),
            "source": np.array([queries[n].source for n, _, _ in edited]),
            "dev": np.array([copy_edits.dev_split(g.digest) for g in originals]),
            "originals": len(originals)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache)
    return data


def _pad16(descriptors: np.ndarray) -> np.ndarray:
    return copies.padded_codes(descriptors, copies.STORED_DESCRIPTOR_BYTES)


def learn(descriptors: np.ndarray, words: int, sample: int, seed: int = 1) -> np.ndarray:
    """Binary centroids (uint8 [words, 16], the 10 descriptor bytes zero-padded): k-means on the bits."""
    import faiss

    rng = np.random.default_rng(seed)
    chosen = descriptors[rng.permutation(len(descriptors))[:sample]]
    bits = np.unpackbits(chosen[:, :copies.STORED_DESCRIPTOR_BYTES], axis=1).astype(np.float32)
    kmeans = faiss.Kmeans(bits.shape[1], words, niter=15, seed=seed, verbose=False)
    kmeans.train(bits)
    return _pad16(np.packbits(kmeans.centroids > 0.5, axis=1))


def nearest(descriptors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    import faiss

    if not len(descriptors):
        return np.zeros(0, np.int64)
    return faiss.knn_hamming(_pad16(descriptors), centroids, 1)[1][:, 0]


class Vocabulary:
    """Visual words of binary descriptors: flat (every descriptor compared with every word) or, with
    `branches`, a two-level tree (branches x branches words: the nearest of `branches` top centroids,
    then the nearest of its own leaves; about 2 x branches comparisons instead of branches^2)."""

    def __init__(self, descriptors: np.ndarray, words: int, sample: int, branches: int = 0):
        if not branches:
            self.top, self.leaves = learn(descriptors, words, sample), []
            self.size = len(self.top)
            return
        descriptors = descriptors[np.random.default_rng(1).permutation(len(descriptors))[:sample]]
        self.top = learn(descriptors, branches, len(descriptors))
        owner = nearest(descriptors, self.top)
        self.leaves = []
        for c in range(branches):
            members = descriptors[owner == c]
            k = min(branches, len(members) // 4)
            self.leaves.append(learn(members, k, len(members)) if k > 1 else self.top[c:c + 1])
        self.base = np.cumsum([0] + [len(leaf) for leaf in self.leaves])
        self.size = int(self.base[-1])

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        first = nearest(descriptors, self.top)
        if not self.leaves or not len(descriptors):
            return first
        out = np.empty(len(descriptors), np.int64)
        for c in np.unique(first):
            mine = first == c
            out[mine] = self.base[c] + nearest(descriptors[mine], self.leaves[c])
        return out


def grid_subset(points: np.ndarray, keep: int) -> np.ndarray:
    """Indices of `keep` keypoints chosen as the server chooses its stored ones (copies.grid_round_robin),
    over the keypoints' extent (the image's size is not stored), in their stored order within a cell."""
    if len(points) <= keep:
        return np.arange(len(points))
    lo, hi = points.min(0), points.max(0) + 1e-3
    return copies.grid_round_robin(points, (lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]), np.zeros(len(points)), keep)


class Words:
    """An inverted index of the items' words, scored by shared words' idf."""

    def __init__(self, item_words: list[np.ndarray], idf: np.ndarray):
        self.idf = idf
        self.n = len(item_words)
        flat = np.concatenate(item_words)
        owner = np.repeat(np.arange(self.n), [len(w) for w in item_words])
        order = np.argsort(flat, kind="stable")
        self.items = owner[order]
        self.starts = np.searchsorted(flat[order], np.arange(len(idf) + 1))
        self.words_per_item = float(np.mean([len(w) for w in item_words]))

    def scores(self, query_words: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n, np.float32)
        for w in np.unique(query_words):
            out[self.items[self.starts[w]:self.starts[w + 1]]] += self.idf[w]
        return out


def top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def interleave(a: np.ndarray, b: np.ndarray, k: int) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for pair in zip(a, b):
        for x in pair:
            if int(x) not in seen:
                seen.add(int(x))
                out.append(int(x))
    return out[:k]


def measure(data: dict, vocab: Vocabulary, idf: np.ndarray, keypoints: tuple[int, ...], sizes: list[int]) -> dict:
    vectors = data["vectors"].astype(np.float32)
    rows = vectors[:, 0]
    views = vectors[:, 1:, :VIEW_DIMENSION]
    views /= np.linalg.norm(views, axis=2, keepdims=True)
    scale = float(np.sqrt(VIEW_DIMENSION / rows.shape[1]))
    offsets = data["offsets"]
    stored_words = [vocab.assign(data["descriptors"][offsets[i]:offsets[i + 1]]) for i in range(len(rows))]
    indexes = {}
    for keep in keypoints:
        item_words = [np.unique(w[grid_subset(data["points"][offsets[i]:offsets[i + 1]], keep)]) if len(w) else w
                      for i, w in enumerate(stored_words)]
        indexes[keep] = Words(item_words, idf)
    q_off = data["query_offsets"]
    deepest = max(DEPTHS)
    found: dict[tuple, list[bool]] = {}
    for q in range(len(data["target"])):
        target, edit = int(data["target"][q]), str(data["edit"][q])
        qv, zv = data["query_vectors"][q], data["zoomed"][q]
        query_words = vocab.assign(data["query_descriptors"][q_off[q]:q_off[q + 1]])
        lead = qv[:VIEW_DIMENSION] / np.linalg.norm(qv[:VIEW_DIMENSION])
        zlead = zv[:VIEW_DIMENSION] / np.linalg.norm(zv[:VIEW_DIMENSION])
        all_rows = rows @ qv  # an item's scores do not depend on the gallery's size: sliced below
        all_served = np.maximum(all_rows, (views @ lead).max(1) * scale)
        all_zoom = (views @ zlead).max(1)
        all_words = {keep: index.scores(query_words) for keep, index in indexes.items()}
        for n in sizes:
            lists = {"rows": top(all_rows[:n], deepest), "served": top(all_served[:n], deepest)}
            zoom = set(top(all_zoom[:n], ZOOM).tolist())
            for keep in indexes:
                lists[f"words{keep}"] = top(all_words[keep][:n], deepest)
            for depth in DEPTHS:
                def hit(name: str, candidates) -> None:
                    found.setdefault((n, name, depth, edit, str(data["source"][q])), []).append(target in candidates)
                hit("served", set(lists["served"][:depth].tolist()))
                hit("served + zoomed out", set(lists["served"][:depth].tolist()) | zoom)
                hit("rows", set(lists["rows"][:depth].tolist()))
                for keep in indexes:
                    w = lists[f"words{keep}"]
                    hit(f"words ({keep} keypoints)", set(w[:depth].tolist()))
                    hit(f"rows ∪ words ({keep})", set(interleave(lists["rows"], w, depth)))
                    hit(f"served ∪ words ({keep})", set(interleave(lists["served"], w, depth)))
                    hit(f"served ∪ words ({keep}) + zoomed out", set(interleave(lists["served"], w, depth)) | zoom)
    words_per_item = {keep: index.words_per_item for keep, index in indexes.items()}
    return {"found": found, "words_per_item": words_per_item, "assign_ms": assign_cost(data, vocab)}


def assign_cost(data: dict, vocab: Vocabulary, count: int = 200) -> dict:
    """Median ms to find the words of a query's descriptors and of an item's 160 (one thread): what
    words would add to a search and to indexing."""
    import faiss

    faiss.omp_set_num_threads(1)
    q_off, offsets = data["query_offsets"], data["offsets"]
    out = {}
    for name, spans in (("query", [(q_off[q], q_off[q + 1], data["query_descriptors"]) for q in range(count)]),
                        ("item_160", [(offsets[i], offsets[i] + 160, data["descriptors"]) for i in range(count)])):
        times = []
        for a, b, source in spans:
            t = time.perf_counter()
            vocab.assign(source[a:b])
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(float(np.median(times)), 2)
    faiss.omp_set_num_threads(2)
    return out


def summarise(found: dict, sizes: list[int]) -> list[dict]:
    out = []
    names = sorted({k[1] for k in found}, key=lambda s: (not s.startswith("served"), "words" in s, s))
    for n in sizes:
        for name in names:
            for depth in DEPTHS:
                cells = {k: v for k, v in found.items() if k[0] == n and k[1] == name and k[2] == depth}
                by_edit: dict[str, list[bool]] = {}
                for k, v in cells.items():
                    by_edit.setdefault(k[3], []).extend(v)
                crop50 = {src: float(np.mean(v)) for k, v in cells.items() if k[3] == "crop50" for src in [k[4]]}
                out.append({"items": n, "source": name, "depth": depth,
                            "mean_over_edits": float(np.mean([np.mean(v) for v in by_edit.values()])),
                            "crop50": float(np.mean(by_edit["crop50"])),
                            "crop70+jpeg15": float(np.mean(by_edit["crop70+jpeg15"])),
                            "grey+border": float(np.mean(by_edit["grey+border"])),
                            "crop50_by_source": crop50})
    return out


def markdown(result: dict) -> str:
    lines = [f"# Copy-detection candidate sources at {result['distractors']:,} distractors ({result['time']})", "",
             "`benchmarks/bench_copy_candidates.py`: how often an edited copy's original is among the first N "
             "candidates of each source (recall, not P@1: the server then verifies them). Development split: "
             f"{result['queries']} queries ({result['originals_queried']} originals x 17 edits). Vocabulary: "
             f"{result['vocabulary']['words']:,} words ({'a tree of ' + str(result['vocabulary']['tree']) + ' x ' + str(result['vocabulary']['tree']) if result['vocabulary']['tree'] else 'flat'}) learned from {result['vocabulary']['sample']:,} descriptors "
             "of the gallery's report-half originals; idf from the same images.", "",
             "| items | source | bytes an item for candidates | N | mean over edits | crop50 (photos / LFW / frames) "
             "| crop70+jpeg15 | grey+border |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if r["depth"] != 48 and not (r["depth"] in (16, 32) and r["items"] == max(result["sizes"])):
            continue
        by = r["crop50_by_source"]
        lines.append(f"| {r['items']:,} | {r['source']} | {result['bytes'].get(r['source'], '')} | {r['depth']} "
                     f"| {r['mean_over_edits']:.3f} | {r['crop50']:.3f} ({by.get('photos', 0):.2f} / "
                     f"{by.get('lfw', 0):.2f} / {by.get('video', 0):.2f}) | {r['crop70+jpeg15']:.3f} "
                     f"| {r['grey+border']:.3f} |")
    if result.get("milvus_lite"):
        lines += ["", f"In Milvus Lite (the words of 160 keypoints as sparse vectors, SPARSE_INVERTED_INDEX, inner "
                  f"product; queries idf-weighted, top 48): {result['milvus_lite']}."]
    lines += ["", f"Words per item (distinct): {result['words_per_item']}. Finding the words, ms (median, one "
              f"thread): {result['assign_ms']}. Made in {result['seconds']:.0f} s "
              f"on {result['machine']['cpus']} CPUs.", ""]
    return "\n".join(lines)


def in_milvus_lite(data: dict, vocab: Vocabulary, idf: np.ndarray, keep: int = 160, count: int = 200) -> dict:
    """The words of `keep` keypoints of every item as a Milvus Lite sparse vector (SPARSE_INVERTED_INDEX,
    inner product), searched with the 50% crops' words (idf-weighted) and `count` other queries: how
    long Lite takes, and that its ranking finds what the offline scores find."""
    import tempfile

    from pymilvus import DataType, MilvusClient

    offsets = data["offsets"]
    rows = []
    for i in range(len(data["vectors"])):
        points, descriptors = data["points"][offsets[i]:offsets[i + 1]], data["descriptors"][offsets[i]:offsets[i + 1]]
        words = np.unique(vocab.assign(descriptors[grid_subset(points, keep)])) if len(descriptors) else []
        rows.append({"id": f"item{i:06d}", "words": {int(w): 1.0 for w in words} or {0: 0.0}})
    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(str(Path(tmp) / "words.db"))
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
        schema.add_field("words", DataType.SPARSE_FLOAT_VECTOR)
        params = client.prepare_index_params()
        params.add_index("words", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        client.create_collection("words", schema=schema, index_params=params)
        started = time.perf_counter()
        for at in range(0, len(rows), 2000):
            client.insert("words", rows[at:at + 2000])
        inserted = time.perf_counter() - started
        q_off = data["query_offsets"]
        crops = [q for q in range(len(data["edit"])) if data["edit"][q] == "crop50"]
        times, found = [], 0
        for q, crop in [(q, True) for q in crops] + [(q, False) for q in range(count)]:
            words = np.unique(vocab.assign(data["query_descriptors"][q_off[q]:q_off[q + 1]]))
            query = {int(w): float(idf[w]) for w in words if idf[w] > 0}
            t = time.perf_counter()
            hits = client.search("words", data=[query], anns_field="words", limit=max(DEPTHS),
                                 search_params={"metric_type": "IP"})[0]
            times.append((time.perf_counter() - t) * 1000)
            if crop:
                found += f"item{int(data['target'][q]):06d}" in {h["id"] for h in hits}
        client.close()
    return {"items": len(rows), "insert_s": round(inserted, 1), "search_ms_p50": round(float(np.median(times)), 2),
            "search_ms_p90": round(float(np.percentile(times, 90)), 2), "searches": len(times),
            "crop50_original_among_48": round(found / len(crops), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distractors", type=int, default=20000)
    ap.add_argument("--words", type=int, default=16384, help="vocabulary size")
    ap.add_argument("--sample", type=int, default=250000, help="descriptors the vocabulary is learned from")
    ap.add_argument("--word-keypoints", default="160,280", help="keypoints of an item that give its words")
    ap.add_argument("--tree", type=int, default=0,
                    help="a two-level vocabulary of TREE x TREE words instead of --words flat ones "
                         "(results: copy_candidates_tree.{json,md})")
    ap.add_argument("--milvus-lite", action="store_true",
                    help="also store the words of 160 keypoints as Milvus Lite sparse vectors and time their search")
    args = ap.parse_args()
    started = time.perf_counter()
    model = ModelSpec.from_build_info(ROOT / "model_repository" / "efficientnet_lite0")
    data = prepare(model, args.distractors)
    n_orig = int(data["originals"])
    offsets = data["offsets"]
    training = [i for i in range(n_orig) if not data["dev"][i]]  # report-half originals: never a query's
    train_desc = np.concatenate([data["descriptors"][offsets[i]:offsets[i + 1]] for i in training])
    log(f"learning {args.tree ** 2 if args.tree else args.words} words ({'a tree' if args.tree else 'flat'}) from {min(args.sample, len(train_desc))} of {len(train_desc)} descriptors")
    vocab = Vocabulary(train_desc, args.words, args.sample, args.tree)
    df = np.zeros(vocab.size)
    for i in training:
        df[np.unique(vocab.assign(data["descriptors"][offsets[i]:offsets[i + 1]]))] += 1
    idf = np.log((len(training) + 1) / (df + 1)).astype(np.float32)
    sizes = [n_orig, 3 * n_orig, len(data["vectors"])]
    keypoints = tuple(int(k) for k in args.word_keypoints.split(","))
    log("measuring")
    measured = measure(data, vocab, idf, keypoints, sizes)
    rows = summarise(measured["found"], sizes)
    dims = data["vectors"].shape[2]
    bytes_ = {"served": f"{4 * dims + 4 * 4 * VIEW_DIMENSION:,} (float32)",
              "served + zoomed out": f"{4 * dims + 4 * 4 * VIEW_DIMENSION:,} (float32)", "rows": f"{4 * dims} (float32)"}
    for keep, per in measured["words_per_item"].items():
        words = round(per * WORD_BYTES)
        bytes_[f"words ({keep} keypoints)"] = f"{words:,}"
        bytes_[f"rows ∪ words ({keep})"] = f"{4 * dims + words:,}"
        bytes_[f"served ∪ words ({keep})"] = f"{4 * dims + 16 * VIEW_DIMENSION + words:,}"
        bytes_[f"served ∪ words ({keep}) + zoomed out"] = bytes_[f"served ∪ words ({keep})"]
    result = {"time": now_utc(), "machine": machine(), "distractors": args.distractors, "sizes": sizes,
              "queries": len(data["target"]), "originals_queried": len(set(data["target"].tolist())),
              "vocabulary": {"words": vocab.size, "tree": args.tree or None, "sample": min(args.sample, len(train_desc)),
                             "seed": 1},
              "words_per_item": {str(k): round(v, 1) for k, v in measured["words_per_item"].items()},
              "bytes": bytes_, "rows": rows, "assign_ms": measured["assign_ms"],
              "milvus_lite": in_milvus_lite(data, vocab, idf) if args.milvus_lite else None,
              "seconds": time.perf_counter() - started}
    write_results("copy_candidates_tree" if args.tree else "copy_candidates", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
