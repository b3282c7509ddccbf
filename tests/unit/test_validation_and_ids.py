"""Id, name, top-k and query-vector rules of the pipeline."""

import numpy as np
import pytest

from revsearch_server.catalog import CollectionSpec, validate_name
from revsearch_server.domain import CropMode, IndexKind
from revsearch_server.errors import InvalidArgument
from revsearch_server.validation import default_id, resolve_top_k, validate_item_fields, validate_query_vector


def test_the_default_id_is_the_first_32_hex_characters_of_the_sha256():
    digest = "ab" * 32
    assert default_id(digest) == "ab" * 16


@pytest.mark.parametrize("name", ["photos", "A", "lfw_2024", "x" * 63])
def test_valid_collection_names_pass(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "with-hyphen", "sp ace", "x" * 64, "ü"])
def test_invalid_collection_names_are_rejected(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_unset_top_k_means_twenty_and_zero_or_too_many_are_rejected():
    assert resolve_top_k(None, 1000) == 20
    assert resolve_top_k(5, 1000) == 5
    for bad in (0, 1001):
        with pytest.raises(InvalidArgument, match="between 1 and 1000"):
            resolve_top_k(bad, 1000)


def test_item_ids_uris_and_metadata_are_bounded():
    validate_item_fields("img-01:a.b_c", "x", {})
    with pytest.raises(InvalidArgument, match="invalid id"):
        validate_item_fields("has space", "", {})
    with pytest.raises(InvalidArgument, match="uri"):
        validate_item_fields("", "u" * 3000, {})
    with pytest.raises(InvalidArgument, match="metadata"):
        validate_item_fields("", "", {"k": "v" * 20000})


def test_a_query_vector_must_match_the_dimension_and_be_finite_and_nonzero():
    out = validate_query_vector([3.0, 4.0], 2)
    assert np.allclose(out, [[0.6, 0.8]])
    with pytest.raises(InvalidArgument, match="has 3 values.*2"):
        validate_query_vector([1.0, 2.0, 3.0], 2)
    with pytest.raises(InvalidArgument, match="NaN"):
        validate_query_vector([float("nan"), 1.0], 2)
    with pytest.raises(InvalidArgument, match="zeros"):
        validate_query_vector([0.0, 0.0], 2)


def test_a_collection_spec_round_trips_through_its_json_description():
    spec = CollectionSpec(name="c", model="resnet50", model_version="1", dimension=2048, crop_mode=CropMode.NONE,
                          index_kind=IndexKind.MILVUS, created_at_ms=1, description="d", model_trained=False)
    assert CollectionSpec.from_json(spec.to_json()) == spec
    assert CollectionSpec.from_json("someone else's collection") is None
