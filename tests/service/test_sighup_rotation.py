"""SIGHUP re-reads the API keys and the TLS certificate of a running server process, without
dropping it: the old key is refused and the new one accepted, a call admitted before goes on to
its end, new connections get the new certificate, and a bad new file keeps what was there."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from revsearch.v1 import search_service_pb2 as pb
from tests.certs import Authority
from tests.helpers import ROOT, encode, synthetic_image

SERVICE = "/revsearch.v1.SearchService/"
OLD, NEW = "old-admin-key-0123456789", "new-admin-key-0123456789"


def _keys(path, kid: str, secret: str) -> None:
    path.write_text(f'[[keys]]\nid = "{kid}"\nkey = "{secret}"\nrole = "admin"\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("sighup")
    first, second = Authority(d, "first CA"), Authority(d, "second CA")
    pair = first.issue("server", "localhost")
    _keys(d / "keys.toml", "old", OLD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "revsearch_server", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
         "--data-dir", str(d / "data"), "--allow-untrained", "--triton-url", "off", "--log-level", "INFO",
         "--api-keys", str(d / "keys.toml"), "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    port = None
    deadline = time.time() + 120
    while port is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"revsearch listening on [^:]+:(\d+)", line):
            port = int(m.group(1))
    assert port, "".join(lines)
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    yield dict(proc=proc, port=port, dir=d, first=first, second=second, pair=pair, lines=lines)
    proc.terminate()
    proc.wait(30)


def _channel(served, ca: Authority) -> grpc.Channel:
    return grpc.secure_channel(f"localhost:{served['port']}", grpc.ssl_channel_credentials(ca.pem.read_bytes()))


def _info(channel, secret: str) -> grpc.StatusCode:
    try:
        channel.unary_unary(SERVICE + "GetServerInfo", request_serializer=pb.GetServerInfoRequest.SerializeToString,
                            response_deserializer=pb.GetServerInfoResponse.FromString)(
            pb.GetServerInfoRequest(), metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def _hup(served, settle_s: float = 1.0) -> None:
    served["proc"].send_signal(signal.SIGHUP)
    time.sleep(settle_s)
    assert served["proc"].poll() is None


def test_sighup_rotates_the_keys_and_a_call_admitted_before_finishes(served):
    with _channel(served, served["first"]) as channel:
        create = channel.unary_unary(SERVICE + "CreateCollection",
                                     request_serializer=pb.CreateCollectionRequest.SerializeToString,
                                     response_deserializer=pb.CreateCollectionResponse.FromString)
        create(pb.CreateCollectionRequest(name="rotation"), metadata=(("authorization", f"Bearer {OLD}"),), timeout=30)
        rotated = threading.Event()

        def items():  # the in-flight call: one image before the rotation, two after
            yield pb.IndexImagesRequest(collection="rotation", item=pb.ImageItem(image=encode(synthetic_image(1))))
            rotated.wait(30)
            for seed in (2, 3):
                yield pb.IndexImagesRequest(item=pb.ImageItem(image=encode(synthetic_image(seed))))

        index = channel.stream_stream(SERVICE + "IndexImages",
                                      request_serializer=pb.IndexImagesRequest.SerializeToString,
                                      response_deserializer=pb.IndexImagesResponse.FromString)
        results: list = []
        call = threading.Thread(target=lambda: results.extend(
            index(items(), metadata=(("authorization", f"Bearer {OLD}"),), timeout=60)))
        call.start()
        time.sleep(1.0)
        _keys(served["dir"] / "keys.toml", "new", NEW)
        _hup(served)
        assert _info(channel, OLD) == grpc.StatusCode.UNAUTHENTICATED
        assert _info(channel, NEW) == grpc.StatusCode.OK
        rotated.set()
        call.join(60)
        assert [r.status for r in results] == [pb.ITEM_STATUS_INDEXED] * 3

        # A bad new file keeps the keys in force, and says why in the log.
        (served["dir"] / "keys.toml").write_text('[[keys]]\nid = "x"\nrole = "root"\n')
        _hup(served)
        assert _info(channel, NEW) == grpc.StatusCode.OK
    assert any("API keys not reloaded" in line for line in served["lines"])
    assert not any(OLD in line or NEW in line for line in served["lines"])


def test_sighup_serves_a_new_certificate_to_new_connections_and_keeps_a_good_one_over_a_bad_one(served):
    with _channel(served, served["first"]) as channel:
        assert _info(channel, NEW) == grpc.StatusCode.OK
    renewed = served["second"].issue("renewed", "localhost")
    served["pair"].cert.write_bytes(renewed.cert.read_bytes())
    served["pair"].key.write_bytes(renewed.key.read_bytes())
    _hup(served)
    with _channel(served, served["second"]) as channel:
        assert _info(channel, NEW) == grpc.StatusCode.OK
    with _channel(served, served["first"]) as channel:
        assert _info(channel, NEW) == grpc.StatusCode.UNAVAILABLE  # the old CA no longer vouches for it
    served["pair"].key.write_bytes(b"not a key")
    _hup(served)
    with _channel(served, served["second"]) as channel:
        assert _info(channel, NEW) == grpc.StatusCode.OK
    assert any("TLS reload failed" in line for line in served["lines"])
