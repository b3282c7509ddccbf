"""The `revsearch` command line: serve, index, import, search, get, ls, update, delete, embed, index-videos,
search-video, info, collections, drop, eval, loadtest.

Every command but `serve` reaches the server through one Security (TLS, mutual TLS, API key) built from the
global --tls* and --api-key flags, which default from the REVSEARCH_TLS* and REVSEARCH_API_KEY variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from .client import (ENV_API_KEY, ENV_TLS, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_SERVER_NAME, ImageInput,
                     SearchClient, Security, parse_flag, struct_to_dict)
from .errors import NotFoundError, RevsearchClientError, UnauthenticatedError
from .names import (CROP_MODES, INDEX_BACKENDS, INFERENCE_BACKENDS, ITEM_STATUSES, MEDIA_TYPES, RANKINGS,
                    SAMPLING_MODES, VECTOR_INDEX_TYPES)
from .names import name_of
from .v1 import search_service_pb2 as pb

DEFAULT_EXTS = "jpg,jpeg,png,webp,bmp"
VIDEO_EXTS = "mp4,mov,avi,mkv,webm,m4v"
out = Console()
err = Console(stderr=True)


def find_images(paths: list[str], recursive: bool, exts: str) -> list[Path]:
    wanted = {"." + e.strip().lower().lstrip(".") for e in exts.split(",") if e.strip()}
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            candidates = p.rglob("*") if recursive else p.iterdir()
            found.extend(sorted(c for c in candidates if c.is_file() and c.suffix.lower() in wanted))
        elif p.is_file():
            found.append(p)
        else:
            err.print(f"[yellow]skipping {p}: no such file or directory[/]")
    return found


def warn_untrained(model: str) -> None:
    err.print(f"[bold red]WARNING: model {model} is UNTRAINED (built without pretrained weights); "
              "these results are not meaningful.[/]")


def vector_index_from_args(args) -> dict | None:
    """The --vector-index flags as create_collection's vector_index (None: the server's default)."""
    options = {k: getattr(args, k) for k in ("hnsw_m", "hnsw_ef_construction", "ivf_nlist")
               if getattr(args, k) is not None}
    if args.default_search_breadth is not None:
        options["search_breadth"] = args.default_search_breadth
    if args.vector_index:
        options["type"] = args.vector_index
    return options or None


FILTER_HELP = ('only items that match, AIP-160 over metadata.<key>, uri, id, create_time: '
               'e.g. \'metadata.tenant = "acme" AND metadata.year >= 2020\'')


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", default="", help=FILTER_HELP)
    parser.add_argument("--min-score", type=float, help="leave out hits scoring below this cosine (-1..1)")


def add_vector_index_flags(parser: argparse.ArgumentParser) -> None:
    """The vector index of a collection the command creates (GetServerInfo lists what the store builds)."""
    g = parser.add_argument_group("vector index of a new collection (default: the store's; `revsearch info`)")
    g.add_argument("--vector-index", type=str.upper, choices=[t for t in VECTOR_INDEX_TYPES if t != "AUTOINDEX"],
                   help="FLAT (exact), HNSW, IVF_FLAT, IVF_SQ8 or DISKANN (a Milvus server builds them all, Lite FLAT)")
    g.add_argument("--hnsw-m", type=int, help="HNSW edges per node, 4..64 (16)")
    g.add_argument("--hnsw-ef-construction", type=int, help="HNSW build breadth, 8..512 (200)")
    g.add_argument("--ivf-nlist", type=int, help="IVF clusters, 1..65536 (1024)")
    g.add_argument("--default-search-breadth", type=int,
                   help="the collection's search breadth: HNSW ef (128), IVF nprobe (16), DISKANN search_list (100)")
    g.add_argument("--filter-key", action="append", metavar="KEY",
                   help="a top-level metadata key whose string values get a column of their own, for faster "
                        "filters on it (up to 8; repeatable)")


def cmd_index(client: SearchClient, args) -> int:
    files = find_images(args.paths, args.recursive, args.ext)
    if not files:
        err.print("no images found (check the paths, --recursive and --ext)")
        return 2
    created = client.create_collection(args.collection, model=args.model, crop_mode=args.crop,
                                       index_backend=args.index, exist_ok=True,
                                       vector_index=vector_index_from_args(args), filter_keys=args.filter_key or ())
    coll = created.collection
    if created.created:
        err.print(f"created collection [bold]{coll.name}[/] (model {coll.model}, crop "
                  f"{name_of(CROP_MODES, coll.crop_mode, 'none')}, "
                  f"index {name_of(INDEX_BACKENDS, coll.index_backend, 'milvus')})")
    if not coll.model_trained:
        warn_untrained(coll.model)
    counts = {"indexed": 0, "duplicate": 0, "no_face": 0, "failed": 0}
    failures: list[tuple[str, str]] = []

    def items():
        for f in files:
            try:
                yield ImageInput(image=f.read_bytes(), uri=str(f.resolve()))
            except OSError as exc:
                failures.append((str(f), f"unreadable: {exc}"))

    with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), console=err, disable=args.quiet) as progress:
        task = progress.add_task("index", total=len(files), rate="")
        for resp in client.index_images(args.collection, items()):
            name = name_of(ITEM_STATUSES, resp.status, "unspecified")
            counts[name] = counts.get(name, 0) + 1
            if resp.status == pb.ITEM_STATUS_FAILED:
                failures.append((resp.uri, f"{resp.error.code_name}: {resp.error.message}"))
            progress.update(task, advance=1)
    counts["failed"] = len(failures)
    summary = (f"indexed {counts['indexed']}, skipped {counts['duplicate']} (already indexed), "
               + (f"no face {counts['no_face']}, " if counts["no_face"] else "")
               + f"failed {counts['failed']} into {args.collection}")
    if failures:
        table = Table("uri", "reason", title="failures", title_justify="left")
        for uri, reason in failures[:50]:
            table.add_row(uri, reason)
        err.print(table)
        if len(failures) > 50:
            err.print(f"... and {len(failures) - 50} more")
    if args.json:
        print(json.dumps({**counts, "collection": args.collection,
                          "failures": [{"uri": u, "reason": r} for u, r in failures]}))
    else:
        out.print(summary)
    return 1 if failures else 0


def cmd_import(client: SearchClient, args) -> int:
    """Vectors computed elsewhere (.npz or Parquet: revsearch/vector_files.py) into a collection."""
    from .vector_files import open_vectors

    if not 1 <= args.per_message <= 10_000:
        err.print(f"[bold red]error:[/] --per-message is {args.per_message}; use 1..10000")
        return 2
    try:
        source = open_vectors(args.file)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    model, version = args.model or source.model, args.model_version or source.model_version
    if args.create:
        if not model:
            err.print("[bold red]error:[/] --create needs the model: pass --model (the file does not say)")
            return 2
        created = client.create_collection(args.collection, model=model, exist_ok=True,
                                           vector_index=vector_index_from_args(args),
                                           filter_keys=args.filter_key or ())
        if created.created:
            err.print(f"created collection [bold]{args.collection}[/] (model {created.collection.model}, "
                      f"{created.collection.dimension}-d, {created.collection.vector_index_detail})", highlight=False)
    if not model or not version:
        coll = client.describe_collection(args.collection)
        err.print(f"[bold red]error:[/] {args.file} does not say which model computed its vectors: pass --model and "
                  f"--model-version (collection {args.collection} holds {coll.model} version {coll.model_version}, "
                  f"{coll.dimension}-d)", highlight=False)
        return 2
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  disable=args.quiet) as progress:
        task = progress.add_task("import", total=source.count)
        resp = client.import_vectors(args.collection, source.items(), model=model, model_version=version,
                                     per_message=args.per_message, on_sent=lambda n: progress.update(task, advance=n))
    if resp.failures:
        table = Table("item", "id", "reason", title="failures", title_justify="left")
        for f in resp.failures[:50]:
            table.add_row(str(f.item_index), f.id, f"{f.error.code_name}: {f.error.message}")
        err.print(table)
        if resp.failed > 50:
            err.print(f"... and {resp.failed - 50} more")
    if args.json:
        print(json.dumps({"collection": args.collection, "received": resp.received, "imported": resp.imported,
                          "existing": resp.existing, "failed": resp.failed, "note": resp.note,
                          "failures": [{"item": f.item_index, "id": f.id, "code": f.error.code_name,
                                        "message": f.error.message} for f in resp.failures]}))
    else:
        out.print(f"imported {resp.imported}, skipped {resp.existing} (already there), failed {resp.failed} of "
                  f"{resp.received} into {args.collection}", highlight=False)
        if resp.note:
            err.print(f"note: {resp.note}", highlight=False)
    return 1 if resp.failed else 0


def cmd_search(client: SearchClient, args) -> int:
    query = Path(args.image).read_bytes()
    if client.describe_collection(args.collection).media_type == pb.MEDIA_TYPE_VIDEO:
        videos = client.search_videos(args.collection, image=query, top_k=args.top_k, filter=args.filter,
                                      min_score=args.min_score)
        return show_video_hits(args, args.image, videos, query_image=query)
    resp = client.search(args.collection, image=query, top_k=args.top_k,
                         copy_detection=False if args.no_copy_detection else None,
                         search_breadth=args.search_breadth, filter=args.filter, min_score=args.min_score)
    backend = name_of(INFERENCE_BACKENDS, resp.inference_backend)
    if not resp.model_trained:
        warn_untrained(resp.model)
    hits = [{"rank": h.rank, "score": h.score, "id": h.id, "uri": h.uri, "metadata": struct_to_dict(h.metadata),
             "matched_keypoints": h.matched_keypoints} for h in resp.hits]
    if args.json:
        print(json.dumps({"query": args.image, "collection": args.collection, "model": resp.model,
                          "model_trained": resp.model_trained, "inference_backend": backend, "hits": hits},
                         indent=2))
    else:
        from .contact_sheet import is_verified_copy

        copies = any(h["matched_keypoints"] for h in hits)  # the column only where copy detection verified
        table = Table("rank", "score", *(["copy"] if copies else []), "id", "uri",
                      title=f"{args.collection}: top {len(hits)} for {args.image}",
                      caption=f"model {resp.model}{'' if resp.model_trained else ' (UNTRAINED)'}, "
                              f"inference: {backend}" + (", copy: verified by local features (matched points)"
                                                         if copies else ""))
        for h in hits:
            mark = [f"[green]yes ({h['matched_keypoints']})[/]" if is_verified_copy(h["matched_keypoints"]) else ""]
            table.add_row(str(h["rank"]), f"{h['score']:.4f}", *(mark if copies else []), h["id"], h["uri"])
        out.print(table)
    if args.out:
        from .contact_sheet import write

        title = f"{Path(args.image).name} in {args.collection} ({resp.model}" \
                f"{'' if resp.model_trained else ', UNTRAINED'})"
        path = write(args.out, query, [(h["rank"], h["score"], h["uri"], h["matched_keypoints"]) for h in hits], title)
        err.print(f"contact sheet written to {path}")
    return 0


def find_videos(paths: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for the video extensions."""
    return find_images(paths, recursive=True, exts=VIDEO_EXTS)


def _box_dict(b) -> dict:
    return {"x_min": round(b.x_min, 1), "y_min": round(b.y_min, 1), "x_max": round(b.x_max, 1),
            "y_max": round(b.y_max, 1), "confidence": round(b.confidence, 4)}


def _video_collection(client: SearchClient, args) -> tuple[pb.Collection | None, int]:
    """The video collection to index into (created with --create when missing), or None and the exit code."""
    try:
        coll = client.describe_collection(args.collection)
    except NotFoundError:  # created like `index` creates an image collection
        sampling = {k: v for k, v in (("frames", args.frames), ("mode", args.mode)) if v is not None}
        created = client.create_collection(args.collection, model=args.model, crop_mode=args.crop,
                                           media_type="video", video_sampling=sampling or None, exist_ok=True)
        coll = created.collection
        if created.created:
            err.print(f"created video collection [bold]{coll.name}[/] (model {coll.model}, crop "
                      f"{name_of(CROP_MODES, coll.crop_mode, 'none')}, {coll.video_sampling.frames} frames "
                      f"{name_of(SAMPLING_MODES, coll.video_sampling.mode, 'uniform')} per video)")
    else:
        if coll.media_type == pb.MEDIA_TYPE_VIDEO and (
                (args.model and args.model != coll.model)
                or (args.crop and CROP_MODES[args.crop] != coll.crop_mode)):
            err.print(f"[yellow]{coll.name} exists with model {coll.model}, crop "
                      f"{name_of(CROP_MODES, coll.crop_mode, 'none')}: "
                      "--model and --crop apply only to a new collection[/]")
    if coll.media_type != pb.MEDIA_TYPE_VIDEO:
        err.print(f"[bold red]error:[/] collection {coll.name!r} holds images; index images with `revsearch index`, "
                  "or name a video collection (--create makes one)")
        return None, 2
    return coll, 0


def cmd_index_videos(client: SearchClient, args) -> int:
    from rich.markup import escape

    files = find_videos(args.paths)
    if not files:
        err.print(f"no videos found (folders are searched for .{VIDEO_EXTS.replace(',', ' .')})")
        return 2
    coll, rc = _video_collection(client, args)
    if coll is None:
        return rc
    if not coll.model_trained:
        warn_untrained(coll.model)
    counts = {"indexed": 0, "duplicate": 0, "no_face": 0, "failed": 0}
    videos: list[dict] = []
    with Progress(TextColumn("indexing videos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=args.quiet) as progress:
        task = progress.add_task("index", total=len(files))
        for f in files:
            started = time.perf_counter()
            rec: dict = {"path": str(f), "uri": str(f.resolve())}
            try:
                resp = client.index_video(args.collection, f, uri=rec["uri"], frames=args.frames, mode=args.mode)
            except RevsearchClientError as exc:
                rec.update(status="failed", error={"code": exc.code.name, "message": exc.details})
            except OSError as exc:
                rec.update(status="failed", error={"code": "UNREADABLE", "message": str(exc)})
            else:
                rec.update(status=name_of(ITEM_STATUSES, resp.status, "unspecified"),
                           id=resp.id, sha256=resp.sha256)
                if resp.status != pb.ITEM_STATUS_DUPLICATE:  # a duplicate is not sampled again: no frames
                    rec.update(duration_s=round(resp.duration_s, 3), width=resp.width, height=resp.height,
                               faces=sum(len(fr.face_boxes) for fr in resp.frames), vector_count=resp.vector_count,
                               frames=[{"timestamp_s": round(fr.timestamp_s, 3), "faces": len(fr.face_boxes)}
                                       for fr in resp.frames])
            rec["seconds"] = round(time.perf_counter() - started, 3)
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            videos.append(rec)
            if not args.json:
                name, status = escape(f.name), rec["status"]
                if status == "failed":
                    out.print(f"[red]{'failed':<9}[/] {name}  {rec['error']['code']}: "
                              f"{escape(rec['error']['message'])}")
                elif status == "duplicate":
                    out.print(f"{'duplicate':<9} {name}  already indexed as {rec['id']}  ({rec['seconds']:.1f} s)")
                else:
                    colour = "green" if status == "indexed" else "yellow"
                    out.print(f"[{colour}]{status:<9}[/] {name}  {rec['duration_s']:.1f} s video, "
                              f"{len(rec['frames'])} frames, {rec['faces']} faces, id {rec['id']}  "
                              f"({rec['seconds']:.1f} s)")
            progress.update(task, advance=1)
    failures = [v for v in videos if v["status"] == "failed"]
    if failures:
        table = Table("video", "reason", title="failures", title_justify="left")
        for v in failures:
            table.add_row(v["path"], f"{v['error']['code']}: {v['error']['message']}")
        err.print(table)
    if args.json:
        print(json.dumps({"collection": args.collection, "counts": counts, "videos": videos}, indent=2))
    else:
        out.print(f"indexed {counts['indexed']}, skipped {counts['duplicate']} (already indexed), "
                  + (f"no face {counts['no_face']}, " if counts["no_face"] else "")
                  + f"failed {counts['failed']} into {args.collection}")
    return 1 if failures else 0


def video_hits_dict(resp: pb.SearchVideosResponse) -> dict:
    """A SearchVideosResponse as the JSON the CLI prints (and the video sheet draws)."""
    return {
        "model": resp.model, "model_trained": resp.model_trained,
        "ranking": name_of(RANKINGS, resp.ranking, "frames"),
        "inference_backend": name_of(INFERENCE_BACKENDS, resp.inference_backend),
        "query_frames": [{"timestamp_s": round(f.timestamp_s, 3), "face_boxes": [_box_dict(b) for b in f.face_boxes]}
                         for f in resp.query_frames],
        "hits": [{"rank": h.rank, "id": h.id, "uri": h.uri, "score": round(h.score, 6),
                  "matches": [{"timestamp_s": round(m.timestamp_s, 3), "score": round(m.score, 6),
                               "query_timestamp_s": round(m.query_timestamp_s, 3),
                               "face_box": _box_dict(m.face_box) if m.HasField("face_box") else None}
                              for m in h.matches],
                  "metadata": struct_to_dict(h.metadata), "sha256": h.sha256} for h in resp.hits],
    }


def show_video_hits(args, query_name: str, resp: pb.SearchVideosResponse, query_image: bytes | None = None,
                    query_clip: str | None = None) -> int:
    """Prints video hits as a table or JSON (args.json) and writes the video sheet (args.out)."""
    result = video_hits_dict(resp)
    hits = result["hits"]
    if not resp.model_trained:
        warn_untrained(resp.model)
    if args.json:
        print(json.dumps({"query": query_name, "collection": args.collection, **result}, indent=2))
    else:
        faces = sum(1 for f in result["query_frames"] if f["face_boxes"])
        table = Table("rank", "score", "id", "uri", "best matches",
                      title=f"{args.collection}: top {len(hits)} videos for {query_name}",
                      caption=f"model {resp.model}{'' if resp.model_trained else ' (UNTRAINED)'}, ranking "
                              f"{result['ranking']}, inference: {result['inference_backend']}, query frames "
                              f"{len(result['query_frames'])} ({faces} with a face)")
        for h in hits:
            table.add_row(str(h["rank"]), f"{h['score']:.4f}", h["id"], h["uri"],
                          ", ".join(f"t={m['timestamp_s']:.1f}s ({m['score']:.2f})" for m in h["matches"]))
        out.print(table)
    if args.out:
        from .video_sheet import write as write_video_sheet

        title = (f"{Path(query_name).name} in {args.collection} ({resp.model}"
                 f"{'' if resp.model_trained else ', UNTRAINED'}, ranking {result['ranking']})")
        path = write_video_sheet(args.out, hits, title, query_image=query_image, query_clip=query_clip,
                                 query_frames=result["query_frames"], query_name=Path(query_name).name)
        err.print(f"contact sheet written to {path}")
    return 0


def cmd_search_video(client: SearchClient, args) -> int:
    clip = Path(args.clip)
    if not clip.is_file():
        raise FileNotFoundError(f"no such file: {clip}")
    resp = client.search_videos(args.collection, clip=clip, top_k=args.top_k, ranking=args.ranking,
                                frames=args.frames, mode=args.mode, filter=args.filter, min_score=args.min_score)
    return show_video_hits(args, args.clip, resp, query_clip=str(clip))


def cmd_info(client: SearchClient, args) -> int:
    info = client.info()
    backend = name_of(INFERENCE_BACKENDS, info.inference_backend)
    if args.json:
        from google.protobuf import json_format

        print(json.dumps(json_format.MessageToDict(info, always_print_fields_with_no_presence=True), indent=2))
        return 0
    out.print(f"revsearch {info.version} at {args.server}")
    out.print(f"inference backend: [bold]{backend}[/] ({info.inference_detail}); fallback: {info.fallback}")
    out.print(f"vector store: {info.vector_store}; vector indexes: "
              + ", ".join(name_of(VECTOR_INDEX_TYPES, t) for t in info.vector_index_types)
              + f" (default {name_of(VECTOR_INDEX_TYPES, info.default_vector_index)})", highlight=False)
    out.print(f"default model: [bold]{info.default_model}[/]"
              + (f" ({info.default_model_reason})" if info.default_model_reason else ""), highlight=False)
    # The weights' sources go below the table: in one of its columns they squeezed the rest out of 80 columns.
    table = Table(Column("model", no_wrap=True), "version", "dim", "input", "precision",
                  Column("trained", no_wrap=True))
    for m in info.models:
        table.add_row(m.name + (" (default)" if m.name == info.default_model else ""), m.version, str(m.dimension),
                      f"{m.input_size}px", m.precision or "fp32", "yes" if m.trained else "[bold red]NO (UNTRAINED)[/]")
    out.print(table)
    for m in info.models:
        out.print(f"weights of {m.name}: {m.weights_source}", highlight=False)
    lim = info.limits
    out.print(f"limits: image {lim.max_image_bytes} bytes, {lim.max_image_pixels} pixels; top_k <= {lim.max_top_k}; "
              f"message {lim.max_receive_message_bytes} bytes")
    return 0


def cmd_collections(client: SearchClient, args) -> int:
    colls = client.list_collections()
    if args.json:
        print(json.dumps([{"name": c.name, "model": c.model, "dimension": c.dimension,
                           "crop_mode": name_of(CROP_MODES, c.crop_mode, "none"),
                           "index_backend": name_of(INDEX_BACKENDS, c.index_backend, "milvus"),
                           "items": c.item_count, "imported_items": c.imported_item_count,
                           "model_trained": c.model_trained,
                           "media_type": name_of(MEDIA_TYPES, c.media_type, "image"),
                           "vector_index": name_of(VECTOR_INDEX_TYPES, c.vector_index.type),
                           "vector_index_detail": c.vector_index_detail}
                          for c in colls], indent=2))
        return 0
    # The index backend and its vector index in one column: eight columns squeezed the names out of 80.
    table = Table(Column("name", no_wrap=True), "media", "model", "crop", "index", "items", "created")
    for c in colls:
        table.add_row(c.name, name_of(MEDIA_TYPES, c.media_type, "image"),
                      c.model + ("" if c.model_trained else " (UNTRAINED)"),
                      name_of(CROP_MODES, c.crop_mode, "none"),
                      f"{name_of(INDEX_BACKENDS, c.index_backend, 'milvus')} "
                      f"{name_of(VECTOR_INDEX_TYPES, c.vector_index.type, '')}".strip(), str(c.item_count),
                      c.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M"))
    out.print(table)
    return 0


def image_dict(image: pb.Image) -> dict:
    """An item as `get` and `ls` print it."""
    d = {"id": image.id, "uri": image.uri, "metadata": struct_to_dict(image.metadata), "sha256": image.sha256,
         "create_time": image.create_time.ToJsonString(), "imported": image.imported}
    if image.face_boxes:
        d["face_boxes"] = [_box_dict(b) for b in image.face_boxes]
    if image.HasField("vector"):
        d["vector"] = [round(v, 6) for v in image.vector.values]
    return d


def _items_table(images: list[dict], title: str) -> Table:
    table = Table("id", "uri", "metadata", "created", title=title)
    for d in images:
        table.add_row(d["id"], d["uri"], json.dumps(d["metadata"], ensure_ascii=False), d["create_time"])
    return table


def cmd_get(client: SearchClient, args) -> int:
    resp = client.get_images(args.collection, args.ids, include_vectors=args.vectors)
    images = [image_dict(i) for i in resp.images]
    if args.json:
        print(json.dumps({"images": images, "not_found_ids": list(resp.not_found_ids)}, indent=2, ensure_ascii=False))
    else:
        out.print(_items_table(images, f"{args.collection}: {len(images)} of {len(args.ids)}"))
        for i in resp.not_found_ids:
            err.print(f"[yellow]not found: {i}[/]")
    return 0 if not resp.not_found_ids else 1


def cmd_ls(client: SearchClient, args) -> int:
    """Every matching item (or the first --limit), paging on its own; JSON Lines with --json."""
    shown: list[dict] = []
    count = 0
    for image in client.iter_images(args.collection, filter=args.filter, page_size=args.page_size,
                                    include_vectors=args.vectors):
        d = image_dict(image)
        count += 1
        if args.json:
            print(json.dumps(d, ensure_ascii=False))
        else:
            shown.append(d)
        if args.limit and count >= args.limit:
            break
    if not args.json:
        title = f"{args.collection}: {len(shown)} items" + (f" matching {args.filter}" if args.filter else "")
        out.print(_items_table(shown, title))
    return 0


def _parse_value(text: str):
    """--set key=value: JSON when it parses (numbers, true, lists, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_update(client: SearchClient, args) -> int:
    """Sets and removes metadata keys of items (a merge: other keys stay), or replaces it with --replace."""
    metadata, paths = {}, []
    for assignment in args.set or []:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            err.print(f"[bold red]error:[/] --set takes key=value, got {assignment!r}")
            return 2
        node = metadata
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = _parse_value(value)
        paths.append(f"metadata.{key}")
    paths += [f"metadata.{key}" for key in args.unset or []]
    if args.replace:
        paths = ["metadata"]
    if args.uri is not None:
        paths.append("uri")
    if not paths:
        err.print("[bold red]error:[/] nothing to change: give --set, --unset, --replace or --uri")
        return 2
    resp = client.update_images(args.collection, [{"id": i, "metadata": metadata, "uri": args.uri or ""}
                                                  for i in args.ids], paths)
    results = [{"id": r.id, "status": pb.UpdateStatus.Name(r.status).removeprefix("UPDATE_STATUS_").lower(),
                **({"error": {"code": r.error.code_name, "message": r.error.message}} if r.HasField("error") else {}),
                **({"image": image_dict(r.image)} if r.HasField("image") else {})} for r in resp.results]
    if args.json:
        print(json.dumps({"results": results}, indent=2, ensure_ascii=False))
    else:
        for r in results:
            detail = json.dumps(r["image"]["metadata"], ensure_ascii=False) if "image" in r else \
                r.get("error", {}).get("message", "")
            out.print(f"{r['status']:<9} {r['id']}  {detail}", highlight=False)
    return 0 if all(r["status"] == "updated" for r in results) else 1


def cmd_delete(client: SearchClient, args) -> int:
    resp = client.delete(args.collection, args.ids)
    if args.json:
        print(json.dumps({"deleted_ids": list(resp.deleted_ids), "not_found_ids": list(resp.not_found_ids)}))
    else:
        for i in resp.deleted_ids:
            out.print(f"deleted   {i}", highlight=False)
        for i in resp.not_found_ids:
            out.print(f"not found {i}", highlight=False)
    return 0 if not resp.not_found_ids else 1


def cmd_embed(client: SearchClient, args) -> int:
    resp = client.embed(Path(args.image).read_bytes(), model=args.model, collection=args.collection)
    if not resp.model_trained:
        warn_untrained(resp.model)
    print(json.dumps({"model": resp.model, "model_version": resp.model_version, "model_trained": resp.model_trained,
                      "inference_backend": name_of(INFERENCE_BACKENDS, resp.inference_backend),
                      "dimension": len(resp.vector), "vector": [round(v, 7) for v in resp.vector]}))
    return 0


def cmd_drop(client: SearchClient, args) -> int:
    client.drop_collection(args.collection)
    out.print(f"dropped {args.collection}")
    return 0


def cmd_loadtest(client: SearchClient, args) -> int:
    import asyncio

    from .loadtest import load_images, run, write_outputs

    if args.sweep:
        try:
            levels = [int(x) for x in args.sweep.split(",") if x]
        except ValueError:
            err.print(f"[bold red]error:[/] --sweep takes comma-separated integers, got {args.sweep!r}")
            return 2
    else:
        levels = [args.concurrency]
    if not levels or min(levels) < 1:
        err.print("[bold red]error:[/] concurrency levels must be >= 1")
        return 2
    images = load_images(Path(args.images), args.max_images) if args.workload != "noop" else [("", b"")]
    duration = None if args.requests else args.duration
    table = Table("concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "client cpu ms/req",
                  title=f"revsearch loadtest: {args.workload} against {args.server}")

    def progress(step: dict) -> None:
        if not args.json:
            err.print(f"  concurrency {step['concurrency']:3d}: {step['throughput']:8.1f} req/s, "
                      f"p99 {step['p99_ms']:8.1f} ms, errors {step['errors'] or 0}")

    report = asyncio.run(run(args.server, args.workload, args.collection, images, levels, duration, args.requests,
                             warmup_s=args.warmup, timeout_s=args.request_timeout, progress=progress,
                             security=getattr(args, "security", None), model=args.model, filter=args.filter))
    for step in report["steps"]:
        errors = ", ".join(f"{k} {v}" for k, v in step["errors"].items()) or "0"
        table.add_row(str(step["concurrency"]), f"{step['throughput']:.1f}", f"{step['p50_ms']:.1f}",
                      f"{step['p95_ms']:.1f}", f"{step['p99_ms']:.1f}", f"{step['max_ms']:.1f}", errors,
                      f"{step['client_cpu_ms_per_request']:.2f}")
    if args.out:
        paths = write_outputs(report, Path(args.out))
        if not args.json:
            err.print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        out.print(table)
        if report["knee"]:
            k = report["knee"]
            out.print(f"knee: concurrency {k['concurrency']} ({k['throughput']:.1f} req/s, p99 {k['p99_ms']:.0f} ms)")
    return 1 if any(s["errors"] for s in report["steps"]) else 0


def cmd_eval(client: SearchClient, args) -> int:
    import asyncio

    if args.copies:
        return _eval_copies(args)
    if args.videos:
        from . import video_evaluation as ve

        benchmarks = [b.strip() for b in args.video_benchmarks.split(",") if b.strip()]
        unknown = [b for b in benchmarks if b not in ve.BENCHMARKS]
        if unknown or not benchmarks:
            err.print(f"unknown video benchmark(s) {', '.join(unknown)}; known: {', '.join(ve.BENCHMARKS)}")
            return 2
        report = ve.evaluate(args.server, benchmarks, lfw_dir=Path(args.dir) if args.dir else None,
                             video_dir=Path(args.video_dir) if args.video_dir else None,
                             identities=(ve.DEFAULT_IDENTITIES if args.video_identities is None
                                         else args.video_identities or None),
                             cache_dir=Path(args.video_cache) if args.video_cache else None,
                             concurrency=args.concurrency or ve.DEFAULT_CONCURRENCY, timeout=args.timeout,
                             progress=True, log=lambda message: err.print(message, highlight=False),
                             security=getattr(args, "security", None))
        if args.out:
            written = ve.write_report(report, Path(args.out))
            err.print(f"video report written to {args.out}/ ({len(written)} files)")
        if args.json:
            print(json.dumps(ve.summary_dict(report), indent=2))
        else:
            print(ve.markdown_table(report), end="")
        if any(not b.get("model_trained", True) for b in report["benchmarks"]):
            err.print("[bold red]WARNING: untrained models took part; their rows are not meaningful.[/]")
        return 0
    if not args.dir:
        err.print("give DIR, a folder in LFW layout (or --videos for the video benchmarks)")
        return 2

    from .evaluation import PIPELINES, evaluate, markdown_table, summary_dict, write_report

    names = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = [p for p in names if p not in PIPELINES]
    if unknown:
        err.print(f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(PIPELINES)}")
        return 2
    report = asyncio.run(evaluate(args.server, Path(args.dir), names, args.concurrency or 8, args.max_identities,
                                  args.timeout, security=getattr(args, "security", None)))
    if args.out:
        written = write_report(report, Path(args.out))
        err.print(f"report written to {args.out}/ ({len(written)} files)")
    if args.json:
        print(json.dumps(summary_dict(report), indent=2))
    else:
        out.print(markdown_table(report))
    if any(not p.get("model_trained", True) for p in report["pipelines"]):
        err.print("[bold red]WARNING: untrained models took part; their rows are not meaningful.[/]")
    return 0


def _eval_copies(args) -> int:
    import asyncio

    from . import copy_evaluation as ce

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if args.copy_distractors < 0:
        err.print(f"--copy-distractors must be 0 or more, not {args.copy_distractors}")
        return 2
    try:
        sizes = tuple(float(x) for x in args.copy_sizes.split(",") if x.strip())
    except ValueError:
        err.print(f"--copy-sizes takes multiples of the gallery size such as 3,10, not {args.copy_sizes!r}")
        return 2
    lfw = Path(args.copy_lfw) if args.copy_lfw else shared / "lfw"
    video = Path(args.video_dir) if args.video_dir else shared / "video"
    models = [m.strip() for m in args.copy_models.split(",") if m.strip()]
    report = asyncio.run(ce.evaluate(args.server, Path(args.copies), models, lfw=lfw if args.copy_lfw_step else None,
                                     video=video, lfw_step=args.copy_lfw_step or 1, per_source=args.copy_queries,
                                     split=args.copy_split, concurrency=args.concurrency or 2, timeout=args.timeout,
                                     security=getattr(args, "security", None),
                                     log=lambda message: err.print(message, highlight=False),
                                     edits=[e for e in args.copy_edits.split(",") if e] or None,
                                     reuse=args.copy_reuse, distractors=args.copy_distractors,
                                     sizes=sizes))
    if args.out:
        written = ce.write_report(report, Path(args.out))
        err.print(f"copy report written to {args.out}/ ({len(written)} files)")
    if args.json:
        print(json.dumps(ce.summary_dict(report), indent=2))
    else:
        print(ce.markdown_table(report), end="")
    return 0


def cmd_serve(argv: list[str]) -> int:
    """`revsearch serve ARGS`: the same as `revsearch-server ARGS`; the server parses its own flags."""
    try:
        from revsearch_server.app import main as server_main
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != "revsearch_server" and missing.split(".")[0] in ("revsearch", "revsearch_server"):
            raise  # one of our own modules is missing (a broken install): its traceback says more than we could
        # `pip install .` gives the client and the CLI only; the server's dependencies are its `server` extra.
        what = ("the revsearch server is not installed here" if missing == "revsearch_server" else
                f"the revsearch server's dependencies are not installed here (no module named {missing!r})")
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {what}; a plain install has the client and the CLI only: the server "
                  + escape('needs `pip install "revsearch[server]"` (from a checkout: `pip install ".[server]"`)'))
        return 2
    server_main(argv)
    return 0


def serve_main() -> int:
    """The `revsearch-server` command: a client-only install says what to install instead of a traceback."""
    return cmd_serve(sys.argv[1:])


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """The global --tls* and --api-key flags, defaulting from the same variables as Security.from_env."""
    env = os.environ
    group = parser.add_argument_group("security", "TLS, mutual TLS and the API key; each flag defaults from "
                                                  "its variable")
    # The raw variable is the default; security_from_args parses it, so that a bad value is a clear error
    # there rather than a traceback while the parser is being built.
    group.add_argument("--tls", action=argparse.BooleanOptionalAction, default=env.get(ENV_TLS) or None,
                       help=f"connect with TLS, checking the server against the system's root certificates or "
                            f"--tls-ca ({ENV_TLS}=1/true/yes/on); any other --tls-* flag implies it; --no-tls: "
                            f"plaintext, whatever the --tls-* flags and variables say")
    group.add_argument("--tls-ca", metavar="FILE", default=env.get(ENV_TLS_CA) or None,
                       help=f"PEM file of the CA that signed the server's certificate ({ENV_TLS_CA})")
    group.add_argument("--tls-cert", metavar="FILE", default=env.get(ENV_TLS_CERT) or None,
                       help=f"PEM certificate of this client, for mutual TLS; needs --tls-key ({ENV_TLS_CERT})")
    group.add_argument("--tls-key", metavar="FILE", default=env.get(ENV_TLS_KEY) or None,
                       help=f"PEM private key of --tls-cert, unencrypted ({ENV_TLS_KEY})")
    group.add_argument("--tls-server-name", metavar="NAME", default=env.get(ENV_TLS_SERVER_NAME) or None,
                       help=f"the name the server's certificate must carry, when it is not the host of --server "
                            f"({ENV_TLS_SERVER_NAME})")
    # Never %(default)s here: the help would print the key.
    group.add_argument("--api-key", metavar="KEY", default=env.get(ENV_API_KEY, "").strip() or None,
                       help=f"API key sent as `authorization: Bearer KEY` on every call ({ENV_API_KEY}; prefer "
                            f"the variable: other users of this machine can see command lines)")


def security_from_args(args: argparse.Namespace) -> Security:
    """One Security from the global flags (and, through their defaults, the environment); ValueError when a
    setting is wrong, naming the file or variable."""
    if args.tls is False:  # --no-tls: the one way to reach a plaintext server while REVSEARCH_TLS_CA & co. are set
        return Security(api_key=args.api_key)
    tls = parse_flag(args.tls, ENV_TLS) if isinstance(args.tls, str) else bool(args.tls)
    return Security(tls=tls, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                    server_name=args.tls_server_name, api_key=args.api_key)


def _is_local(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if not target.startswith("unix:") else "localhost"
    return host in ("localhost", "127.0.0.1", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revsearch", description="reverse image search over gRPC")
    parser.add_argument("--server", default=os.environ.get("REVSEARCH_SERVER", "localhost:50051"),
                        help="server address host:port (REVSEARCH_SERVER); dns:///host:port spreads calls over "
                             "every address of the name (replicas), round-robin")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    add_security_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    # Everything after `serve` (--help included) goes to the server's own parser untouched: no prefix
    # character that an argument starts with, so this parser sees no options, only one catch-all list.
    serve = sub.add_parser("serve", help="start the gRPC server (and a managed CPU Triton); "
                                         "`revsearch serve --help` lists its flags",
                           add_help=False, prefix_chars="\0")
    serve.add_argument("server_args", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="the flags of revsearch-server")
    serve.set_defaults(func=None)

    index = sub.add_parser("index", help="index image files or folders into a collection")
    index.add_argument("paths", nargs="+")
    index.add_argument("--collection", required=True)
    index.add_argument("--recursive", "-r", action="store_true")
    index.add_argument("--ext", default=DEFAULT_EXTS, help=f"extensions to take from folders ({DEFAULT_EXTS})")
    index.add_argument("--model", default="", help="model for a new collection (default: the server's, `revsearch info`)")
    index.add_argument("--crop", choices=list(CROP_MODES), default="none", help="crop mode for a new collection")
    index.add_argument("--index", choices=list(INDEX_BACKENDS), default="milvus",
                       help="index backend for a new collection")
    index.add_argument("--json", action="store_true", help="print the counts as JSON")
    index.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_vector_index_flags(index)
    index.set_defaults(func=cmd_index)

    imp = sub.add_parser("import", help="import precomputed vectors (.npz: ids, vectors; Parquet: id, vector) "
                                        "into a collection")
    imp.add_argument("file", help=".npz with arrays ids and vectors (optional uris, metadata, model, model_version), "
                                  "or .parquet with columns id and vector (optional uri, metadata)")
    imp.add_argument("--collection", required=True)
    imp.add_argument("--model", default="", help="the model the vectors come from (default: what the file says)")
    imp.add_argument("--model-version", default="", help="its version (default: what the file says)")
    imp.add_argument("--create", action="store_true", help="create the collection (of --model) when missing")
    imp.add_argument("--per-message", type=int, default=1000, help="items per stream message (1..10000)")
    imp.add_argument("--json", action="store_true", help="print the counts and failures as JSON")
    imp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_vector_index_flags(imp)
    imp.set_defaults(func=cmd_import)

    search = sub.add_parser("search", help="search a collection with a query image")
    search.add_argument("image")
    search.add_argument("--collection", required=True)
    search.add_argument("--top-k", type=int, default=20)
    search.add_argument("--json", action="store_true", help="print machine-readable hits")
    search.add_argument("--out", help="write a PNG contact sheet of the query and its hits")
    search.add_argument("--no-copy-detection", action="store_true",
                        help="rank by the global vector only (copy-detection collections re-rank edited copies "
                             "of an image by local features by default)")
    search.add_argument("--search-breadth", type=int,
                        help="this search's index breadth (HNSW ef, IVF nprobe; default: the collection's)")
    add_filter_flags(search)
    search.set_defaults(func=cmd_search)

    get = sub.add_parser("get", help="show stored items by id")
    get.add_argument("ids", nargs="+", metavar="ID")
    get.add_argument("--collection", required=True)
    get.add_argument("--vectors", action="store_true", help="include the stored vectors")
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=cmd_get)

    ls = sub.add_parser("ls", help="list a collection's items in id order (pages on its own)")
    ls.add_argument("--collection", required=True)
    ls.add_argument("--filter", default="", help=FILTER_HELP)
    ls.add_argument("--limit", type=int, default=0, help="stop after N items (0: all)")
    ls.add_argument("--page-size", type=int, default=1000, help="items per call (1..1000)")
    ls.add_argument("--vectors", action="store_true", help="include the stored vectors")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_ls)

    upd = sub.add_parser("update", help="change stored items' metadata (or uri) without re-indexing them")
    upd.add_argument("ids", nargs="+", metavar="ID")
    upd.add_argument("--collection", required=True)
    upd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="set a metadata key (nested with dots; VALUE as JSON when it parses, else text); repeatable")
    upd.add_argument("--unset", action="append", metavar="KEY", help="remove a metadata key; repeatable")
    upd.add_argument("--replace", action="store_true", help="replace the whole metadata with the --set keys")
    upd.add_argument("--uri", help="a new uri")
    upd.add_argument("--json", action="store_true")
    upd.set_defaults(func=cmd_update)

    dele = sub.add_parser("delete", help="delete items by id (videos with all their frames)")
    dele.add_argument("ids", nargs="+", metavar="ID")
    dele.add_argument("--collection", required=True)
    dele.add_argument("--json", action="store_true")
    dele.set_defaults(func=cmd_delete)

    emb = sub.add_parser("embed", help="print an image's vector as JSON (nothing is stored)")
    emb.add_argument("image")
    emb.add_argument("--model", default="", help="model (default: the server's)")
    emb.add_argument("--collection", default="", help="embed as this collection does (its model and crops)")
    emb.set_defaults(func=cmd_embed)

    index_videos = sub.add_parser("index-videos", help="index video files or folders into a video collection")
    index_videos.add_argument("paths", nargs="+", help=f"video files, or folders searched recursively for "
                                                       f".{VIDEO_EXTS.replace(',', ' .')}")
    index_videos.add_argument("--collection", required=True)
    index_videos.add_argument("--create", action="store_true",
                              help="(the default now) create the video collection when missing")
    index_videos.add_argument("--frames", type=int, help="frames sampled per video (collection default: 5)")
    index_videos.add_argument("--mode", choices=list(SAMPLING_MODES), help="frame sampling (collection default)")
    index_videos.add_argument("--crop", choices=list(CROP_MODES),
                              help="crop mode for a new collection (server default for video: all)")
    index_videos.add_argument("--model", default="",
                              help="model for a new collection (server default for video: face_dlib)")
    index_videos.add_argument("--json", action="store_true", help="print per-video results and counts as JSON")
    index_videos.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    index_videos.set_defaults(func=cmd_index_videos)

    search_video = sub.add_parser("search-video", help="search a video collection with a query clip")
    search_video.add_argument("clip")
    search_video.add_argument("--collection", required=True)
    search_video.add_argument("--top-k", type=int, default=20)
    search_video.add_argument("--ranking", choices=list(RANKINGS), default="frames",
                              help="frames: mean of per-frame best matches; mean_vector: mean vectors' cosine")
    search_video.add_argument("--frames", type=int, help="frames sampled from the clip (collection default)")
    search_video.add_argument("--mode", choices=list(SAMPLING_MODES), help="clip sampling (collection default)")
    search_video.add_argument("--json", action="store_true", help="print machine-readable hits")
    search_video.add_argument("--out", help="write a PNG sheet of the query frames and each hit's matching frames")
    add_filter_flags(search_video)
    search_video.set_defaults(func=cmd_search_video)

    info = sub.add_parser("info", help="server version, inference backend, models, limits")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    colls = sub.add_parser("collections", help="list collections")
    colls.add_argument("--json", action="store_true")
    colls.set_defaults(func=cmd_collections)

    ev = sub.add_parser("eval", help="retrieval quality of pipelines on a folder in LFW layout (or of video "
                                     "search with --videos)")
    ev.add_argument("dir", nargs="?", help="Person/Person_NNNN.jpg folders; same folder = same identity "
                                           "(with --videos: the LFW folder the lfw-clips benchmark is made from; "
                                           "default ../shared/data/lfw next to the repository)")
    ev.add_argument("--pipelines", default="baseline,resnet50-face,face",
                    help="comma-separated: baseline, resnet50-face, face, resnet50-milvus, face-int8, baseline-int8")
    ev.add_argument("--max-identities", type=int, help="only the first N identities (quick runs)")
    ev.add_argument("--concurrency", type=int, default=None, help="concurrent queries (default 8; 4 with --videos)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--out", help="folder for report.json, report.md, metrics.png and contact sheets "
                                  "(with --videos: report_videos.json, report_videos.md, videos.png)")
    ev.add_argument("--videos", action="store_true",
                    help="evaluate video search instead: P@1, mAP@10, Hit@5 per benchmark for the mean_vector "
                         "and frames rankings side by side")
    ev.add_argument("--video-benchmarks", default="shared-clips,crowd-faces,lfw-clips",
                    help="comma-separated: shared-clips (talking heads cut in halves, a photo of a person on "
                         "stage), crowd-faces (faces in the stage and crowd clips as photos), lfw-clips (clips "
                         "generated from LFW identities)")
    ev.add_argument("--video-identities", type=int, default=None,
                    help="LFW identities the lfw-clips benchmark is made from, the first N in sorted order "
                         "(0: all); default 400: 159 query clips, 400 gallery clips")
    ev.add_argument("--video-cache", help="folder the generated clips are rendered into and reused from "
                                          "(default: revsearch-video-eval in the system temp folder)")
    ev.add_argument("--video-dir", help="folder of the shared clips (default ../shared/data/video next to the "
                                        "repository)")
    ev.add_argument("--copies", metavar="DIR",
                    help="evaluate copy detection instead: DIR's images (e.g. ../shared/data/photos) with LFW "
                         "distractors and video frames as the gallery, edited copies (crops, rotations, captions, "
                         "...) of them as queries; P@1 and mAP per edit and model")
    ev.add_argument("--copy-models", default="efficientnet_lite0,efficientnet_lite0_int8",
                    help="--copies: comma-separated models, one collection each")
    ev.add_argument("--copy-lfw", help="--copies: LFW-layout folder of distractors (default ../shared/data/lfw)")
    ev.add_argument("--copy-lfw-step", type=int, default=4,
                    help="--copies: every Nth LFW image joins the gallery (0: none)")
    ev.add_argument("--copy-queries", type=int, default=40,
                    help="--copies: originals per source (DIR, LFW, video frames) and per edit")
    ev.add_argument("--copy-split", choices=["test", "dev"], default="test",
                    help="--copies: which half of the gallery (by content hash) the queries come from; the "
                         "parameters were tuned on dev")
    ev.add_argument("--copy-edits", default="", help="--copies: comma-separated edits (default: all)")
    ev.add_argument("--copy-distractors", type=int, default=0, metavar="N",
                    help="--copies: add N distractors (crops, rescales, recolourings of the half of the photos and "
                         "LFW images that then leaves the gallery; made once, cached in ~/.cache/revsearch)")
    ev.add_argument("--copy-sizes", default="3,10",
                    help="--copies with distractors: also measure at these multiples of the gallery's size")
    ev.add_argument("--copy-reuse", action="store_true",
                    help="--copies: reuse collections of the same gallery indexed by an earlier run")
    ev.set_defaults(func=cmd_eval)

    drop = sub.add_parser("drop", help="drop a collection and everything in it")
    drop.add_argument("collection")
    drop.set_defaults(func=cmd_drop)

    lt = sub.add_parser("loadtest", help="throughput and latency under concurrent callers (one image per request)")
    lt.add_argument("--workload", choices=["search", "embed", "index", "mix", "noop"], default="search",
                    help="noop (GetServerInfo) measures this tool's own ceiling")
    lt.add_argument("--images", default=".", help="folder of query/index images (searched recursively)")
    lt.add_argument("--max-images", type=int, default=500)
    lt.add_argument("--collection", default="loadtest", help="created (and seeded for search) if missing")
    lt.add_argument("--concurrency", type=int, default=8)
    lt.add_argument("--sweep", help="comma-separated concurrency levels, e.g. 1,2,4,8,16,32,64")
    lt.add_argument("--duration", type=float, default=30.0, help="seconds per step")
    lt.add_argument("--requests", type=int, help="requests per step instead of a duration")
    lt.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before the first step")
    lt.add_argument("--request-timeout", type=float, default=30.0, help="deadline of each request, seconds")
    lt.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    lt.add_argument("--out", help="folder for loadtest.json and loadtest.png")
    lt.add_argument("--model", default="", help="model of the collection when it is created (server default)")
    lt.add_argument("--filter", default="", help="every search's filter (AIP-160), e.g. 'metadata.tenant = \"a\"'")
    lt.set_defaults(func=cmd_loadtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args.server_args)
    try:
        args.security = security_from_args(args)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    if args.security.api_key and not args.security.tls and not _is_local(args.server):
        err.print(f"[yellow]warning: sending the API key to {args.server} without TLS; anyone on the way can "
                  "read it (use --tls or REVSEARCH_TLS=1)[/]")
    try:
        with SearchClient(args.server, timeout=args.timeout, security=args.security) as client:
            return args.func(client, args)
    except RevsearchClientError as exc:
        err.print(f"[bold red]error:[/] {exc.code.name}: {exc.details}")
        if isinstance(exc, UnauthenticatedError):
            err.print(f"give the server's API key with --api-key or {ENV_API_KEY}")
        return 3
    except FileNotFoundError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
