"""Concurrent SearchImages calls on one collection reach Milvus Lite in shared calls, and each
caller still gets its own answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from revsearch import SearchClient
from revsearch.client import ImageInput
from tests.helpers import ServerThread, base_settings, encode, synthetic_image
from tests.service.test_overload_and_metrics import sample, scrape

CALLERS = 32


def test_concurrent_searches_are_coalesced_and_each_finds_its_own_item(tmp_path):
    with ServerThread(base_settings(tmp_path)) as srv, SearchClient(srv.address, timeout=60) as client:
        client.create_collection("many")
        items = [ImageInput(image=encode(synthetic_image(seed, (160, 120)), "PNG"), id=f"img{seed}")
                 for seed in range(CALLERS)]
        assert all(r.status == 1 for r in client.index_images("many", items))
        before = scrape(srv.server.metrics_port)
        start = threading.Barrier(CALLERS)

        def search(i: int):
            start.wait()  # all callers at once, so that searches overlap
            return client.search("many", item_id=f"img{i}", top_k=3)

        with ThreadPoolExecutor(CALLERS) as pool:
            answers = list(pool.map(search, range(CALLERS)))
        after = scrape(srv.server.metrics_port)

    assert [a.hits[0].id for a in answers] == [f"img{i}" for i in range(CALLERS)]
    assert all(abs(a.hits[0].score - 1.0) < 1e-4 and len(a.hits) == 3 for a in answers)
    queries = (sample(after, "revsearch_search_batch_queries_sum")
               - sample(before, "revsearch_search_batch_queries_sum"))
    calls = (sample(after, "revsearch_search_batch_queries_count")
             - sample(before, "revsearch_search_batch_queries_count"))
    assert queries == CALLERS  # every query went through the coalescer...
    assert 1 <= calls < CALLERS  # ...and some of them shared an index call
