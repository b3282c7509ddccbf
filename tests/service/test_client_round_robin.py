"""The client library spreads calls over every replica a target names (round_robin), so a load-tested
deployment of several servers behind one DNS name is used evenly."""

from __future__ import annotations

from revsearch import SearchClient
from revsearch.client import Security, VectorInput, channel_options


def test_targets_naming_several_addresses_get_round_robin_and_plain_ones_do_not():
    def policy(target):
        return [v for k, v in channel_options(target, Security()) if k == "grpc.service_config"]

    assert policy("dns:///revsearch.search.svc.cluster.local:50051") == [
        '{"loadBalancingConfig": [{"round_robin": {}}]}']
    assert policy("ipv4:10.0.0.1:50051,10.0.0.2:50051") and not policy("localhost:50051")


def test_calls_through_one_client_alternate_between_two_replicas(start_server):
    one, two = start_server(fakes=True), start_server(fakes=True)
    # Each replica has its own Milvus Lite here, so the item count says which one answered.
    for srv, items in ((one, 1), (two, 2)):
        with SearchClient(srv.address) as c:
            c.create_collection("rr", exist_ok=True)
            coll = c.describe_collection("rr")
            c.import_vectors("rr", [VectorInput(id=f"i{n}", vector=[1.0 + n] + [0.5] * (coll.dimension - 1))
                                    for n in range(items)], model=coll.model, model_version=coll.model_version)
    target = f"ipv4:{one.address},{two.address}"
    with SearchClient(target) as client:
        counts = [client.describe_collection("rr").item_count for _ in range(12)]
    assert set(counts) == {1, 2} and 4 <= counts.count(1) <= 8
