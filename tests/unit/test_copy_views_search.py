"""ImageSearch._search_views against a real exact-KNN views index: a compact collection of this release
searches its crop views with the query's leading 80 dimensions and puts their scores on the item
vectors' scale (x sqrt(80 / 128)); a collection created before (128-d views) keeps plain cosines."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from revsearch_server.catalog import COPY_VECTORS_REGIONS, CollectionSpec
from revsearch_server.collection_service import Collection
from revsearch_server.copy_vectors import VIEW_DIMENSION, leading
from revsearch_server.domain import CropMode, IndexKind
from revsearch_server.index.base import Record
from revsearch_server.index.coalescer import SearchCoalescer
from revsearch_server.index.exact_knn import ExactKnnIndex
from revsearch_server.rows import row_id
from revsearch_server.usecases.images import ImageSearch


def _spec(view_dimension: int) -> CollectionSpec:
    return CollectionSpec(name="c", model="efficientnet_lite0", model_version="1", dimension=128,
                          crop_mode=CropMode.NONE, index_kind=IndexKind.EXACT_KNN, created_at_ms=1, description="",
                          model_trained=True, layout=3, copy_detection=True, copy_views=4,
                          copy_vectors=COPY_VECTORS_REGIONS, view_dimension=view_dimension)


def _search(tmp_path, view_dimension: int, stored: np.ndarray, query: np.ndarray):
    async def run():
        spec = _spec(view_dimension)
        (tmp_path / "views").mkdir()
        views = ExactKnnIndex(tmp_path / "views", spec.views_dimension)
        await views.insert([Record(id=row_id(f"item{n}", 1), vector=leading(v, spec.views_dimension), uri="",
                                   sha256="", model="", model_version="", created_at_ms=1)
                            for n, v in enumerate(stored)])
        search = ImageSearch(None, None, SearchCoalescer(), None, max_top_k=20)  # only the searcher is used
        return await search._search_views(Collection(spec, views, None, views), query[None, :], 2)

    return asyncio.run(run())


@pytest.fixture
def vectors() -> np.ndarray:
    v = np.random.default_rng(3).standard_normal((3, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_crop_view_of_this_release_scores_on_the_item_vectors_scale(tmp_path, vectors):
    hits = _search(tmp_path, VIEW_DIMENSION, vectors, vectors[1])[0]
    assert hits[0].id == "item1"
    assert hits[0].score == pytest.approx(math.sqrt(VIEW_DIMENSION / 128), abs=1e-4)  # 0.79: cosine 1 over 80-d
    second = hits[1]
    n = int(second.id.removeprefix("item"))
    expected = float(leading(vectors[n], 80) @ leading(vectors[1], 80)) * math.sqrt(80 / 128)
    assert second.score == pytest.approx(expected, abs=1e-4)

def test_a_crop_view_of_an_earlier_collection_keeps_its_cosine(tmp_path, vectors):
    hits = _search(tmp_path, 0, vectors, vectors[2])[0]
    assert hits[0].id == "item2" and hits[0].score == pytest.approx(1.0, abs=1e-4)
