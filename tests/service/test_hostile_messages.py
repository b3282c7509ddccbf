"""A hostile client: random and mutated protobuf bytes sent to every RPC of the service.

Over 2,000 messages spread over every RPC kind (unary, client-streaming, bidirectional) must be
answered with a deliberate status: 0 UNKNOWN, 0 INTERNAL, 0 hangs (a deadline passing). Bytes that
do not decode are INVALID_ARGUMENT naming the message type, counted by RPC, and logged as at most
one line per RPC per interval, never with a traceback. Afterwards the server still answers a real
search correctly. Runs on the fake inference backend (the transport is what is under test).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from revsearch.client import ImageInput
from revsearch.v1 import search_service_pb2 as pb
from tests.helpers import encode, synthetic_image

SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]
MESSAGES_PER_RPC = 180  # x 12 RPCs: over 2,000 messages, streams send several per call
DEADLINE_S = 20.0


def _seeds() -> dict[str, list[list[bytes]]]:
    """Well-formed calls per RPC (each a list of request messages), the material of mutations."""
    jpeg = encode(synthetic_image(7, (64, 48)), "JPEG", quality=80)
    meta = struct_pb2.Struct()
    meta.update({"k": "v", "n": 3})
    one = lambda *msgs: [[m.SerializeToString() for m in msgs]]  # noqa: E731
    return {
        "CreateCollection": one(pb.CreateCollectionRequest(name="fuzz", exist_ok=True, crop_mode=pb.CROP_MODE_NONE)),
        "ListCollections": one(pb.ListCollectionsRequest()),
        "DescribeCollection": one(pb.DescribeCollectionRequest(name="fuzz")),
        "DropCollection": one(pb.DropCollectionRequest(name="fuzz_other")),
        "IndexImages": one(pb.IndexImagesRequest(collection="fuzz", item=pb.ImageItem(image=jpeg, id="a", uri="u",
                                                                                     metadata=meta)),
                           pb.IndexImagesRequest(item=pb.ImageItem(image=jpeg[:40]))),
        "SearchImages": one(pb.SearchImagesRequest(collection="fuzz", image=jpeg, top_k=3))
        + one(pb.SearchImagesRequest(collection="fuzz", vector=pb.Vector(values=[0.5] * 8), top_k=2)),
        "BatchSearchImages": one(pb.BatchSearchImagesRequest(collection="fuzz", top_k=2, queries=[
            pb.BatchQuery(image=jpeg), pb.BatchQuery(item_id="a")])),
        "EmbedImage": one(pb.EmbedImageRequest(image=jpeg, model="resnet50")),
        "DeleteImages": one(pb.DeleteImagesRequest(collection="fuzz", ids=["a", "b"])),
        "IndexVideo": one(pb.IndexVideoRequest(header=pb.VideoHeader(collection="fuzzvideo", id="v", size_bytes=9)),
                          pb.IndexVideoRequest(chunk=b"\x00\x00\x00\x18ftypmp42")),
        "SearchVideos": one(pb.SearchVideosRequest(header=pb.SearchVideosHeader(collection="fuzzvideo", image=jpeg,
                                                                                 top_k=2)))
        + one(pb.SearchVideosRequest(header=pb.SearchVideosHeader(collection="fuzzvideo")),
              pb.SearchVideosRequest(chunk=b"RIFF....AVI ")),
        "GetServerInfo": one(pb.GetServerInfoRequest()),
        "ImportVectors": one(pb.ImportVectorsRequest(
            header=pb.ImportVectorsHeader(collection="fuzz", model="resnet50", model_version="1"),
            items=[pb.VectorItem(id="iv1", uri="u", metadata=meta, vector=pb.Vector(values=[0.5] * 8))]),
            pb.ImportVectorsRequest(items=[pb.VectorItem(id="iv2", vector=pb.Vector(values=[float("nan")] * 8))])),
        "GetImages": one(pb.GetImagesRequest(collection="fuzz", ids=["a", "iv1"], include_vectors=True)),
        "ListImages": one(pb.ListImagesRequest(collection="fuzz", filter='metadata.k = "v" OR id > "a"', page_size=2,
                                               page_token="eyJ2IjoxfQ")),
        "UpdateImages": one(pb.UpdateImagesRequest(collection="fuzz", updates=[pb.ImageUpdate(id="a", metadata=meta)],
                                                   update_mask=field_mask_pb2.FieldMask(paths=["metadata.k"]))),
    }


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(7))
    if kind == 0 or not buf:  # random bytes
        return rng.integers(0, 256, int(rng.integers(1, 96)), dtype=np.uint8).tobytes()
    if kind == 1:  # flip bits
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == 2:  # truncate
        del buf[int(rng.integers(len(buf))):]
    elif kind == 3:  # insert random bytes
        i = int(rng.integers(len(buf) + 1))
        buf[i:i] = rng.integers(0, 256, int(rng.integers(1, 12)), dtype=np.uint8).tobytes()
    elif kind == 4:  # overlong varints and bad wire types
        i = int(rng.integers(len(buf)))
        buf[i:i + 1] = bytes([0xFF] * int(rng.integers(1, 11))) if rng.random() < 0.5 else bytes([0x0F | 0x07])
    elif kind == 5:  # a slice repeated (fields twice, lengths that overrun)
        i, j = sorted(int(v) for v in rng.integers(0, len(buf) + 1, 2))
        buf[j:j] = buf[i:j] * int(rng.integers(1, 4))
    else:  # a length prefix made huge
        i = int(rng.integers(len(buf)))
        buf[i] = 0x80 | buf[i]
    return bytes(buf)


def _cases(rng: np.random.Generator) -> list[tuple[str, list[bytes]]]:
    cases = []
    for rpc, calls in _seeds().items():
        for n in range(MESSAGES_PER_RPC):
            call = calls[n % len(calls)]
            # Each message of the call mutated with some chance; at least one always.
            mutated = [_mutate(rng, m) if rng.random() < 0.7 else m for m in call]
            k = int(rng.integers(len(call)))
            mutated[k] = _mutate(rng, call[k])
            cases.append((rpc, mutated))
    return cases


def _send(channel: grpc.Channel, rpc: str, messages: list[bytes]) -> tuple[grpc.StatusCode, str]:
    method = SERVICE.methods_by_name[rpc]
    path = f"/{SERVICE.full_name}/{rpc}"
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path)(iter(messages), timeout=DEADLINE_S):
                pass
        elif method.client_streaming:
            channel.stream_unary(path)(iter(messages), timeout=DEADLINE_S)
        else:
            channel.unary_unary(path)(messages[0], timeout=DEADLINE_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


@pytest.fixture(scope="module")
def collections(fake_client):
    fake_client.create_collection("fuzz")
    fake_client.create_collection("fuzzvideo", media_type="video")
    fake_client.create_collection("realcheck")
    images = [encode(synthetic_image(seed), "JPEG", quality=90) for seed in range(6)]
    results = list(fake_client.index_images("realcheck", [ImageInput(image=b, id=f"img{i}")
                                                          for i, b in enumerate(images)]))
    assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * 6
    return images


def test_random_and_mutated_messages_to_every_rpc_get_deliberate_statuses_and_the_server_keeps_serving(
        fake_server, fake_client, collections, caplog):
    cases = _cases(np.random.default_rng(20261130))
    assert sum(len(m) for _, m in cases) >= 2000 and {rpc for rpc, _ in cases} == set(SERVICE.methods_by_name)
    caplog.set_level(logging.WARNING)
    with grpc.insecure_channel(fake_server.address) as channel, ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda case: (case[0], *_send(channel, *case)), cases))

    codes = [code for _, code, _ in outcomes]
    assert codes.count(grpc.StatusCode.UNKNOWN) == 0, [o for o in outcomes if o[1] == grpc.StatusCode.UNKNOWN][:3]
    assert codes.count(grpc.StatusCode.INTERNAL) == 0, [o for o in outcomes if o[1] == grpc.StatusCode.INTERNAL][:3]
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 0  # no hangs
    malformed = [(rpc, details) for rpc, code, details in outcomes
                 if code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid revsearch.v1." in details]
    assert {rpc for rpc, _ in malformed} == set(SERVICE.methods_by_name)  # every RPC saw undecodable bytes
    rpc, details = malformed[0]
    assert f"revsearch.v1.{SERVICE.methods_by_name[rpc].input_type.name}" in details

    # Counted by RPC and by code; logged as one line per RPC per interval, with no traceback.
    registry = fake_server.server.metrics.registry
    counted = sum(registry.get_sample_value("revsearch_malformed_messages_total", {"rpc": r}) or 0
                  for r in SERVICE.methods_by_name)
    assert counted >= len(malformed)
    assert registry.get_sample_value("revsearch_requests_total", {"rpc": "SearchImages", "code": "INVALID_ARGUMENT"})
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 0 < len(lines) <= 2 * len(SERVICE.methods_by_name)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]

    # Still serving, and correctly.
    hits = fake_client.search("realcheck", image=collections[3], top_k=3).hits
    assert hits[0].id == "img3" and hits[0].score == pytest.approx(1.0, abs=1e-4)
