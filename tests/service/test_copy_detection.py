"""Copy detection through the real server with the real efficientnet_lite0 (in-process ONNX Runtime)
on 50 shared photos: the re-rank finds the original of a 50% crop and of a rotated copy, a 16x16
query still answers, and the switch off gives the plain global ranking."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch.copy_edits import edited_bytes
from revsearch_server import catalog, copies
from revsearch_server.models import BUILD_INFO

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
MODEL = ROOT / "model_repository" / "efficientnet_lite0"

pytestmark = pytest.mark.skipif(not (MODEL / BUILD_INFO).is_file() or not PHOTOS.is_dir(),
                                reason="efficientnet_lite0 is not built (make models) or ../shared/data is missing")


@pytest.fixture(scope="module")
def indexed(start_server):
    server = start_server(triton_url="off", default_model="auto")  # the server's own default
    photos = sorted(PHOTOS.glob("*.jpg"))[::6][:50]
    with SearchClient(server.address, timeout=120) as client:
        created = client.create_collection("copies")  # no model: the default
        responses = list(client.index_images("copies", (ImageInput.from_path(p) for p in photos)))
        yield client, created.collection, {p: r.id for p, r in zip(photos, responses)}


def test_auto_default_is_the_trained_general_image_model_and_says_why(indexed):
    client, collection, _ = indexed
    info = client.info()
    trained = {m.name for m in info.models if m.trained}
    if "resnet50" not in trained:  # no ImageNet weights for resnet50 on this machine
        assert info.default_model == "efficientnet_lite0" == collection.model
        assert info.default_model_reason.startswith("auto: efficientnet_lite0") and "resnet50" in info.default_model_reason


def test_collection_has_copy_detection(indexed):
    client, collection, ids = indexed
    assert collection.copy_detection and collection.copy_detection_detail.startswith("on")
    # Compact: five 128-d vectors from one forward pass; float32 on Milvus Lite by default (its float16
    # search is 4-5x slower; --milvus-float16 on below).
    assert collection.dimension == 128 and "one forward pass" in collection.copy_detection_detail
    assert "float32" in collection.copy_detection_detail
    # This release's compact layout: 80-d crop views, local features 7 bits a character.
    assert "crop vectors (80-d)" in collection.copy_detection_detail and "format 3" in collection.copy_detection_detail
    assert len(set(ids.values())) == 50
    described = client.describe_collection("copies")
    assert described.item_count == 50  # one global row per item; the crop vectors are apart


@pytest.mark.parametrize("edit", ["crop50", "rotate", "mirror+crop70", "caption"])
def test_finds_the_original_of_an_edited_copy(indexed, edit):
    client, _, ids = indexed
    found = verified = 0
    for photo in list(ids)[:10]:
        resp = client.search("copies", image=edited_bytes(photo.read_bytes(), edit), top_k=5)
        found += resp.hits[0].id == ids[photo]
        verified += resp.hits[0].id == ids[photo] and resp.hits[0].matched_keypoints >= copies.MIN_INLIERS
    assert found >= 9, f"{edit}: {found} of 10"
    assert verified >= (4 if edit == "crop50" else 7), f"{edit}: {verified} of 10 verified by local features"


def test_switch_off_gives_the_global_ranking(indexed):
    client, _, ids = indexed
    photo = next(iter(ids))
    query = edited_bytes(photo.read_bytes(), "crop50")
    off = client.search("copies", image=query, top_k=10, copy_detection=False)
    embedded = client.embed(query, collection="copies")
    by_vector = client.search("copies", vector=list(embedded.vector), top_k=10)
    assert [h.id for h in off.hits] == [h.id for h in by_vector.hits]
    assert all(h.matched_keypoints == 0 for h in off.hits)


def test_a_filtered_copy_search_verifies_only_items_that_match_and_finds_the_original_among_them(indexed):
    client, _, ids = indexed
    photos = list(ids)[:20]
    client.update_images("copies", [{"id": ids[p], "metadata": {"half": n % 2}} for n, p in enumerate(photos)])
    for n, photo in enumerate(photos[:6]):
        query = edited_bytes(photo.read_bytes(), "crop50")
        same = client.search("copies", image=query, top_k=5, filter=f"metadata.half = {n % 2}")
        assert same.hits[0].id == ids[photo]
        assert all(h.metadata["half"] == n % 2 for h in same.hits)
        other = client.search("copies", image=query, top_k=5, filter=f"metadata.half = {1 - n % 2}")
        assert ids[photo] not in [h.id for h in other.hits]  # the crop views found it; its row does not match
        assert all(h.metadata["half"] == 1 - n % 2 for h in other.hits) and len(other.hits) == 5


def test_the_cli_table_marks_the_verified_copy_with_its_matched_points(indexed, tmp_path):
    import os
    import subprocess
    import sys

    client, _, ids = indexed
    photo = list(ids)[2]
    query = tmp_path / "copy.jpg"
    query.write_bytes(edited_bytes(photo.read_bytes(), "caption"))
    proc = subprocess.run([sys.executable, "-m", "revsearch", "--server", client.target, "search", str(query),
                           "--collection", "copies", "--top-k", "3", "--out", str(tmp_path / "sheet.png")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    first = next(line for line in proc.stdout.splitlines() if line.strip().startswith("│ 1") or " 1 " in line[:8])
    assert "copy" in proc.stdout and "yes (" in first and ids[photo] in first
    assert (tmp_path / "sheet.png").stat().st_size > 10_000


def test_tiny_query_gets_a_global_answer(indexed):
    client, _, _ = indexed
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, format="PNG")
    resp = client.search("copies", image=buffer.getvalue(), top_k=3)
    assert len(resp.hits) == 3 and all(h.matched_keypoints == 0 for h in resp.hits)


def test_delete_removes_the_crop_vectors(indexed):
    client, _, ids = indexed
    photo = list(ids)[-1]
    assert client.delete("copies", [ids[photo]]).deleted_ids == [ids[photo]]
    resp = client.search("copies", image=edited_bytes(photo.read_bytes(), "crop50"), top_k=50)
    assert ids[photo] not in [h.id for h in resp.hits]


def test_exact_knn_collections_have_copy_detection_too(indexed):
    client, _, ids = indexed
    photos = list(ids)[:8]
    created = client.create_collection("copies_knn", model="efficientnet_lite0", index_backend="exact_knn")
    assert created.collection.copy_detection
    knn_ids = [r.id for r in client.index_images("copies_knn", (ImageInput.from_path(p) for p in photos))]
    resp = client.search("copies_knn", image=edited_bytes(photos[2].read_bytes(), "rotate"), top_k=3)
    assert resp.hits[0].id == knn_ids[2] and resp.hits[0].matched_keypoints >= copies.MIN_INLIERS
    client.drop_collection("copies_knn")


def test_a_stored_vector_searches_by_item_id_and_embeds_at_the_collections_dimension(indexed):
    client, _, ids = indexed
    photo, item = next(iter(ids.items()))
    hit = client.search("copies", item_id=item, top_k=1).hits[0]
    assert hit.id == item and hit.score == pytest.approx(1.0, abs=1e-5)  # float32 storage: exact
    embedded = client.embed(photo.read_bytes(), collection="copies")
    assert len(embedded.vector) == 128
    assert client.search("copies", vector=list(embedded.vector), top_k=1).hits[0].id == item


def test_with_float16_on_a_lite_compact_collection_stores_float16_vectors_and_still_finds_copies(start_server):
    """--milvus-float16 on (half the vector bytes on Milvus Lite, searched 4-5x slower): the same compact
    layout in float16, found by item id within float16's rounding."""
    server = start_server(triton_url="off", default_model="auto", milvus_float16="on")
    with SearchClient(server.address, timeout=120) as client:
        c = client.create_collection("f16_copies").collection
        assert c.copy_detection and c.dimension == 128 and "float16" in c.copy_detection_detail
        photos = sorted(PHOTOS.glob("*.jpg"))[:3]
        ids = [r.id for r in client.index_images("f16_copies", [ImageInput.from_path(p) for p in photos])]
        hit = client.search("f16_copies", image=edited_bytes(photos[1].read_bytes(), "crop50"), top_k=1).hits[0]
        assert hit.id == ids[1] and hit.matched_keypoints >= 10
        same = client.search("f16_copies", item_id=ids[2], top_k=1).hits[0]
        assert same.id == ids[2] and same.score == pytest.approx(1.0, abs=2e-3)  # float16 storage: 1e-3 close
        embedded = client.embed(photos[2].read_bytes(), collection="f16_copies")
        assert client.search("f16_copies", vector=list(embedded.vector), top_k=1).hits[0].id == ids[2]


def test_a_compact_collection_of_the_earlier_layout_keeps_its_full_crop_views_and_base85_features(
        start_server, monkeypatch):
    """A compact collection created before 80-d crop views and format 3 features (its settings say
    view_dimension 0, feature_format 2) says so, searches its 128-d views and still verifies copies."""
    monkeypatch.setattr(catalog, "NEW_VIEW_DIMENSION", 0)
    monkeypatch.setattr(catalog, "NEW_FEATURE_FORMAT", 2)
    server = start_server(triton_url="off", default_model="auto")
    with SearchClient(server.address, timeout=120) as client:
        c = client.create_collection("earlier_copies").collection
        monkeypatch.undo()  # what the server reads from now on is the collection's own settings
        assert "earlier compact layout" in c.copy_detection_detail and "format 2" in c.copy_detection_detail
        assert "crop vectors (the same)" in c.copy_detection_detail
        photos = sorted(PHOTOS.glob("*.jpg"))[:6]
        ids = [r.id for r in client.index_images("earlier_copies", [ImageInput.from_path(p) for p in photos])]
        for n, edit in ((1, "crop50"), (4, "rotate+caption")):
            hit = client.search("earlier_copies", image=edited_bytes(photos[n].read_bytes(), edit), top_k=1).hits[0]
            assert hit.id == ids[n] and hit.matched_keypoints >= copies.MIN_INLIERS, edit


def test_with_float16_off_a_compact_collection_keeps_float32_vectors(start_server):
    """--milvus-float16 off: float32 on every store (a Milvus server from 2.4 too), here on Lite."""
    server = start_server(triton_url="off", default_model="auto", milvus_float16="off")
    with SearchClient(server.address, timeout=120) as client:
        c = client.create_collection("f32_copies").collection
        assert c.copy_detection and "float32" in c.copy_detection_detail
