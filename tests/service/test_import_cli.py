"""`revsearch import` against an in-process server: .npz and Parquet files in, counts and failures out,
a re-run skips what is there, and a file that cannot be used is one readable line (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revsearch.vector_files import open_vectors


def revsearch(server, *args):
    return subprocess.run([sys.executable, "-m", "revsearch", "--server", server.address, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def collection(fake_client):
    return fake_client.create_collection("cli_import", exist_ok=True).collection


def test_an_npz_file_imports_with_its_model_and_a_rerun_skips_every_item(fake_server, fake_client, collection,
                                                                           tmp_path):
    vectors = np.random.default_rng(1).standard_normal((2500, collection.dimension)).astype(np.float32)
    vectors[17] = 0  # one bad row: fails alone
    path = tmp_path / "archive.npz"
    np.savez(path, ids=np.array([f"n{i}" for i in range(2500)]), vectors=vectors,
             uris=np.array([f"s3://bucket/{i}.jpg" for i in range(2500)]),
             metadata=np.array([json.dumps({"batch": i // 1000}) for i in range(2500)]),
             model=np.array(collection.model), model_version=np.array(collection.model_version))
    first = revsearch(fake_server, "import", str(path), "--collection", "cli_import", "--json", "-q")
    assert first.returncode == 1, first.stderr  # one item failed
    report = json.loads(first.stdout)
    assert (report["received"], report["imported"], report["failed"]) == (2500, 2499, 1)
    assert report["failures"][0]["item"] == 17 and "all zeros" in report["failures"][0]["message"]
    hit = fake_client.search("cli_import", vector=vectors[1234], top_k=1).hits[0]
    assert hit.id == "n1234" and hit.uri == "s3://bucket/1234.jpg" and dict(hit.metadata) == {"batch": 1.0}
    again = revsearch(fake_server, "import", str(path), "--collection", "cli_import", "-q")
    assert again.returncode == 1 and "imported 0, skipped 2499 (already there), failed 1 of 2500" in again.stdout


def test_a_parquet_file_imports_and_the_model_can_come_from_flags(fake_server, fake_client, collection, tmp_path):
    vectors = np.random.default_rng(2).standard_normal((300, collection.dimension)).astype(np.float32)
    table = pa.table({"id": [f"p{i}" for i in range(300)],
                      "vector": pa.array(list(vectors), type=pa.list_(pa.float32())),
                      "uri": [f"p/{i}" for i in range(300)]})
    path = tmp_path / "vectors.parquet"
    pq.write_table(table, path)
    source = open_vectors(path)
    assert (source.count, source.dimension, source.model) == (300, collection.dimension, "")
    missing = revsearch(fake_server, "import", str(path), "--collection", "cli_import", "-q")
    said = " ".join(missing.stderr.split())  # rich wraps lines
    assert missing.returncode == 2 and "--model and --model-version" in said
    assert f"holds {collection.model} version {collection.model_version}" in said
    done = revsearch(fake_server, "import", str(path), "--collection", "cli_import", "-q", "--json",
                     "--model", collection.model, "--model-version", collection.model_version)
    assert done.returncode == 0 and json.loads(done.stdout)["imported"] == 300
    assert fake_client.search("cli_import", vector=vectors[299], top_k=1).hits[0].uri == "p/299"


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p, ids=np.array(["a"]), vector=np.ones((1, 4))), "no array 'vectors'"),
    (lambda p: np.savez(p, ids=np.array(["a", "b"]), vectors=np.ones((1, 4))), "2 ids for 1 vectors"),
    (lambda p: np.savez(p, ids=np.arange(2), vectors=np.ones((2, 4))), "ids must be strings"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
])
def test_a_file_that_cannot_be_used_is_one_line_and_exit_2(fake_server, collection, tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    proc = revsearch(fake_server, "import", str(path), "--collection", "cli_import", "-q")
    assert proc.returncode == 2 and message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
