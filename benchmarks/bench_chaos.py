"""Crash and dependency chaos, the full run ("safe to expose", part 4); the small versions are
tests/integration/test_chaos.py.

  images  a revsearch server process (in-process ONNX Runtime, Milvus Lite) is killed -9 with its
          whole process group (Milvus Lite with it, as when a container crashes) at seeded random
          moments while one client indexes --images LFW images (each with its own id) and re-sends
          whatever was not acknowledged (a response INDEXED or DUPLICATE); it is restarted at once on
          the same port and data. Then killed once more, and every acknowledged image must be found
          by its id and by its bytes at rank 1, the count must equal the distinct images sent, and
          Milvus Lite's file itself (read after the server stopped) must hold each image once.
  clips   the same with --clips clips through IndexVideo into a video collection: each clip must be
          stored whole (its face rows and its mean vector) and once.
  milvus  the embedded Milvus 2.3 server is killed -9 under search (and index) load and restarted on
          the same port and data; revsearch runs with --milvus-timeout 2 --health-interval-s 0.5. The
          timeline: answers and their codes and latencies, health, when Milvus listens again, when it
          serves reads again (a Strong query through pymilvus directly), when revsearch serves again.
  triton  the managed Triton is killed -9 under embedding load (--triton-kills times): seconds until
          the fallback answers, on it, until Triton answers again; errors; whether the killed
          Triton's Python backend stubs and their /dev/shm regions go away.

Run: python benchmarks/bench_chaos.py [--images 2000] [--clips 5] [--seed 7] [--parts images,clips,milvus,triton]
Writes benchmarks/results/chaos.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import RESULTS, VIDEO, lfw_images, log, machine, now_utc, write_results
from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.errors import RevsearchClientError
from revsearch.v1 import search_service_pb2 as pb
from revsearch_testkit.chaos import (ACKED, NOT_SERVING, SERVING, Group, Indexer, Item, after_acks, alive, children,
                                     chunks, comm, describes, free_port, health, into_a_call, items_from, milvus_reads,
                                     milvus_server, revsearch_server, triton_tree, wait_for)

MILVUS_DEADLINE_S = 2.0
CLIPS = ["video-retalking_face_1.mp4", "video-retalking_face_2.mp4", "video-retalking_face_3.mp4",
         "video-retalking_face_4.mp4", "video-retalking_face_5.mp4"]


def stats(xs: list[float], digits: int = 3) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    return {"n": len(xs), "min": round(xs[0], digits), "median": round(statistics.median(xs), digits),
            "p99": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))], digits), "max": round(xs[-1], digits)}


# -- what Milvus Lite holds (processes, probes and the indexer: revsearch_testkit/chaos.py) ----------
# What Milvus Lite's file holds, read after the server stopped (in a child process of its own: the
# Milvus Lite process pymilvus starts for the file lives as long as its opener).
_LITE_ROWS = """
import collections, json, logging, sys
logging.disable(logging.CRITICAL)
from pymilvus import MilvusClient
client = MilvusClient(uri=sys.argv[1])
out = {}
for name in sys.argv[2:]:
    full = "revsearch_" + name
    if not client.has_collection(full):
        out[name] = None
        continue
    rows = client.query(full, filter='id != ""', output_fields=["id", "sha256"], limit=16384)
    ids = collections.Counter(r["id"] for r in rows)
    items = {}
    for r in rows:
        items.setdefault(r["id"].split("~")[0], set()).add(r["sha256"])
    out[name] = {"rows": len(rows), "ids": len(ids), "ids_twice": sorted(i for i, n in ids.items() if n > 1),
                 "items": len(items), "shas": len({r["sha256"] for r in rows}),
                 "items_per_sha": max(collections.Counter(next(iter(s)) for s in items.values()).values(), default=0),
                 "rows_per_item": {k: sum(1 for r in rows if r["id"].split("~")[0] == k) for k in sorted(items)}
                 if len(items) <= 50 else {}}
client.close()
print(json.dumps(out))
"""


def lite_rows(db: Path, *collections_: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", _LITE_ROWS, str(db), *collections_], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return json.loads(out.strip().splitlines()[-1])


# -- images: kill -9 while indexing ---------------------------------------------------------------
def lfw_items(count: int) -> list[Item]:
    return items_from(lfw_images(count))


def kill_repeatedly(server: Group, busy, serving, acked, next_moment, max_kills: int = 100,
                    max_wait_s: float = 120) -> list[dict]:
    """Kills the server's group -9 at the moments next_moment() makes, while busy(), restarting it
    at once on the same port and data. Per kill: when, acknowledged then, seconds until the process
    listened, until its first successful call, and until the client's next acknowledgment."""
    kills, t0 = [], time.monotonic()
    while len(kills) < max_kills and busy():
        due, waited, base = next_moment(), time.monotonic(), acked()
        while busy() and not due() and time.monotonic() - waited < max_wait_s:
            if kills and "first_ack_after_s" not in kills[-1] and acked() > base:
                kills[-1]["first_ack_after_s"] = round(time.monotonic() - waited, 2)  # from serving again
            time.sleep(0.01)
        if not busy() or not due():
            break
        killed = time.monotonic()
        before = acked()
        server.kill9()
        started_s = server.start()
        wait_for(serving, 120)
        kills.append({"at_s": round(killed - t0, 2), "acknowledged_before": before, "restart_s": round(started_s, 2),
                      "serve_again_s": round(time.monotonic() - killed, 2)})
        log(f"  kill {len(kills)} at {killed - t0:.1f} s ({before} acknowledged): serving again after "
            f"{kills[-1]['serve_again_s']} s")
    return kills


def check_images(address: str, collection: str, items: list[Item], acks: dict[str, str]) -> dict:
    by_sha: dict[str, set[str]] = collections.defaultdict(set)
    for it in items:
        if it.id in acks:
            by_sha[it.sha256].add(acks[it.id])
    lost_by_id, lost_by_bytes, twice = [], [], []
    with SearchClient(address, timeout=300) as client:
        count = client.describe_collection(collection).item_count
        stored = sorted({i for ids in by_sha.values() for i in ids})
        for part in chunks(stored, 64):
            res = client.batch_search(collection, [{"item_id": i} for i in part], top_k=1)
            lost_by_id += [i for i, r in zip(part, res.results) if r.error.code or not r.hits or r.hits[0].id != i]
        firsts = list({it.sha256: it for it in reversed(items) if it.id in acks}.values())
        for part in chunks(firsts, 16):
            res = client.batch_search(collection, [it.data for it in part], top_k=2)
            for it, r in zip(part, res.results):
                hits = [h.id for h in r.hits]
                if not hits or hits[0] != acks[it.id]:
                    lost_by_bytes.append(acks[it.id])
                elif hits[1:2] == hits[:1]:
                    twice.append(acks[it.id])
    twice += [sha for sha, ids in by_sha.items() if len(ids) > 1]
    return {"item_count": count, "distinct_sent": len({it.sha256 for it in items}),
            "distinct_acknowledged": len(by_sha), "lost_by_id": sorted(lost_by_id),
            "lost_by_bytes": sorted(lost_by_bytes), "stored_twice": sorted(set(twice))}


def run_images(work: Path, n_images: int, rng: random.Random) -> dict:
    log(f"images: {n_images} LFW images, a kill after every 60-240 more acknowledgments (+0-1.5 s)")
    items = lfw_items(n_images)
    server = revsearch_server(work / "images", free_port(), "--triton-url", "off")
    try:
        server.start()
        with SearchClient(server.address, timeout=30) as client:
            client.create_collection("chaos", exist_ok=True)
        indexer = Indexer(server.address, "chaos", items, time_limit_s=1800, max_attempts=5000, max_call_s=600)
        thread = threading.Thread(target=indexer.run, daemon=True)
        started = time.monotonic()
        thread.start()
        kills = kill_repeatedly(server, busy=lambda: not indexer.done.is_set(),
                                serving=lambda: describes(server.address, "chaos"), acked=lambda: len(indexer.acks),
                                next_moment=after_acks(rng, lambda: len(indexer.acks), (60, 240), (0.0, 1.5)))
        thread.join(1900)
        indexed_s = time.monotonic() - started
        # Once more after the last write, so that everything is read from what survived a crash.
        killed = time.monotonic()
        server.kill9()
        server.start()
        wait_for(lambda: describes(server.address, "chaos"), 120)
        final_serve_again = time.monotonic() - killed
        log(f"  all acknowledged after {indexed_s:.0f} s; killed once more, serving after {final_serve_again:.1f} s; "
            "checking")
        check = check_images(server.address, "chaos", items, indexer.acks)
    finally:
        server.stop(require_gone=True)
    stored = lite_rows(work / "images" / "milvus.db", "chaos")["chaos"]
    lost = sorted(set(check["lost_by_id"]) | set(check["lost_by_bytes"]))
    duplicated = max(0, check["item_count"] - check["distinct_acknowledged"]) + len(check["stored_twice"]) + \
        len(stored["ids_twice"]) + max(0, stored["items"] - stored["shas"])
    result = {"images_sent": len(items), "kills": len(kills) + 1, "kills_during_indexing": kills,
              "final_kill_serve_again_s": round(final_serve_again, 2), "indexing_s": round(indexed_s, 1),
              "acknowledged": len(indexer.acks), "not_acknowledged": len(indexer.pending()),
              "lost": len(lost), "lost_ids": lost[:20], "duplicated": duplicated,
              "serve_again_s": stats([k["serve_again_s"] for k in kills] + [final_serve_again], 2),
              "stream_attempts": indexer.attempts, "stream_errors": dict(indexer.stream_errors),
              "statuses": dict(indexer.statuses), "resent_found_stored": indexer.resent_found_stored,
              "items_sent_more_than_once": sum(1 for n in indexer.sent.values() if n > 1),
              "sends": sum(indexer.sent.values()), "check": check, "milvus_lite_file": stored}
    log(f"  kills {result['kills']}, acknowledged {result['acknowledged']}, lost {result['lost']}, "
        f"duplicated {result['duplicated']}, serve again {result['serve_again_s']}")
    return result


# -- clips ----------------------------------------------------------------------------------------
def run_clips(work: Path, names: list[str], rng: random.Random) -> dict:
    clips = [VIDEO / n for n in names]
    log(f"clips: {len(clips)} clips through IndexVideo, kills 0.1-1.5 s into a call (at most {2 * len(clips)})")
    server = revsearch_server(work / "clips", free_port(), "--triton-url", "off")
    acks: dict[str, pb.IndexVideoResponse] = {}
    errors: collections.Counter = collections.Counter()
    done = threading.Event()
    sends: collections.Counter = collections.Counter()
    in_flight: list = [None]  # when the IndexVideo call now in flight began

    def index_clips() -> None:
        end = time.monotonic() + 900
        try:
            with SearchClient(server.address, timeout=120) as client:
                while (todo := [c for c in clips if c.stem not in acks]) and time.monotonic() < end:
                    for clip in todo:
                        sends[clip.stem] += 1
                        in_flight[0] = time.monotonic()
                        try:
                            r = client.index_video("clips", clip, id=clip.stem, timeout=120)
                            if r.status in ACKED:
                                acks[clip.stem] = r
                            else:
                                errors[pb.ItemStatus.Name(r.status)] += 1
                        except RevsearchClientError as exc:
                            errors[exc.code.name] += 1
                            time.sleep(0.1)
                        finally:
                            in_flight[0] = None
        finally:
            done.set()

    try:
        server.start()
        with SearchClient(server.address, timeout=30) as client:
            client.create_collection("clips", media_type="video", exist_ok=True)
        thread = threading.Thread(target=index_clips, daemon=True)
        started = time.monotonic()
        thread.start()
        kills = kill_repeatedly(server, busy=lambda: not done.is_set(),
                                serving=lambda: describes(server.address, "clips"), acked=lambda: len(acks),
                                next_moment=into_a_call(rng, in_flight, (0.1, 1.5)), max_kills=2 * len(clips))
        thread.join(1000)
        indexed_s = time.monotonic() - started
        killed = time.monotonic()
        server.kill9()
        server.start()
        wait_for(lambda: describes(server.address, "clips"), 120)
        final_serve_again = time.monotonic() - killed
        log(f"  all acknowledged after {indexed_s:.0f} s; checking")
        lost, expected_rows, per_clip = [], 0, {}
        with SearchClient(server.address, timeout=300) as client:
            count = client.describe_collection("clips").item_count
            client.create_collection("clips_clean", media_type="video", exist_ok=True)
            for clip in clips:
                clean = client.index_video("clips_clean", clip, id=clip.stem, timeout=300)
                expected_rows += clean.vector_count - 1
                if clip.stem not in acks:
                    continue
                again = client.index_video("clips", clip, id="other-id", timeout=300)
                top = {ranking: [h.id for h in client.search_videos("clips", clip=clip, ranking=ranking, top_k=1,
                                                                    timeout=300).hits]
                       for ranking in ("frames", "mean_vector")}
                whole = again.status == pb.ITEM_STATUS_DUPLICATE and again.id == clip.stem and all(
                    t[:1] == [clip.stem] for t in top.values())
                per_clip[clip.stem] = {"ack": pb.ItemStatus.Name(acks[clip.stem].status), "sends": sends[clip.stem],
                                       "rows_clean": clean.vector_count - 1, "resend": pb.ItemStatus.Name(again.status),
                                       "top_by_frames": top["frames"], "top_by_mean": top["mean_vector"]}
                if not whole:
                    lost.append(clip.stem)
    finally:
        server.stop(require_gone=True)
    stored = lite_rows(work / "clips" / "milvus.db", "clips", "clips__means")
    rows, means = stored["clips"], stored["clips__means"]
    half = [c for c in per_clip if rows["rows_per_item"].get(c, 0) != per_clip[c]["rows_clean"]
            or c not in (means or {}).get("rows_per_item", {})]
    duplicated = max(0, count - expected_rows) + len(rows["ids_twice"]) + max(0, rows["items"] - rows["shas"]) + \
        (len(means["ids_twice"]) + max(0, means["rows"] - len(acks)) if means else 0)
    result = {"clips": len(clips), "kills": len(kills) + 1, "kills_during_indexing": kills,
              "final_kill_serve_again_s": round(final_serve_again, 2), "indexing_s": round(indexed_s, 1),
              "acknowledged": len(acks), "lost": len(set(lost) | set(half)),
              "lost_clips": sorted(set(lost) | set(half)),
              "duplicated": duplicated, "rows": count, "rows_expected": expected_rows,
              "serve_again_s": stats([k["serve_again_s"] for k in kills] + [final_serve_again], 2),
              "errors": dict(errors), "sends": dict(sends), "per_clip": per_clip, "milvus_lite_file": stored}
    log(f"  kills {result['kills']}, acknowledged {len(acks)}, lost {result['lost']}, duplicated {duplicated}, "
        f"rows {count}/{expected_rows}")
    return result


# -- the embedded Milvus server killed under load -------------------------------------------------
def run_milvus(work: Path, n_images: int) -> dict:
    log("milvus: embedded Milvus 2.3 server killed -9 under search and index load, restarted 10 s later")
    items = lfw_items(n_images)
    milvus = milvus_server(work / "milvus", free_port())
    setup = server = None
    try:
        milvus_start_s = milvus.start()
        uri = f"http://127.0.0.1:{milvus.match.group(1)}"
        # The collection is made with the default deadline: creating and loading a collection in a
        # Milvus server takes longer than the 2 s the chaos run uses.
        setup = revsearch_server(work / "setup", free_port(), "--triton-url", "off", "--milvus-uri", uri)
        setup.start()
        first = items[: n_images // 2]
        with SearchClient(setup.address, timeout=120) as client:
            client.create_collection("load")
            resp = list(client.index_images("load", [ImageInput(image=it.data, id=it.id) for it in first]))
            assert all(r.status == pb.ITEM_STATUS_INDEXED for r in resp)
            vectors = [np.asarray(client.embed(it.data, collection="load").vector) for it in items[:8]]
        setup.stop(require_gone=True)
        server = revsearch_server(work / "server", free_port(), "--triton-url", "off", "--milvus-uri", uri,
                                  "--milvus-timeout", str(MILVUS_DEADLINE_S), "--health-interval-s", "0.5")
        server.start()
        acks = {it.id: it.id for it in first}
        calls: list[tuple[float, float, str, str]] = []  # started, seconds, kind, code
        seen: list[tuple[float, int | None]] = []
        stop = threading.Event()

        def searches():
            with SearchClient(server.address, timeout=10) as client:
                n = 0
                while not stop.is_set() and n < 1_000_000:
                    n += 1
                    t = time.monotonic()
                    try:
                        client.search("load", vector=vectors[n % len(vectors)], top_k=5, timeout=10)
                        code = "OK"
                    except RevsearchClientError as exc:
                        code = exc.code.name
                    calls.append((t, time.monotonic() - t, "search", code))
                    if code != "OK":
                        time.sleep(0.02)

        def indexing():
            with SearchClient(server.address, timeout=10) as client:
                todo = collections.deque(items[n_images // 2:])
                while todo and not stop.is_set():
                    it = todo.popleft()
                    t = time.monotonic()
                    try:
                        r = client.index_image("load", ImageInput(image=it.data, id=it.id), timeout=10)
                        code = "OK" if r.status in ACKED else r.error.code_name or pb.ItemStatus.Name(r.status)
                        if r.status in ACKED:
                            acks[it.id] = r.id
                    except RevsearchClientError as exc:
                        code = exc.code.name
                    calls.append((t, time.monotonic() - t, "index", code))
                    if code != "OK":
                        todo.append(it)
                        time.sleep(0.05)

        def healths():
            while not stop.wait(0.1):
                seen.append((time.monotonic(), health(server.address)))

        threads = [threading.Thread(target=searches, daemon=True) for _ in range(3)] + \
            [threading.Thread(target=indexing, daemon=True), threading.Thread(target=healths, daemon=True)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            time.sleep(5.0)
            killed = time.monotonic()
            milvus.kill9()
            time.sleep(10.0)
            restarting = time.monotonic()
            restart_s = milvus.start()
            back = time.monotonic()
            same_port = milvus.match.group(1) == uri.rsplit(":", 1)[1]
            milvus_serves = back + wait_for(lambda: milvus_reads(uri, "revsearch_load"), 180, every_s=0.2)
            recovered = milvus_serves + wait_for(
                lambda: any(c[3] == "OK" and c[2] == "search" and c[0] > milvus_serves for c in calls), 60)
            time.sleep(10.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        check = check_images(server.address, "load", items, acks)
    finally:
        for g in (server, setup, milvus):
            if g is not None:
                g.stop(require_gone=True)

    def rel(t: float) -> float:
        return round(t - killed, 2)

    # The circuit opened when the first call found the store unreachable (its failure's end).
    opened = min(c[0] + c[1] for c in calls if c[0] + c[1] > killed and c[3] != "OK")
    finding = [c for c in calls if c[0] < opened < c[0] + c[1] or killed < c[0] + c[1] <= opened]
    down = [c for c in calls if opened <= c[0] and c[0] + c[1] < milvus_serves]
    failures = [c[1] for c in down if c[3] != "OK"]
    names = {SERVING: "SERVING", NOT_SERVING: "NOT_SERVING", None: "no answer"}
    changes = []
    for t, st in seen:
        if not changes or changes[-1][1] != names.get(st, str(st)):
            changes.append((t, names.get(st, str(st))))
    not_serving = [t for t, st in seen if t > killed and st == NOT_SERVING]
    serving_again = [t for t, st in seen if t > (not_serving[0] if not_serving else killed) and st == SERVING]
    timeline = []
    for second in range(int(t0 - killed) - 1, int(time.monotonic() - killed) + 1):
        lo, hi = killed + second, killed + second + 1
        in_sec = [c for c in calls if lo <= c[0] + c[1] < hi]
        hs = collections.Counter("SERVING" if s == SERVING else "NOT_SERVING" if s == NOT_SERVING else "none"
                                 for t, s in seen if lo <= t < hi)
        timeline.append({"s": second, "answers": dict(collections.Counter(c[3] for c in in_sec)),
                         "max_latency_s": round(max((c[1] for c in in_sec), default=0), 3),
                         "health": hs.most_common(1)[0][0] if hs else ""})
    lost = sorted(set(check["lost_by_id"]) | set(check["lost_by_bytes"]))
    result = {
        "milvus_start_s": round(milvus_start_s, 1), "restart_same_port": same_port,
        "events_s_after_kill": {"milvus_restart_begun": rel(restarting), "milvus_listening": rel(back),
                                "milvus_serves_reads": rel(milvus_serves), "revsearch_serves": rel(recovered),
                                "circuit_open": rel(opened),
                                "first_not_serving": rel(not_serving[0]) if not_serving else None,
                                "serving_again": rel(serving_again[0]) if serving_again else None},
        "health_changes_s_after_kill": [(rel(t), st) for t, st in changes],
        "milvus_restart_s": round(restart_s, 1),
        "milvus_listening_to_serving_reads_s": round(milvus_serves - back, 1),
        "recover_after_milvus_serves_s": round(recovered - milvus_serves, 2),
        "recover_after_milvus_listens_s": round(recovered - back, 2),
        "while_down": {"answers": dict(collections.Counter(c[3] for c in down)),
                       "by_kind": {k: dict(collections.Counter(c[3] for c in down if c[2] == k))
                                   for k in ("search", "index")},
                       "failure_latency_s": stats(failures),
                       "failures_over_a_quarter_of_the_deadline": sorted(round(x, 2) for x in failures
                                                                          if x > MILVUS_DEADLINE_S / 4)},
        "calls_finding_it_down": [{"kind": c[2], "code": c[3], "seconds": round(c[1], 2)} for c in finding],
        "after_recovery": dict(collections.Counter(c[3] for c in calls if c[0] > recovered)),
        "acknowledged": len(acks), "lost": len(lost), "lost_ids": lost[:20],
        "duplicated": max(0, check["item_count"] - check["distinct_acknowledged"]) + len(check["stored_twice"]),
        "check": check, "timeline": timeline}
    log(f"  milvus listening {rel(back)} s after the kill, serving reads {rel(milvus_serves)} s, revsearch "
        f"{rel(recovered)} s; while down {result['while_down']['answers']} "
        f"{result['while_down']['failure_latency_s']}; "
        f"lost {len(lost)}")
    return result


# -- the managed Triton killed under load ---------------------------------------------------------
def run_triton(work: Path, kills_wanted: int) -> dict:
    log(f"triton: managed Triton killed -9 {kills_wanted} times under embedding load (4 callers)")
    images = [it.data for it in lfw_items(16)]
    server = revsearch_server(work / "triton", free_port(), "--health-interval-s", "0.5")  # --triton-reprobe-s: default
    calls: list[tuple[float, float, str, int | None]] = []
    backends: list[tuple[float, int]] = []
    stop = threading.Event()
    kills, regions = [], []

    def embeds():
        with SearchClient(server.address, timeout=60) as client:
            n = 0
            while not stop.is_set() and n < 1_000_000:
                n += 1
                t = time.monotonic()
                try:
                    b = client.embed(images[n % len(images)], timeout=60).inference_backend
                    calls.append((t, time.monotonic() - t, "OK", b))
                except RevsearchClientError as exc:
                    calls.append((t, time.monotonic() - t, exc.code.name, None))
                    time.sleep(0.05)

    def watch():
        with SearchClient(server.address, timeout=10) as client:
            while not stop.wait(0.1):
                try:
                    backends.append((time.monotonic(), client.info(timeout=5).inference_backend))
                except RevsearchClientError:
                    pass

    load = [threading.Thread(target=embeds, daemon=True) for _ in range(4)]
    load.append(threading.Thread(target=watch, daemon=True))
    try:
        start_s = server.start()
        with SearchClient(server.address, timeout=60) as client:
            first = client.info().inference_backend
        for t in load:
            t.start()
        for k in range(kills_wanted):
            time.sleep(5.0)
            old = next(p for p in children(server.pid) if comm(p) == "tritonserver")
            tree, old_regions = triton_tree(old)
            regions += old_regions
            killed = time.monotonic()
            os.kill(old, signal.SIGKILL)
            on_fallback = killed + wait_for(lambda: any(t > killed and b == pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL
                                                        for t, b in backends[-50:]), 60, every_s=0.05)
            back = on_fallback + wait_for(lambda: any(t > on_fallback and b == pb.INFERENCE_BACKEND_TRITON
                                                      for t, b in backends[-50:]), 300, every_s=0.1)
            procs_gone = regions_gone = None
            while procs_gone is None or regions_gone is None:
                if procs_gone is None and not any(alive(p) for p in tree):
                    procs_gone = time.monotonic() - killed
                if regions_gone is None and not any(r.exists() for r in old_regions):
                    regions_gone = time.monotonic() - killed
                if time.monotonic() > killed + 30:
                    break
                time.sleep(0.2)
            new = [p for p in children(server.pid) if comm(p) == "tritonserver"]
            kills.append({"killed_pid": old, "restarted_pid": new[0] if new else None,
                          "to_fallback_s": round(on_fallback - killed, 2),
                          "on_fallback_s": round(back - on_fallback, 2),
                          "back_on_triton_s": round(back - killed, 2),
                          "answers_between": dict(collections.Counter(
                              pb.InferenceBackend.Name(c[3]) if c[2] == "OK" else c[2]
                              for c in calls if killed <= c[0] + c[1] < back)),
                          "max_latency_s": round(max((c[1] for c in calls if killed <= c[0] + c[1] < back),
                                                     default=0), 2),
                          "stubs": len(tree) - 1, "stubs_left_after_30s": [p for p in tree if alive(p)],
                          "processes_gone_s": round(procs_gone, 1) if procs_gone is not None else None,
                          "shm_regions": len(old_regions),
                          "shm_regions_left_after_30s": sum(r.exists() for r in old_regions),
                          "shm_regions_gone_s": round(regions_gone, 1) if regions_gone is not None else None})
            log(f"  kill {k + 1}: {kills[-1]}")
        time.sleep(3.0)
    finally:
        stop.set()
        for t in load:
            if t.ident is not None:
                t.join(90)
        server.stop(require_gone=True)
        for r in regions:  # the killed Tritons' /dev/shm regions (names read from their own stubs)
            r.unlink(missing_ok=True)
    errors = collections.Counter(c[2] for c in calls if c[2] != "OK")
    result = {"server_start_s": round(start_s, 1), "first_backend": pb.InferenceBackend.Name(first),
              "kills": kills, "calls": len(calls), "errors": dict(errors),
              "answers_by_backend": dict(collections.Counter(pb.InferenceBackend.Name(c[3])
                                                             for c in calls if c[2] == "OK")),
              "last_answer_backend": pb.InferenceBackend.Name(calls[-1][3]) if calls and calls[-1][3] else None,
              "to_fallback_s": stats([k["to_fallback_s"] for k in kills], 2),
              "on_fallback_s": stats([k["on_fallback_s"] for k in kills], 2),
              "back_on_triton_s": stats([k["back_on_triton_s"] for k in kills], 2),
              "stubs_left": sum(len(k["stubs_left_after_30s"]) for k in kills),
              "shm_regions_left": sum(k["shm_regions_left_after_30s"] for k in kills)}
    log(f"  errors {dict(errors)}, back on Triton {result['back_on_triton_s']}, stubs left {result['stubs_left']}, "
        f"regions left {result['shm_regions_left']}")
    return result


# -- report ---------------------------------------------------------------------------------------
def _s(st: dict) -> str:
    return f"{st['min']} / {st['median']} / {st['max']}" if st.get("n") else "-"


def markdown(r: dict) -> str:
    out = [f"# Crash and dependency chaos ({r['run_at']}, {r['machine']['cpus']} CPUs)", "",
           f"Load average (1, 5, 15 min) at the start {r['loadavg_start']}, at the end {r['loadavg_end']}; "
           f"seed {r['seed']}; {r['wall_s']} s in all. `python benchmarks/bench_chaos.py` "
           f"(tests/integration/test_chaos.py runs small versions in `make test`).", ""]
    if "images" in r or "clips" in r:
        out += ["## kill -9 of the server (with its Milvus Lite) while a client indexes and re-sends what was not "
                "acknowledged", "",
                "| run | kills | acknowledged | lost | duplicated | seconds to serve again (min / median / max) | "
                "re-sent items found stored |", "|---|---|---|---|---|---|---|"]
        if "images" in r:
            i = r["images"]
            out.append(f"| {i['images_sent']} LFW images, IndexImages | {i['kills']} | {i['acknowledged']} | "
                       f"**{i['lost']}** | **{i['duplicated']}** | {_s(i['serve_again_s'])} | "
                       f"{i['resent_found_stored']} |")
        if "clips" in r:
            c = r["clips"]
            out.append(f"| {c['clips']} clips, IndexVideo | {c['kills']} | {c['acknowledged']} | **{c['lost']}** | "
                       f"**{c['duplicated']}** | {_s(c['serve_again_s'])} | "
                       f"{sum(1 for v in c['per_clip'].values() if v['ack'] == 'ITEM_STATUS_DUPLICATE')} |")
        out += ["", "Kills at seeded random moments (images: after 60-240 further acknowledgments, then 0-1.5 s; "
                "clips: 0.1-1.5 s into an IndexVideo call, at most two kills a clip), the server restarted at once on "
                "the same port and data dir (`--triton-url off`), plus one "
                "more kill after the last acknowledgment, so that everything was read back from what survived a crash. "
                "Seconds to serve again: from the kill to the first successful DescribeCollection (process start, "
                "Milvus Lite, models). Lost: an acknowledged item not found at rank 1 by its id (its stored vector) "
                "or by its bytes, or a clip not found first by itself with both rankings (its face rows and its mean "
                "vector) or not answered DUPLICATE of the same id on a re-send. Duplicated: item_count above the "
                "distinct acknowledged images (clips: above the rows a clean index of the same clips stores), an "
                "item's second hit being itself, and, read from the Milvus Lite file after the server stopped, "
                "repeated primary keys or one image stored under two ids. Re-sent items found stored: writes that "
                "outlived a kill without their acknowledgment, answered DUPLICATE (with the same id) when re-sent."]
        if "images" in r:
            i = r["images"]
            out += ["", f"Images: indexing took {i['indexing_s']} s with the kills; {i['sends']} items sent in "
                    f"{i['stream_attempts']} streams ({i['items_sent_more_than_once']} items more than once); "
                    f"streams cut: {i['stream_errors']}; item_count {i['check']['item_count']} for "
                    f"{i['check']['distinct_sent']} distinct images; Milvus Lite file: {i['milvus_lite_file']['rows']} "
                    f"rows, {i['milvus_lite_file']['ids']} ids, {i['milvus_lite_file']['shas']} distinct sha256."]
        if "clips" in r:
            c = r["clips"]
            out += ["", f"Clips: {c['rows']} rows stored for {c['rows_expected']} expected; sends per clip "
                    f"{c['sends']}; errors {c['errors']}."]
            stored = c["milvus_lite_file"]
            for clip in c["lost_clips"]:
                v = c["per_clip"].get(clip, {})
                rows = (stored.get("clips") or {}).get("rows_per_item", {}).get(clip, 0)
                mean = clip in ((stored.get("clips__means") or {}).get("rows_per_item") or {})
                out += ["", f"**Lost: {clip}**: acknowledged {v.get('ack')} after {v.get('sends')} sends; in the "
                        f"Milvus Lite file {rows} face rows (a clean index stores {v.get('rows_clean')}) and "
                        f"{'its' if mean else 'no'} mean vector; re-sent: {v.get('resend')}; found first by the "
                        f"frames ranking: {v.get('top_by_frames')}, by the mean-vector ranking: {v.get('top_by_mean')}."
                        + ("" if mean else " A kill landed between IndexVideo's two inserts (its rows, then its "
                           "mean) and the re-send, answered DUPLICATE by the rows' sha256, never completed it.")]
    if "milvus" in r:
        m = r["milvus"]
        e, d = m["events_s_after_kill"], m["while_down"]
        lat, slow = d["failure_latency_s"], d["failures_over_a_quarter_of_the_deadline"]
        rows = [
            ("calls that found Milvus gone (in flight at the kill, or started before the first failure)",
             f"{m['calls_finding_it_down']}; the first failed {e['circuit_open']} s after the kill"),
            ("answers from then until Milvus served reads again", f"{d['answers']}"),
            ("latency of those UNAVAILABLE answers, s (min / median / p99 / max)",
             f"{lat.get('min')} / {lat.get('median')} / {lat.get('p99')} / {lat.get('max')}"),
            (f"of them slower than a quarter of the deadline ({MILVUS_DEADLINE_S / 4} s): calls that tried "
             "Milvus again", f"{len(slow)}: {slow}"),
            ("health NOT_SERVING first seen", f"{e['first_not_serving']} s after the kill"),
            ("Milvus restarted (10 s after the kill), listening again",
             f"{e['milvus_listening']} s after the kill (start {m['milvus_restart_s']} s, same port: "
             f"{m['restart_same_port']})"),
            ("Milvus serving reads again (Strong query, pymilvus directly)",
             f"{e['milvus_serves_reads']} s after the kill, {m['milvus_listening_to_serving_reads_s']} s after it "
             "listened"),
            ("revsearch serving searches again, by itself",
             f"**{m['recover_after_milvus_serves_s']} s** after Milvus served reads "
             f"({m['recover_after_milvus_listens_s']} s after it listened)"),
            ("health SERVING again", f"{e['serving_again']} s after the kill (changes, s after the kill: "
                                     f"{m['health_changes_s_after_kill']})"),
            ("answers after recovery", f"{m['after_recovery']}"),
            ("acknowledged writes / lost / duplicated",
             f"{m['acknowledged']} / **{m['lost']}** / **{m['duplicated']}**"),
        ]
        out += ["", "## The embedded Milvus server killed -9 under load", "", "| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
        if slow:
            out += ["", f"**{len(slow)} UNAVAILABLE answers waited** ({min(slow)}-{max(slow)} s, the deadline is "
                    f"{MILVUS_DEADLINE_S} s) after the circuit had opened: the calls that became its once-a-second "
                    "probe (pymilvus retries until about twice the deadline; a request whose second store call is "
                    "a probe again waits twice)."]
        if e["serving_again"] is not None and e["serving_again"] < e["milvus_serves_reads"]:
            out += ["", f"**Health said SERVING from {e['serving_again']} s after the kill** (Milvus listing its "
                    f"collections again) while every search failed until {e['milvus_serves_reads']} s (Milvus serving "
                    "reads only once the killed process's session expired)."]
        out += ["", "revsearch with `--milvus-uri`, `--milvus-timeout 2 --health-interval-s 0.5 --triton-url off`; "
                "load: 3 callers searching by vector (top 5) and one indexing one image per call, re-sending what "
                "failed. Timeline (s from the kill: answers ending in that second, slowest, health):", "",
                "| s | answers | slowest s | health |", "|---|---|---|---|"]
        for row in m["timeline"]:
            out.append(f"| {row['s']} | {row['answers']} | {row['max_latency_s']} | {row['health']} |")
    if "triton" in r:
        t = r["triton"]
        out += ["", "## The managed Triton killed -9 under load", "",
                "| kill | to the fallback, s | on the fallback, s | back on Triton, s | answers meanwhile | "
                "slowest, s | stubs left 30 s on | /dev/shm regions left |", "|---|---|---|---|---|---|---|---|"]
        for n, k in enumerate(t["kills"], 1):
            out.append(f"| {n} | {k['to_fallback_s']} | {k['on_fallback_s']} | {k['back_on_triton_s']} | "
                       f"{k['answers_between']} | {k['max_latency_s']} | "
                       f"{len(k['stubs_left_after_30s'])} of {k['stubs']} | "
                       f"{k['shm_regions_left_after_30s']} of {k['shm_regions']} |")
        if t["stubs_left"] or t["shm_regions_left"]:
            out += ["", f"**{t['stubs_left']} Python backend stubs of killed Tritons were still running 30 s after "
                    f"the kill, and {t['shm_regions_left']} of their /dev/shm regions (16 MiB each) were left**: a "
                    "stub in the middle of a request when Triton dies waits on a futex (seen for over 150 s, "
                    "reparented to pid 1), holding its model's memory."]
        out += ["", f"{t['calls']} EmbedImage calls from 4 callers, errors {t['errors']}; answers by backend "
                f"{t['answers_by_backend']}; the last answer from {t['last_answer_backend']}. Seconds on the fallback "
                f"(min / median / max) {_s(t['on_fallback_s'])}, until back on Triton {_s(t['back_on_triton_s'])} "
                "(the server's health checks restart the exited Triton every `--health-interval-s` 0.5 s; the failover "
                "returns to it every `--triton-reprobe-s`, default 10 s)."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--milvus-images", type=int, default=200)
    ap.add_argument("--triton-kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--parts", default="images,clips,milvus,triton")
    ap.add_argument("--name", default="chaos")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    result = {"run_at": now_utc(), "machine": machine(), "seed": args.seed,
              "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    log(f"load average {result['loadavg_start']}")
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        work = Path(tmp)
        parts = args.parts.split(",")
        if "images" in parts:
            result["images"] = run_images(work, args.images, rng)
        if "clips" in parts:
            result["clips"] = run_clips(work, CLIPS[: args.clips], rng)
        if "milvus" in parts:
            result["milvus"] = run_milvus(work, args.milvus_images)
        if "triton" in parts:
            result["triton"] = run_triton(work, args.triton_kills)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - started)
    write_results(args.name, result, markdown(result))
    log(f"load average {result['loadavg_end']}; wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
