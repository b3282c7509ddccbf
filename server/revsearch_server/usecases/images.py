"""Image use cases: index images, search by image / vector / stored item, embed, delete items.

Each call takes its admission slots (one per image to decode and embed) here, so every
transport gets the same backpressure. Knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..admission import Admission
from ..collection_service import Collection, Collections
from ..copies import (CANDIDATES, FIRST_FETCH, PATIENCE, SURE_GAP, SURE_SCORE, ZOOM_CANDIDATES, CopyDetector,
                      QueryFeatures, Verifier)
from ..copy_vectors import leading
from ..domain import CropMode, FaceBox, FaceOptions, ItemStatus, MediaType
from ..embedding.base import BackendKind
from ..encoder import Encoder
from ..errors import AlreadyExists, InvalidArgument, NotFound, RevsearchError, Unavailable
from ..faces.cropper import FaceCrop, NoFace
from ..filters import Filter, parse_filter
from ..imaging import sha256_hex
from ..index.base import Hit, Record, VectorIndex, insert_or_undo
from ..index.coalescer import SearchCoalescer
from ..models import ModelSpec
from ..observability import Metrics, or_null
from ..rows import MAX_ROW_FETCH, collapse_hits, item_of, row_id
from ..validation import (MAX_BATCH_QUERIES, default_id, resolve_top_k, validate_item_fields,
                          validate_min_score, validate_query_vector)

@dataclass
class IndexInput:
    id: str
    uri: str
    image: bytes
    metadata: dict = field(default_factory=dict)


@dataclass
class IndexOutcome:
    id: str
    uri: str
    status: ItemStatus
    error: RevsearchError | None = None
    # Every stored face, most prominent first (one for crop mode "largest", none without faces).
    face_boxes: list[FaceBox] = field(default_factory=list)

    @property
    def face_box(self) -> FaceBox | None:
        return self.face_boxes[0] if self.face_boxes else None


@dataclass
class Query:
    """Exactly one of image, vector or item_id; filter: this query's own (AIP-160 text, "": the call's)."""
    image: bytes | None = None
    vector: list[float] | np.ndarray | None = None
    item_id: str | None = None
    filter: str = ""


@dataclass(frozen=True)
class SearchOptions:
    """What a search request may set besides its queries (None / "": the collection's or no limit)."""
    top_k: int | None = None
    copy_detection: bool | None = None
    breadth: int | None = None
    filter: str = ""  # AIP-160 (filters.py); "" searches every item
    min_score: float | None = None  # hits below this cosine are left out


@dataclass
class SearchResult:
    hits: list[Hit]
    model: ModelSpec
    backend: BackendKind | None  # None when no image was embedded for the query
    query_face_box: FaceBox | None = None


@dataclass
class Embedding:
    vector: np.ndarray
    model: ModelSpec
    backend: BackendKind


class ImageSearch:
    def __init__(self, collections: Collections, encoder: Encoder, searcher: SearchCoalescer, admission: Admission,
                 max_top_k: int, metrics: Metrics | None = None, copies: CopyDetector | None = None):
        self._collections = collections
        # Copy detection (copies.py), for collections that have it; None: every search is global.
        self._copies = copies
        self._encoder = encoder
        self._searcher = searcher
        self._admission = admission
        self.max_top_k = max_top_k
        self._metrics = or_null(metrics)

    # -- embedding ---------------------------------------------------------------------------
    async def embed_image(self, data: bytes, model_name: str = "", collection: str = "") -> Embedding:
        """The image's vector with a collection's model and crop settings, or with a model by name."""
        async with self._admission.slots(1, "EmbedImage"):
            if collection:
                c = await self._collections.open(collection)
                model, faces = c.model, c.spec.crop_options
                if c.spec.compact_copies:  # the collection's vectors are copy detection's (copy_vectors.py)
                    pixels, _ = await self._copies_of(c).prepare_query(data, model, features=False)
                    vectors = await self._encoder.embed_copy(model, [pixels])
                    return Embedding(vectors[0, 0], model, self._encoder.backend)
            else:
                model = self._collections.models.get(model_name)
                faces = FaceOptions() if model.needs_face_crop else None  # a face model needs its face
            crop = await self._encoder.prepare_query(data, model, faces)
            vectors = await self._encoder.embed(model, [crop])
        return Embedding(vectors[0], model, self._encoder.backend)

    # -- indexing ----------------------------------------------------------------------------
    async def index_batch(self, collection: str, items: list[IndexInput]) -> list[IndexOutcome]:
        """Indexes items (waiting, bounded, for admission); each gets its own outcome. Nothing of
        a failed item is stored, and the batch is stored with one insert, all or nothing, also
        when the caller is cancelled during it."""
        c = await self._collections.open(collection, MediaType.IMAGE)
        async with self._admission.slots(len(items), "IndexImages", wait=True):
            return await self._index(c, items)

    async def _index(self, c: Collection, items: list[IndexInput]) -> list[IndexOutcome]:
        model, index = c.model, c.index
        multi = c.spec.crop_mode is CropMode.ALL_FACES  # several rows per item, keyed by rows.row_id
        key = (lambda item_id: row_id(item_id, 0)) if multi else (lambda item_id: item_id)
        outcomes: list[IndexOutcome | None] = [None] * len(items)
        digests = [sha256_hex(it.image) if it.image else "" for it in items]

        for i, item in enumerate(items):
            try:
                validate_item_fields(item.id, item.uri, item.metadata)
            except RevsearchError as exc:
                outcomes[i] = IndexOutcome(item.id, item.uri, ItemStatus.FAILED, exc)
        todo = [i for i in range(len(items)) if outcomes[i] is None]
        copy = c.spec.copy_detection and c.views is not None
        compact = copy and c.spec.compact_copies  # one forward pass gives all five vectors (copy_vectors.py)
        features: dict[int, str] = {}
        if copy:  # the whole image (and, for the first kind of collection, its crop views), and local features
            prepared = {}
            for i, r in zip(todo, await self._copies_of(c).prepare_index([items[i].image for i in todo], model,
                                                                         crop_views=not compact,
                                                                         feature_format=c.spec.feature_format)):
                if isinstance(r, RevsearchError):
                    prepared[i] = r
                else:
                    prepared[i], features[i] = [FaceCrop(v, None) for v in r.views], r.features
        else:
            prepared = dict(zip(todo, await self._encoder.prepare([items[i].image for i in todo], model,
                                                                  c.spec.crop_options, all_faces=multi)))
        for i, result in prepared.items():
            if isinstance(result, NoFace):
                outcomes[i] = IndexOutcome(items[i].id, items[i].uri, ItemStatus.NO_FACE, result)
            elif isinstance(result, RevsearchError):
                outcomes[i] = IndexOutcome(items[i].id, items[i].uri, ItemStatus.FAILED, result)
        live = [i for i in range(len(items)) if outcomes[i] is None]

        # Deduplicate by content: against the collection, then within this batch.
        with self._metrics.stage("dedup"):
            # One lookup for both: the ids of items whose content is stored are looked up too,
            # which changes nothing (such an item is a duplicate before its id is looked at).
            ids = {i: items[i].id or default_id(digests[i]) for i in live}
            owners, existing = await index.owners(sorted({digests[i] for i in live}), sorted({key(ids[i]) for i in live}))
            known = {d: item_of(r) for d, r in owners.items()}
            clashes = {item_of(r) for r in existing}
        first_in_batch: dict[str, int] = {}
        fresh, fresh_ids = [], set()
        for i in live:
            digest = digests[i]
            if digest in known:
                outcomes[i] = IndexOutcome(known[digest], items[i].uri, ItemStatus.DUPLICATE)
            elif digest in first_in_batch:
                outcomes[i] = IndexOutcome(ids[first_in_batch[digest]], items[i].uri, ItemStatus.DUPLICATE)
            elif ids[i] in clashes or ids[i] in fresh_ids:
                outcomes[i] = IndexOutcome(ids[i], items[i].uri, ItemStatus.FAILED, AlreadyExists(
                    f"id {ids[i]!r} is already used for a different image in {c.name!r}"))
            else:
                first_in_batch[digest] = i
                fresh.append(i)
                fresh_ids.add(ids[i])
        if not fresh:
            return outcomes  # type: ignore[return-value]

        try:
            if compact:  # [item, 5 regions, D]: row 0 the item's row, rows 1-4 its crop views
                regions = await self._encoder.embed_copy(model, [prepared[i][0].pixels for i in fresh])
                crops = [(i, k, FaceCrop(prepared[i][0].pixels, None)) for i in fresh for k in range(regions.shape[1])]
                vectors = regions.reshape(-1, regions.shape[-1])
            else:
                crops = [(i, k, crop) for i in fresh for k, crop in enumerate(prepared[i])]
                vectors = await self._encoder.embed(model, [crop for _, _, crop in crops])
            views = _view(c, vectors) if copy else vectors  # the crop views' rows as the views index holds them
            now = int(time.time() * 1000)
            # One insert for the batch, whole or not at all: a request cancelled during it (client
            # gone, deadline passed) gets its rows deleted again once the write has finished.
            records = [Record(id=row_id(ids[i], k) if multi or (copy and k) else ids[i], vector=vectors[n],
                              uri=items[i].uri, sha256=digests[i], model=model.name, model_version=model.version,
                              created_at_ms=now, metadata=items[i].metadata, face_box=crop.box,
                              face_count=len(prepared[i]) if multi else None,
                              local_features=features.get(i) if copy and k == 0 else None)
                       if not (copy and k) else _view_record(row_id(ids[i], k), views[n], now)
                       for n, (i, k, crop) in enumerate(crops)]
            with self._metrics.stage("index"):
                if copy:
                    await _insert_with_views(index, c.views, [r for r, (_, k, _) in zip(records, crops) if k == 0],
                                             [r for r, (_, k, _) in zip(records, crops) if k > 0])
                else:
                    await insert_or_undo(index, records)
        except RevsearchError as exc:
            for i in fresh:
                outcomes[i] = IndexOutcome(ids[i], items[i].uri, ItemStatus.FAILED, exc)
            return outcomes  # type: ignore[return-value]
        for i in fresh:
            outcomes[i] = IndexOutcome(ids[i], items[i].uri, ItemStatus.INDEXED,
                                       face_boxes=[c.box for c in prepared[i] if c.box is not None])
        return outcomes  # type: ignore[return-value]

    # -- search ------------------------------------------------------------------------------
    async def search(self, collection: str, query: Query, options: SearchOptions = SearchOptions()) -> SearchResult:
        [result] = await self.search_batch(collection, [query], options, rpc="SearchImages")
        if isinstance(result, RevsearchError):
            raise result
        return result

    async def search_batch(self, collection: str, queries: list[Query], options: SearchOptions = SearchOptions(),
                           rpc: str = "BatchSearchImages") -> list[SearchResult | RevsearchError]:
        """One result or error per query. Image queries are prepared and embedded as one batch,
        and all query vectors go to the index in one call (one per distinct filter). copy_detection:
        None follows the collection (on where it has copy detection), False searches the global
        vectors only. breadth: the index's search breadth for this call (None: the collection's);
        it, the filters and min_score are checked before any image is decoded. A query's own
        filter that does not parse fails that query only."""
        k = resolve_top_k(options.top_k, self.max_top_k)
        validate_min_score(options.min_score)
        if not queries:
            raise InvalidArgument("queries is empty; give 1 to 64 queries")
        if len(queries) > MAX_BATCH_QUERIES:
            raise InvalidArgument(f"{len(queries)} queries given; at most {MAX_BATCH_QUERIES} per call")
        common = parse_filter(options.filter)
        out: list[SearchResult | RevsearchError | None] = [None] * len(queries)
        groups: dict[str, tuple[Filter | None, list[int]]] = {}
        for i, q in enumerate(queries):
            try:
                f = parse_filter(q.filter) if q.filter else common
            except RevsearchError as exc:
                out[i] = exc
                continue
            groups.setdefault(f.digest if f else "", (f, []))[1].append(i)
        async with self._admission.slots(sum(q.image is not None for q in queries), rpc):
            c = (await self._collections.open(collection, MediaType.IMAGE)).with_breadth(options.breadth)
            answers = await asyncio.gather(*(self._search_group(c, f, [queries[i] for i in members], k,
                                                                options.copy_detection)
                                             for f, members in groups.values()))
        for (_, members), results in zip(groups.values(), answers):
            for i, r in zip(members, results):
                out[i] = _above(r, options.min_score)
        return out  # type: ignore[return-value]

    async def _search_group(self, c: Collection, f: Filter | None, queries: list[Query], k: int,
                            copy_detection: bool | None) -> list[SearchResult | RevsearchError]:
        """The queries of one filter; a filter the store cannot evaluate fails those queries only."""
        try:
            filtered = c.with_filter(f)
        except RevsearchError as exc:
            return [exc] * len(queries)
        return await self._search(filtered, queries, k, copy_detection)

    async def _search(self, c: Collection, queries: list[Query], k: int, copy_detection: bool | None = None
                      ) -> list[SearchResult | RevsearchError]:
        multi = c.spec.crop_mode is CropMode.ALL_FACES
        out: list[SearchResult | RevsearchError | None] = [None] * len(queries)
        vectors: dict[int, np.ndarray] = {}
        boxes: dict[int, FaceBox | None] = {}
        local: dict[int, QueryFeatures] = {}  # copy detection: the image queries' local features

        images = [i for i, q in enumerate(queries) if q.image is not None]
        copy = c.spec.copy_detection and c.views is not None and copy_detection is not False
        if images and (copy or c.spec.compact_copies):  # a compact collection's vectors are copy detection's
            prepared = await asyncio.gather(*(self._copies_of(c).prepare_query(queries[i].image, c.model, copy)
                                              for i in images), return_exceptions=True)
            ok = []
            for i, r in zip(images, prepared):
                if isinstance(r, RevsearchError):
                    out[i] = r
                elif isinstance(r, BaseException):
                    raise r
                else:
                    ok.append(i)
                    if copy:
                        local[i] = r[1]
            if ok:
                pixels = [prepared[images.index(i)][0] for i in ok]
                embedded = ((await self._encoder.embed_copy(c.model, pixels))[:, 0] if c.spec.compact_copies
                            else await self._encoder.embed(c.model, [FaceCrop(p, None) for p in pixels]))
                for i, v in zip(ok, embedded):
                    vectors[i], boxes[i] = v, None
        elif images:
            prepared = await self._encoder.prepare([queries[i].image for i in images], c.model, c.spec.crop_options)
            ok = []
            for i, crops in zip(images, prepared):
                if isinstance(crops, NoFace):
                    out[i] = NoFace(f"the query image has {crops}")
                elif isinstance(crops, RevsearchError):
                    out[i] = crops
                else:
                    ok.append((i, crops[0]))  # the most prominent face: what a query photo is about
            if ok:
                embedded = await self._encoder.embed(c.model, [crop for _, crop in ok])
                for (i, crop), v in zip(ok, embedded):
                    vectors[i], boxes[i] = v, crop.box
        wanted = {i: row_id(q.item_id, 0) if multi else q.item_id for i, q in enumerate(queries)
                  if q.image is None and q.vector is None and q.item_id}
        found = await c.index.get(sorted(set(wanted.values()))) if wanted else {}
        for i, q in enumerate(queries):
            if q.image is not None:
                continue
            try:
                if q.vector is not None:
                    vectors[i] = validate_query_vector(q.vector, c.spec.dimension)[0]
                elif q.item_id:
                    if wanted[i] not in found:
                        raise NotFound(f"no item with id {q.item_id!r} in collection {c.name!r}")
                    vectors[i] = found[wanted[i]].vector
                else:
                    raise InvalidArgument("a query is required: set image, vector or item_id")
            except RevsearchError as exc:
                out[i] = exc
        if vectors:
            order = sorted(vectors)
            matrix = np.stack([vectors[i] for i in order]).astype(np.float32)
            fetch = max(k, CANDIDATES) if local else k
            with self._metrics.stage("search"):
                hits = await (search_items(self._searcher, c.index, matrix, fetch) if multi
                              else self._searcher.search(c.index, matrix, fetch))
            if local:
                hits = await self._copy_rerank(c, order, matrix, hits, local, k)
            backend = self._encoder.backend if images else None
            for i, h in zip(order, hits):
                out[i] = SearchResult(hits=h, model=c.model, backend=backend if i in boxes else None,
                                      query_face_box=boxes.get(i))
        return out  # type: ignore[return-value]

    def _copies_of(self, c: Collection) -> CopyDetector:
        if self._copies is None:  # wiring always gives one; a server without it cannot serve these collections
            raise Unavailable(f"collection {c.name!r} has copy detection, which this server was built without")
        return self._copies

    async def _copy_rerank(self, c: Collection, order: list[int], matrix: np.ndarray, hits: list[list[Hit]],
                           local: dict[int, QueryFeatures], k: int) -> list[list[Hit]]:
        """Copy detection of the image queries among `order`: their items' crop vectors join the
        candidates (an item at its best vector), and up to CANDIDATES of them are verified by local
        features in vector order until the answer is settled (copies.Verifier). The candidates' rows
        (fields and features) are fetched in chunks (_chunk) for the queries still unsettled; a query
        with nothing verified after its first chunk adds the candidates of its zoomed-out vector
        (compact collections: a crop of half a side meets its original's quadrant at that scale).
        Other queries' hits are cut to k."""
        rows = [n for n, i in enumerate(order) if i in local]
        with self._metrics.stage("search"):
            views = await self._search_views(c, matrix[rows], CANDIDATES)
        merged: dict[int, list[Hit]] = {}
        for n, view_hits in zip(rows, views):
            merged[n] = _merge(hits[n], view_hits)
        main = {n: {h.id for h in hits[n]} for n in rows}
        records: dict[str, Record] = {}
        if c.where is not None:  # crop views carry no fields: keep the candidates whose item's row matches
            kept = await self._matching(c, [merged[n][:CANDIDATES + k] for n in rows], [main[n] for n in rows], records)
            merged.update(zip(rows, kept))
        verifiers = {n: Verifier(local[order[n]], merged[n][:CANDIDATES], _sure(hits[n], merged[n])) for n in rows}
        zoomed: set[int] = set()
        first = True
        while True:
            if not first:  # still nothing verified among the first: the zoomed-out vector's candidates join
                lost = [n for n in rows if n not in zoomed and not verifiers[n].settled and not verifiers[n].found]
                zoomed.update(lost)
                await self._add_zoomed_out(c, lost, order, local, verifiers, records)
            # The next candidates of each unsettled query (the first only for a sure one), and at first
            # the view-only items that may be shown (their fields). Fetched in chunks: a query settles
            # after 4 verified candidates on most images, and a row's features are 4 KB.
            todo = {n: verifiers[n].wanted[:_chunk(verifiers[n])] for n in rows if not verifiers[n].settled}
            todo = {n: ids for n, ids in todo.items() if ids}
            if not todo:
                break
            wanted = {i for ids in todo.values() for i in ids}
            if first:
                wanted |= {h.id for n in rows for h in merged[n][:k] if h.id not in main[n]}
            wanted -= records.keys()
            if wanted:
                records.update(await c.index.get(sorted(wanted)))
            await asyncio.gather(*(self._copies_of(c).verify(
                verifiers[n], {i: records[i].local_features if i in records else None for i in ids}, False)
                for n, ids in todo.items()))
            first = False
        # The mirrored query where nothing verified (its features need the first candidates' rows).
        mirror = {n: verifiers[n].mirror_wanted for n in rows if verifiers[n].needs_mirror}
        missing = {i for ids in mirror.values() for i in ids} - records.keys()
        if missing:
            records.update(await c.index.get(sorted(missing)))
        await asyncio.gather(*(self._copies_of(c).verify(
            verifiers[n], {i: records[i].local_features if i in records else None for i in ids}, True)
            for n, ids in mirror.items()))
        out = [h[:k] for h in hits]
        for n in rows:
            seen = {h.id for h in verifiers[n].candidates}
            ranked = verifiers[n].ranked() + [h for h in merged[n][CANDIDATES:] if h.id not in seen]
            # An item whose crop vectors are written but whose row is not (yet, or any more) is left out.
            shown = []
            for h in ranked:
                if h.id in main[n]:
                    shown.append(h)
                elif h.id in records:
                    r = records[h.id]
                    shown.append(replace(h, uri=r.uri, sha256=r.sha256, metadata=r.metadata, face_box=r.face_box))
                if len(shown) == k:
                    break
            out[n] = shown
        return out

    async def _matching(self, c: Collection, hit_lists: list[list[Hit]], main: list[set[str]],
                        records: dict[str, Record]) -> list[list[Hit]]:
        """Per query: the hits of its filtered main search (main), and the crop-view candidates whose
        item's row matches the collection's filter (their rows fetched into records, in one read for
        all the queries; verification needs them anyway)."""
        unknown = sorted({h.id for hits, m in zip(hit_lists, main) for h in hits
                          if h.id not in m and h.id not in records})
        if unknown:
            records.update(await c.index.get(unknown))
        return [[h for h in hits if h.id in m or (h.id in records and c.where.matches(records[h.id]))]
                for hits, m in zip(hit_lists, main)]

    async def _add_zoomed_out(self, c: Collection, rows: list[int], order: list[int], local: dict[int, QueryFeatures],
                              verifiers: dict[int, Verifier], records: dict[str, Record]) -> None:
        """The zoomed-out vectors of these queries (one model call) search the views; what they find
        joins their candidates."""
        rows = [n for n in rows if local[order[n]].zoomed_out is not None]
        if not rows or not c.spec.compact_copies:
            return
        small = await self._encoder.embed_copy(c.model, [local[order[n]].zoomed_out for n in rows])
        with self._metrics.stage("search"):
            found = await self._search_views(c, small[:, 0], ZOOM_CANDIDATES)
        if c.where is not None:
            found = await self._matching(c, [hits[:ZOOM_CANDIDATES] for hits in found], [set()] * len(found), records)
        for n, view_hits in zip(rows, found):
            verifiers[n].add(view_hits)

    async def _search_views(self, c: Collection, vectors: np.ndarray, limit: int) -> list[list[Hit]]:
        """Item hits of whole-image vectors among the collection's crop views: the vectors cut as the
        views hold them (_view), the hits' scores on the rows' scale (an item ranks at its best vector):
        a cosine over the leading k of D whitened dimensions runs higher than over all D, by about
        sqrt(D / k) among close pairs (a least-squares fit on the development half: 0.79 for 80 of 128,
        0.88 for 96)."""
        hits = await search_items(self._searcher, c.views, _view(c, vectors), limit)
        if c.spec.views_dimension >= c.spec.dimension:
            return hits
        scale = float(np.sqrt(c.spec.views_dimension / c.spec.dimension))
        return [[replace(h, score=h.score * scale) for h in row] for row in hits]

    async def delete(self, collection: str, ids: list[str]) -> tuple[list[str], list[str]]:
        """(deleted, not found) item ids; works on image and video collections alike."""
        return await self._collections.delete_items(collection, ids)


def _above(result: SearchResult | RevsearchError, min_score: float | None) -> SearchResult | RevsearchError:
    """The result without its hits scoring below min_score (None: as it is)."""
    if min_score is None or isinstance(result, RevsearchError):
        return result
    return replace(result, hits=[h for h in result.hits if h.score >= min_score])


def _chunk(verifier: Verifier) -> int:
    """How many more candidates' rows to fetch for a query: for a sure one at first its first and the
    PATIENCE after it (the first verifies on most copies, and then those are the ones needed: one
    round trip to the store instead of two; when it does not, three rows were read for nothing),
    PATIENCE once a copy is verified (at most that many more are needed), else FIRST_FETCH."""
    if verifier.sure and not verifier.counts:
        return 1 + PATIENCE
    return PATIENCE if verifier.found else FIRST_FETCH


def _sure(main: list[Hit], merged: list[Hit]) -> bool:
    """Whether the rows' vector ranking is sure of its first item (copies.SURE_SCORE, SURE_GAP) and
    that item leads the candidates too."""
    if not main or not merged or merged[0].id != main[0].id:
        return False
    second = main[1].score if len(main) > 1 else -1.0
    return main[0].score >= SURE_SCORE and main[0].score - second >= SURE_GAP


def _view(c: Collection, vectors: np.ndarray) -> np.ndarray:
    """Whole-image or region vectors as the collection's crop views hold them (their leading
    CollectionSpec.views_dimension dimensions)."""
    return np.ascontiguousarray(leading(vectors, c.spec.views_dimension))


def _merge(main: list[Hit], views: list[Hit]) -> list[Hit]:
    """Item hits of the rows and of the crop views, each item once at its best score (best first);
    an item's fields come from its row's hit where there is one (view rows carry only the vector)."""
    best: dict[str, Hit] = {h.id: h for h in main}
    for h in views:
        if h.id not in best or h.score > best[h.id].score:
            best[h.id] = replace(best.get(h.id, h), score=h.score)
    return sorted(best.values(), key=lambda h: -h.score)


def _view_record(row: str, vector: np.ndarray, now_ms: int) -> Record:
    """A crop view's row: its vector and key only (an item's fields live on its own row: the views
    index is searched for candidates, whose fields come from their rows)."""
    return Record(id=row, vector=vector, uri="", sha256="", model="", model_version="", created_at_ms=now_ms)


async def _insert_with_views(index: VectorIndex, views: VectorIndex, records: list[Record], view_records: list[Record]
                             ) -> None:
    """The items' crop vectors, then their rows: all or nothing (the crop vectors are removed again
    when the rows cannot be written; an item is only found once its row is there)."""
    await insert_or_undo(views, view_records)
    try:
        await insert_or_undo(index, records)
    except BaseException:
        try:
            await views.delete([r.id for r in view_records])
        except RevsearchError:
            pass
        raise


async def search_items(searcher: SearchCoalescer, index: VectorIndex, queries: np.ndarray, k: int
                       ) -> list[list[Hit]]:
    """Top k items when items have several rows: fetch more rows until k distinct items are
    found or the collection (or Milvus's limit) is exhausted."""
    fetch = min(MAX_ROW_FETCH, max(4 * k, k + 32))
    while True:
        rows = await searcher.search(index, queries, fetch)
        items = [collapse_hits(r, k) for r in rows]
        short = any(len(it) < k and len(r) == fetch for it, r in zip(items, rows))
        if not short or fetch == MAX_ROW_FETCH:
            return items
        fetch = min(MAX_ROW_FETCH, fetch * 4)
