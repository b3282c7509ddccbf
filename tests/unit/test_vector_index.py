"""A collection's vector index (vector_index.py): defaults, limits, what a store builds, the search
breadth per request, and the settings stored with a collection."""

from __future__ import annotations

import pytest

from revsearch_server.catalog import CollectionSpec
from revsearch_server.domain import CropMode, IndexKind
from revsearch_server.errors import InvalidArgument
from revsearch_server.vector_index import CHOOSABLE, IndexRequest, IndexType, VectorIndexSpec

SERVER = "milvus:http://x:19530"


def resolve(**asked) -> VectorIndexSpec:
    return VectorIndexSpec.resolve(IndexRequest(**asked), CHOOSABLE, IndexType.HNSW, SERVER)


def test_an_unset_index_on_a_server_is_hnsw_with_every_default_filled_in():
    spec = resolve()
    assert spec == VectorIndexSpec(IndexType.HNSW, hnsw_m=16, hnsw_ef_construction=200, search_breadth=128)
    assert spec.milvus_index() == ("HNSW", {"M": 16, "efConstruction": 200})
    assert spec.detail() == "HNSW (M 16, efConstruction 200), searched with ef 128"


def test_each_type_takes_its_own_parameters_and_defaults():
    assert resolve(type=IndexType.IVF_SQ8, ivf_nlist=256) == VectorIndexSpec(IndexType.IVF_SQ8, ivf_nlist=256,
                                                                           search_breadth=16)
    assert resolve(type=IndexType.IVF_FLAT, ivf_nlist=8).search_breadth == 8  # nprobe's default, capped at nlist
    assert resolve(type=IndexType.DISKANN) == VectorIndexSpec(IndexType.DISKANN, search_breadth=100)
    assert resolve(type=IndexType.FLAT) == VectorIndexSpec(IndexType.FLAT)
    assert resolve(type=IndexType.IVF_FLAT, ivf_nlist=64).milvus_index() == ("IVF_FLAT", {"nlist": 64})


def test_a_type_the_store_does_not_build_names_the_ones_it_does():
    with pytest.raises(InvalidArgument, match="HNSW is not supported by milvus-lite:x.db; it supports FLAT"):
        VectorIndexSpec.resolve(IndexRequest(IndexType.HNSW), (IndexType.FLAT,), IndexType.FLAT, "milvus-lite:x.db")
    with pytest.raises(InvalidArgument, match="AUTOINDEX is not supported"):
        resolve(type=IndexType.AUTOINDEX)


@pytest.mark.parametrize("asked, message", [
    (dict(type=IndexType.HNSW, hnsw_m=3), r"hnsw_m is 3; use 4..64"),
    (dict(type=IndexType.HNSW, hnsw_ef_construction=600), r"hnsw_ef_construction is 600; use 8..512"),
    (dict(type=IndexType.IVF_FLAT, ivf_nlist=0), r"ivf_nlist is 0; use 1..65536"),
    (dict(type=IndexType.IVF_FLAT, ivf_nlist=32, search_breadth=33), r"at most its nlist 32"),
    (dict(type=IndexType.HNSW, search_breadth=0), r"search_breadth is 0"),
    (dict(type=IndexType.FLAT, search_breadth=10), r"does not apply to a FLAT index"),
    (dict(type=IndexType.DISKANN, ivf_nlist=10), r"ivf_nlist does not apply to a DISKANN index"),
    (dict(type=IndexType.HNSW, ivf_nlist=10), r"ivf_nlist does not apply to a HNSW index"),
])
def test_a_value_out_of_range_or_of_another_type_is_invalid_and_names_the_limit(asked, message):
    with pytest.raises(InvalidArgument, match=message):
        resolve(**asked)


def test_a_request_breadth_is_checked_and_never_below_top_k_where_the_index_needs_that():
    hnsw = resolve()
    assert hnsw.breadth(None) == 128 and hnsw.breadth(40) == 40
    with pytest.raises(InvalidArgument, match="ef of this HNSW index"):
        hnsw.breadth(40_000)
    assert hnsw.milvus_search_params(top_k=200, breadth=40)["params"] == {"ef": 200}
    ivf = resolve(type=IndexType.IVF_SQ8, ivf_nlist=100)
    assert ivf.milvus_search_params(top_k=10, breadth=7)["params"] == {"nprobe": 7}
    with pytest.raises(InvalidArgument, match="at most its nlist 100"):
        ivf.breadth(101)
    assert resolve(type=IndexType.DISKANN).milvus_search_params(top_k=300)["params"] == {"search_list": 300}
    flat = VectorIndexSpec()
    assert flat.breadth(99999) == 0 and flat.milvus_search_params(10) == {"metric_type": "COSINE"}


def test_collections_created_before_the_choice_keep_what_their_store_built():
    assert VectorIndexSpec.legacy(lite=True) == VectorIndexSpec(IndexType.FLAT)
    legacy = VectorIndexSpec.legacy(lite=False)
    assert legacy.type is IndexType.AUTOINDEX and legacy.milvus_search_params(10)["params"] == {"ef": 256}
    assert "created before the index could be chosen" in legacy.detail()


def test_the_index_is_stored_with_the_collection_and_old_settings_have_none():
    spec = CollectionSpec(name="c", model="m", model_version="1", dimension=8, crop_mode=CropMode.NONE,
                          index_kind=IndexKind.MILVUS, created_at_ms=0, description="", model_trained=True,
                          vector_index=resolve(type=IndexType.IVF_SQ8, ivf_nlist=512))
    again = CollectionSpec.from_json(spec.to_json())
    assert again == spec and again.vector_index.ivf_nlist == 512
    without = CollectionSpec.from_json(spec.to_json().split(', "vector_index"')[0] + "}")  # as written before
    assert without is not None and without.vector_index is None


def test_exist_ok_compares_the_index_only_when_one_was_asked_for():
    a = CollectionSpec(name="c", model="m", model_version="1", dimension=8, crop_mode=CropMode.NONE,
                       index_kind=IndexKind.MILVUS, created_at_ms=0, description="", model_trained=True,
                       vector_index=resolve())
    b = CollectionSpec(**{**a.__dict__, "vector_index": resolve(type=IndexType.IVF_FLAT)})
    assert a.same_settings(b) and not a.same_settings(b, index_asked=True)
