"""The item API through an in-process server (Milvus Lite and exact KNN, the fake inference backend):
filtered searches answer the true top_k among the matching items, GetImages, ListImages with pages,
UpdateImages by update mask, min_score, and the errors of bad filters, tokens and updates."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from revsearch.client import VectorInput, struct_to_dict
from revsearch.errors import AlreadyExistsError, InvalidArgumentError
from revsearch.v1 import search_service_pb2 as pb

N = 400
HOSTILE = '" or id != "'  # a value that would end the literal if it were pasted into an expression


def _metadata(i: int) -> dict:
    m = {"tenant": f"t{i % 10}", "n": i, "even": i % 2 == 0, "tags": ["red" if i % 3 == 0 else "blue"]}
    if i % 5 == 0:
        m["owner"] = {"team": "search" if i % 10 == 0 else "infra"}
    if i == 7:
        m["note"] = HOSTILE
    return m


def _matches(i: int, predicate) -> bool:
    return predicate(_metadata(i))


@pytest.fixture(scope="module", params=["milvus", "exact_knn"])
def items(request, fake_client):
    """(collection name, vectors): N imported items with known metadata."""
    name = f"items_{request.param}"
    c = fake_client.create_collection(name, index_backend=request.param, exist_ok=True).collection
    vectors = np.random.default_rng(3).standard_normal((N, c.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    resp = fake_client.import_vectors(name, [VectorInput(id=f"item{i:04d}", vector=v, uri=f"archive://{i}",
                                                         metadata=_metadata(i)) for i, v in enumerate(vectors)],
                                      model=c.model, model_version=c.model_version)
    assert resp.imported + resp.existing == N
    return name, vectors


FILTERS = [
    ('metadata.tenant = "t3"', lambda m: m["tenant"] == "t3"),
    ('metadata.n < 100 AND metadata.even = true', lambda m: m["n"] < 100 and m["even"]),
    ('metadata.tenant = "t1" OR metadata.tenant = "t2" AND metadata.n >= 200',
     lambda m: (m["tenant"] in ("t1", "t2")) and m["n"] >= 200),  # AIP-160: OR binds tighter than AND
    ('metadata.owner.team = "search"', lambda m: m.get("owner", {}).get("team") == "search"),
    ('metadata.owner.team != "search"', lambda m: "owner" in m and m["owner"]["team"] != "search"),
    ('NOT metadata.owner.team = "search"', lambda m: m.get("owner", {}).get("team") != "search"),
    ('metadata.tags:"red"', lambda m: "red" in m["tags"]),
]


@pytest.mark.parametrize("text,predicate", FILTERS, ids=[f for f, _ in FILTERS])
def test_a_filtered_search_answers_the_true_top_k_among_the_matching_items(fake_client, items, text, predicate):
    name, vectors = items
    query = vectors[11] + 0.5 * vectors[12]
    hits = fake_client.search(name, vector=query, top_k=10, filter=text).hits
    matching = [i for i in range(N) if _matches(i, predicate)]
    scores = vectors[matching] @ (query / np.linalg.norm(query))
    expected = [f"item{matching[j]:04d}" for j in np.argsort(-scores)[:10]]
    assert [h.id for h in hits] == expected
    for h in hits:
        assert predicate(struct_to_dict(h.metadata))


def test_a_key_no_item_has_matches_nothing_and_is_no_error(fake_client, items):
    name, vectors = items
    assert list(fake_client.search(name, vector=vectors[0], filter='metadata.colour = "red"').hits) == []


def test_a_value_that_tries_to_break_out_of_its_literal_matches_only_as_the_text_it_is(fake_client, items):
    name, vectors = items
    quoted = json.dumps(HOSTILE)  # a filter string literal with its quotes escaped
    hits = fake_client.search(name, vector=vectors[0], top_k=50, filter=f"metadata.note = {quoted}").hits
    assert [h.id for h in hits] == ["item0007"]
    for attempt in ['metadata.note = "" or id != ""', 'uri = "x" || true', "metadata.note = 'a' ) or (1 == 1"]:
        with pytest.raises(InvalidArgumentError):
            fake_client.search(name, vector=vectors[0], filter=attempt)


def test_id_uri_and_create_time_can_be_filtered_on(fake_client, items):
    name, vectors = items
    assert [h.id for h in fake_client.search(name, vector=vectors[5], filter='id = "item0042"').hits] == ["item0042"]
    assert [h.id for h in fake_client.search(name, vector=vectors[5], filter='uri = "archive://9"').hits] == ["item0009"]
    assert len(fake_client.search(name, vector=vectors[5], top_k=5, filter='create_time > "2020-01-01T00:00:00Z"').hits) == 5
    assert list(fake_client.search(name, vector=vectors[5], filter='create_time < "2020-01-01T00:00:00Z"').hits) == []


@pytest.mark.parametrize("bad,where", [("metadata.tenant = ", "position"), ('metadata.tenant = "t1', "position"),
                                       ("colour = 1", "metadata"), ("(" * 17 + "metadata.n = 1" + ")" * 17, "16"),
                                       ('metadata.n = 1 AND ' * 300 + "metadata.n = 1", "4096")])
def test_a_filter_that_does_not_parse_or_is_too_large_is_invalid_argument_saying_where(fake_client, items, bad, where):
    name, vectors = items
    with pytest.raises(InvalidArgumentError) as caught:
        fake_client.search(name, vector=vectors[0], filter=bad)
    assert where in caught.value.details and "Traceback" not in caught.value.details
    assert fake_client.search(name, vector=vectors[0], top_k=1).hits  # the server goes on


def test_each_query_of_a_batch_may_have_its_own_filter_and_a_bad_one_fails_only_itself(fake_client, items):
    name, vectors = items
    resp = fake_client.batch_search(name, [{"vector": vectors[3], "filter": 'metadata.tenant = "t3"'},
                                           {"vector": vectors[4], "filter": "metadata.n = "},
                                           {"vector": vectors[4]}], top_k=3, filter='metadata.tenant = "t4"')
    assert resp.results[0].hits[0].id == "item0003"
    assert all(h.metadata["tenant"] == "t3" for h in resp.results[0].hits)
    assert resp.results[1].error.code_name == "INVALID_ARGUMENT" and "position" in resp.results[1].error.message
    assert all(h.metadata["tenant"] == "t4" for h in resp.results[2].hits) and resp.results[2].hits[0].id == "item0004"


def test_min_score_leaves_out_the_hits_below_it(fake_client, items):
    name, vectors = items
    hits = fake_client.search(name, vector=vectors[8], top_k=20, min_score=0.5).hits
    assert [h.id for h in hits] == ["item0008"] and hits[0].score > 0.99
    with pytest.raises(InvalidArgumentError, match="min_score"):
        fake_client.search(name, vector=vectors[8], min_score=1.5)


def test_get_images_returns_the_stored_items_in_the_order_asked_and_names_the_missing(fake_client, items):
    name, vectors = items
    resp = fake_client.get_images(name, ["item0009", "nope", "item0002"], include_vectors=True)
    assert [i.id for i in resp.images] == ["item0009", "item0002"] and list(resp.not_found_ids) == ["nope"]
    first = resp.images[0]
    assert first.uri == "archive://9" and struct_to_dict(first.metadata)["tenant"] == "t9" and first.imported
    assert first.create_time.seconds > 1_700_000_000
    np.testing.assert_allclose(np.array(first.vector.values), vectors[9], atol=2e-3)
    assert not fake_client.get_images(name, ["item0009"]).images[0].HasField("vector")
    with pytest.raises(InvalidArgumentError, match="1000"):
        fake_client.get_images(name, [f"x{i}" for i in range(1001)])


def test_list_images_pages_through_every_item_once_in_id_order(fake_client, items):
    name, _ = items
    seen, token, pages = [], "", 0
    while True:
        page = fake_client.list_images(name, page_size=64, page_token=token)
        seen += [i.id for i in page.images]
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) and len(seen) >= N and pages == -(-len(seen) // 64)


def test_a_filtered_listing_returns_exactly_the_matching_items(fake_client, items):
    name, _ = items
    listed = [i.id for i in fake_client.iter_images(name, filter='metadata.tenant = "t3" AND metadata.n < 200',
                                                    page_size=7)]
    assert listed == [f"item{i:04d}" for i in range(N) if i % 10 == 3 and i < 200]


def test_listing_while_items_are_added_returns_each_item_that_existed_at_the_start_once(fake_client, items):
    name, vectors = items
    before = {i.id for i in fake_client.iter_images(name, page_size=1000)}
    added, seen, token = 0, [], ""
    while True:
        page = fake_client.list_images(name, page_size=50, page_token=token)
        seen += [i.id for i in page.images]
        # new ids that sort before, among and after the ones listed so far
        fresh = [VectorInput(id=f"{p}new{added}", vector=vectors[added]) for p in ("a", "item0200x", "zz")]
        c = fake_client.describe_collection(name)
        fake_client.import_vectors(name, fresh, model=c.model, model_version=c.model_version)
        added += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) and before <= set(seen)
    fake_client.delete(name, [i.id for i in fake_client.iter_images(name, filter='id > "item9"')] +
                       [i.id for i in fake_client.iter_images(name, filter='id < "item"')] +
                       [i.id for i in fake_client.iter_images(name, filter='id > "item0200x"  id < "item0201"')])
    assert {i.id for i in fake_client.iter_images(name)} == before


def test_page_size_zero_is_the_default_and_over_the_limit_is_capped_and_said(fake_client, items):
    name, _ = items
    assert fake_client.list_images(name).page_size == 100 and len(fake_client.list_images(name).images) == 100
    assert fake_client.list_images(name, page_size=5000).page_size == 1000


def test_a_page_token_of_another_collection_filter_or_a_tampered_one_is_invalid_argument(fake_client, items):
    name, _ = items
    other = "items_exact_knn" if name == "items_milvus" else "items_milvus"
    fake_client.create_collection(other, index_backend="exact_knn" if other.endswith("knn") else "milvus",
                                  exist_ok=True)
    token = fake_client.list_images(name, page_size=3, filter="metadata.n >= 0").next_page_token
    for call, words in [(lambda: fake_client.list_images(other, page_token=token, filter="metadata.n >= 0"),
                         "collection"),
                        (lambda: fake_client.list_images(name, page_token=token), "filter"),
                        (lambda: fake_client.list_images(name, page_token=token[:-3] + "AAA", filter="metadata.n >= 0"),
                         "damaged"),
                        (lambda: fake_client.list_images(name, page_token="not a token!"), "token")]:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert words in caught.value.details
    assert fake_client.list_images(name, page_token=token, filter=" metadata.n>=0 ").images  # the same filter


def test_update_images_merges_keys_by_mask_replaces_without_one_and_keeps_the_vector(fake_client, items):
    name, vectors = items
    resp = fake_client.update_images(name, [{"id": "item0021", "metadata": {"tenant": "moved", "extra": {"a": 1}}},
                                            {"id": "missing"}], ["metadata.tenant", "metadata.extra.a", "metadata.n"])
    assert [pb.UpdateStatus.Name(r.status) for r in resp.results] == ["UPDATE_STATUS_UPDATED", "UPDATE_STATUS_NOT_FOUND"]
    merged = struct_to_dict(fake_client.get_images(name, ["item0021"]).images[0].metadata)
    assert merged["tenant"] == "moved" and merged["extra"] == {"a": 1} and "n" not in merged and merged["tags"] == ["red"]
    hit = fake_client.search(name, vector=vectors[21], top_k=1, filter='metadata.tenant = "moved"').hits[0]
    assert hit.id == "item0021" and hit.score > 0.99  # the vector is the one stored, not re-embedded
    fake_client.update_images(name, [{"id": "item0021", "metadata": {"only": True}, "uri": "new://21"}])
    image = fake_client.get_images(name, ["item0021"]).images[0]
    assert struct_to_dict(image.metadata) == {"only": True} and image.uri == "new://21"
    fake_client.update_images(name, [{"id": "item0021", "metadata": _metadata(21), "uri": "archive://21"}])


def test_metadata_over_16_kib_fails_that_update_only(fake_client, items):
    name, _ = items
    resp = fake_client.update_images(name, [{"id": "item0030", "metadata": {"big": "x" * 17000}},
                                            {"id": "item0031", "metadata": {"small": 1}}], ["metadata.big", "metadata.small"])
    assert resp.results[0].status == pb.UPDATE_STATUS_FAILED and "16384" in resp.results[0].error.message
    assert resp.results[1].status == pb.UPDATE_STATUS_UPDATED
    assert "big" not in struct_to_dict(fake_client.get_images(name, ["item0030"]).images[0].metadata)


@pytest.mark.parametrize("updates,mask,words", [([], [], "empty"), ([{"id": "a"}, {"id": "a"}], [], "more than once"),
                                                ([{"id": "a"}], ["vector"], "cannot be updated"),
                                                ([{"id": "bad id!"}], [], "invalid id")])
def test_a_bad_update_call_is_invalid_argument_and_changes_nothing(fake_client, items, updates, mask, words):
    name, _ = items
    with pytest.raises(InvalidArgumentError, match=words):
        fake_client.update_images(name, updates, mask)


def test_an_item_stays_searchable_while_its_metadata_is_updated(fake_client, items):
    name, vectors = items
    stop, misses, rounds = threading.Event(), [], []

    def search():
        while not stop.is_set():
            hits = fake_client.search(name, vector=vectors[40], top_k=1).hits
            rounds.append(1)
            if not hits or hits[0].id != "item0040":
                misses.append(list(hits))

    t = threading.Thread(target=search)
    t.start()
    for n in range(30):
        fake_client.update_images(name, [{"id": "item0040", "metadata": {"version": n}}], ["metadata.version"])
    stop.set()
    t.join()
    assert misses == [] and len(rounds) > 5
    assert struct_to_dict(fake_client.get_images(name, ["item0040"]).images[0].metadata)["version"] == 29


@pytest.fixture(scope="module")
def faces(fake_client):
    """A crop-mode "all" collection (rows keyed <id>~<k>) of 12 images, each with one (fake) face."""
    from revsearch.client import ImageInput
    from tests.helpers import encode, synthetic_image

    fake_client.create_collection("item_faces", crop_mode="all", exist_ok=True)
    items = [ImageInput(image=encode(synthetic_image(100 + i), "JPEG", quality=90), id=f"face{i:02d}",
                        uri=f"people://{i}", metadata={"group": "a" if i < 6 else "b"}) for i in range(12)]
    statuses = [r.status for r in fake_client.index_images("item_faces", items)]
    assert set(statuses) <= {pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE}
    return items


def test_items_with_several_rows_are_listed_got_filtered_and_updated_as_items(fake_client, faces):
    listed = [i.id for i in fake_client.iter_images("item_faces", page_size=5)]
    assert listed == [f"face{i:02d}" for i in range(12)]
    assert [i.id for i in fake_client.iter_images("item_faces", filter='metadata.group = "b"', page_size=4)] == \
        [f"face{i:02d}" for i in range(6, 12)]
    got = fake_client.get_images("item_faces", ["face03"]).images[0]
    assert got.uri == "people://3" and len(got.face_boxes) == 1
    query = faces[3].image
    assert [h.id for h in fake_client.search("item_faces", image=query, top_k=3, filter='id = "face03"').hits] == ["face03"]
    assert all(h.id != "face03" for h in fake_client.search("item_faces", image=query, top_k=11,
                                                            filter='id != "face03"').hits)
    with pytest.raises(InvalidArgumentError, match="one row per item"):
        fake_client.search("item_faces", image=query, filter='id < "face05"')
    fake_client.update_images("item_faces", [{"id": "face03", "metadata": {"group": "c"}}])
    assert [h.id for h in fake_client.search("item_faces", image=query, top_k=3, filter='metadata.group = "c"').hits] \
        == ["face03"]


def test_what_milvus_lite_cannot_evaluate_is_refused_there_by_name_and_answered_by_exact_knn(fake_client, items):
    name, vectors = items
    for text, predicate in [("NOT metadata.n < 390", lambda m: not m["n"] < 390),
                            ("metadata.owner:*", lambda m: "owner" in m)]:
        if name == "items_milvus":
            with pytest.raises(InvalidArgumentError, match="Milvus Lite") as caught:
                fake_client.search(name, vector=vectors[0], filter=text)
            assert "exact_knn" in caught.value.details
        else:
            listed = [i.id for i in fake_client.iter_images(name, filter=text)]
            assert listed == [f"item{i:04d}" for i in range(N) if _matches(i, predicate)]


@pytest.fixture(scope="module")
def keyed(fake_client):
    """The items again, in a Milvus collection with filter keys (columns for tenant and note)."""
    c = fake_client.create_collection("items_keyed", filter_keys=["tenant", "note"], exist_ok=True).collection
    vectors = np.random.default_rng(3).standard_normal((N, c.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fake_client.import_vectors("items_keyed", [VectorInput(id=f"item{i:04d}", vector=v, metadata=_metadata(i))
                                               for i, v in enumerate(vectors)], model=c.model, model_version=c.model_version)
    return vectors


@pytest.mark.parametrize("text,predicate", FILTERS + [
    ('NOT metadata.tenant < "t5"', lambda m: not m["tenant"] < "t5"),
    (f"metadata.note = {json.dumps(HOSTILE)} OR metadata.tenant >= \"t8\"", lambda m: m.get("note") == HOSTILE
     or m["tenant"] >= "t8")], ids=[f for f, _ in FILTERS] + ["not-tenant", "hostile-or"])
def test_filter_keys_change_how_a_filter_runs_not_what_it_finds(fake_client, keyed, text, predicate):
    query = keyed[11] + 0.5 * keyed[12]
    hits = fake_client.search("items_keyed", vector=query, top_k=10, filter=text).hits
    matching = [i for i in range(N) if _matches(i, predicate)]
    scores = keyed[matching] @ (query / np.linalg.norm(query))
    assert [h.id for h in hits] == [f"item{matching[j]:04d}" for j in np.argsort(-scores)[:10]]
    assert [i.id for i in fake_client.iter_images("items_keyed", filter=text, page_size=300)] == \
        [f"item{i:04d}" for i in matching]


def test_filter_keys_are_described_kept_through_updates_and_checked(fake_client, keyed):
    assert list(fake_client.describe_collection("items_keyed").filter_keys) == ["tenant", "note"]
    fake_client.update_images("items_keyed", [{"id": "item0005", "metadata": {"tenant": "zz"}}], ["metadata.tenant"])
    hits = fake_client.search("items_keyed", vector=keyed[5], top_k=3, filter='metadata.tenant = "zz"').hits
    assert [h.id for h in hits] == ["item0005"]
    with pytest.raises(AlreadyExistsError):
        fake_client.create_collection("items_keyed", filter_keys=["other"], exist_ok=True)
    assert fake_client.create_collection("items_keyed", exist_ok=True).created is False  # no keys asked: as it is
    for bad in (["a-b"], ["t", "t"], [f"k{i}" for i in range(9)], ["1x"]):
        with pytest.raises(InvalidArgumentError, match="filter"):
            fake_client.create_collection("items_bad_keys", filter_keys=bad)
