"""TLS, mutual TLS and API keys through a real in-process server (fake inference, Milvus Lite).

Every RPC kind (unary, client-streaming, bidirectional) is called with no key, a malformed
header, an unknown key, a read, a write and an admin key, and on a collection outside the key's
scope; each answer's status code is asserted. Certificates are made in the test session.
"""

from __future__ import annotations

import hashlib
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from revsearch.v1 import search_service_pb2 as pb
from revsearch_server.config import Settings
from revsearch_server.observability import Metrics
from revsearch_server.wiring import StartupError, build_security
from tests.certs import Authority
from tests.helpers import encode, synthetic_image

SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]
KEYS = {"reader": "read-key-0123456789abcdef", "writer": "write-key-0123456789abcdef",
        "admin": "admin-key-0123456789abcdef", "slow": "slow-key-0123456789abcdef",
        "photo_writer": "photo-writer-0123456789abcdef"}
READ_RPCS = {"SearchImages", "BatchSearchImages", "SearchVideos", "EmbedImage", "ListCollections",
             "DescribeCollection", "GetServerInfo", "GetImages", "ListImages"}
WRITE_RPCS = {"IndexImages", "IndexVideo", "DeleteImages", "ImportVectors", "UpdateImages"}
ADMIN_RPCS = {"CreateCollection", "DropCollection"}
JPEG = encode(synthetic_image(1, (96, 80)), "JPEG", quality=90)


def key_file(path, keys: dict[str, str], extra: str = "") -> None:
    roles = {"reader": "read", "writer": "write", "admin": "admin", "slow": "read", "photo_writer": "write"}
    text = ""
    for kid, secret in keys.items():
        text += f'[[keys]]\nid = "{kid}"\n'
        # One key given by its digest, the others in the clear: both forms are read.
        text += (f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n' if kid == "reader"
                 else f'key = "{secret}"\n')
        text += f'role = "{roles.get(kid, "read")}"\n'
        if kid == "reader":
            text += 'collections = ["photos", "photos_videos", "team_*"]\n'
        if kid == "photo_writer":
            text += 'collections = ["photos"]\n'
        if kid == "slow":
            text += "rate = 2\n"
    path.write_text(text + extra)


def requests(rpc: str, collection: str) -> list:
    """A well-formed call of each RPC on `collection` (a list of request messages)."""
    return {
        "CreateCollection": [pb.CreateCollectionRequest(name=collection, exist_ok=True)],
        "ListCollections": [pb.ListCollectionsRequest()],
        "DescribeCollection": [pb.DescribeCollectionRequest(name=collection)],
        "DropCollection": [pb.DropCollectionRequest(name=collection + "_gone")],
        "IndexImages": [pb.IndexImagesRequest(collection=collection, item=pb.ImageItem(image=JPEG))],
        "SearchImages": [pb.SearchImagesRequest(collection=collection, image=JPEG, top_k=1)],
        "BatchSearchImages": [pb.BatchSearchImagesRequest(collection=collection, queries=[pb.BatchQuery(image=JPEG)])],
        "EmbedImage": [pb.EmbedImageRequest(image=JPEG, collection=collection)],
        "DeleteImages": [pb.DeleteImagesRequest(collection=collection, ids=["nothing"])],
        "IndexVideo": [pb.IndexVideoRequest(header=pb.VideoHeader(collection=collection + "_videos")),
                       pb.IndexVideoRequest(chunk=b"not a video")],
        "SearchVideos": [pb.SearchVideosRequest(header=pb.SearchVideosHeader(collection=collection + "_videos",
                                                                              image=JPEG))],
        "GetServerInfo": [pb.GetServerInfoRequest()],
        "ImportVectors": [pb.ImportVectorsRequest(header=pb.ImportVectorsHeader(collection=collection, model="x",
                                                                                model_version="1"))],
        "GetImages": [pb.GetImagesRequest(collection=collection, ids=["nothing"])],
        "ListImages": [pb.ListImagesRequest(collection=collection, filter='metadata.tenant = "a"')],
        "UpdateImages": [pb.UpdateImagesRequest(collection=collection, updates=[pb.ImageUpdate(id="nothing")])],
    }[rpc]


def call(channel, rpc: str, messages: list, metadata=()) -> grpc.StatusCode:
    method = SERVICE.methods_by_name[rpc]
    path = f"/{SERVICE.full_name}/{rpc}"
    kwargs = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kwargs)(iter(messages), metadata=metadata, timeout=30))
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter(messages), metadata=metadata, timeout=30)
        else:
            channel.unary_unary(path, **kwargs)(messages[0], metadata=metadata, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def bearer(kid: str):
    return (("authorization", f"Bearer {KEYS[kid]}"),)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory)
    return {"ca": ca, "server": ca.issue("server", "localhost"), "client": ca.issue("client", "reader", server=False),
            "stranger": Authority(directory, "stranger CA").issue("stranger", "mallory", server=False),
            "dir": directory}


@pytest.fixture(scope="module")
def secured(start_server, pki):
    keys = pki["dir"] / "keys.toml"
    key_file(keys, KEYS)
    server = start_server(fakes=True, tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key),
                          api_keys=str(keys))
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].pem.read_bytes())
    with grpc.secure_channel(server.address, creds) as channel:
        admin = bearer("admin")
        for name in ("photos", "team_a", "secret"):
            assert call(channel, "CreateCollection", [pb.CreateCollectionRequest(name=name)], admin) == grpc.StatusCode.OK
            assert call(channel, "CreateCollection", [pb.CreateCollectionRequest(
                name=name + "_videos", media_type=pb.MEDIA_TYPE_VIDEO)], admin) == grpc.StatusCode.OK
        yield server, channel


AUTH_FAILURES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@pytest.mark.parametrize("rpc", sorted(SERVICE.methods_by_name))
def test_every_rpc_without_a_valid_key_is_unauthenticated(secured, rpc):
    _, channel = secured
    messages = requests(rpc, "photos")
    for metadata in [(), (("authorization", "Basic dXNlcjpwdw=="),), (("authorization", "Bearer"),),
                     (("authorization", "Bearer not-a-key-of-this-server"),),
                     (("authorization", f"Bearer {KEYS['reader']} extra"),)]:
        assert call(channel, rpc, messages, metadata) == grpc.StatusCode.UNAUTHENTICATED, metadata


@pytest.mark.parametrize("rpc", sorted(SERVICE.methods_by_name))
def test_each_role_may_call_exactly_its_rpcs(secured, rpc):
    _, channel = secured
    messages = requests(rpc, "photos")
    for kid, allowed in (("reader", READ_RPCS), ("writer", READ_RPCS | WRITE_RPCS),
                         ("admin", READ_RPCS | WRITE_RPCS | ADMIN_RPCS)):
        code = call(channel, rpc, messages, bearer(kid))
        if rpc in allowed:
            assert code not in AUTH_FAILURES, (kid, code)  # it may still fail for its content (a bad video)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (kid, code)


@pytest.mark.parametrize("rpc", sorted(READ_RPCS - {"ListCollections", "GetServerInfo"}))
def test_a_collection_outside_the_keys_scope_is_denied_whether_it_exists_or_not(secured, rpc):
    _, channel = secured
    assert call(channel, rpc, requests(rpc, "team_a"), bearer("reader")) not in AUTH_FAILURES  # a glob match
    for collection in ("secret", "does_not_exist"):
        assert call(channel, rpc, requests(rpc, collection), bearer("reader")) == grpc.StatusCode.PERMISSION_DENIED


def test_a_stream_naming_another_collection_later_is_denied(secured):
    _, channel = secured
    messages = [pb.IndexImagesRequest(collection="photos", item=pb.ImageItem(image=JPEG)),
                pb.IndexImagesRequest(collection="secret", item=pb.ImageItem(image=JPEG))]
    assert call(channel, "IndexImages", messages[:1], bearer("photo_writer")) == grpc.StatusCode.OK
    assert call(channel, "IndexImages", messages, bearer("photo_writer")) == grpc.StatusCode.PERMISSION_DENIED


def test_list_collections_shows_only_the_keys_collections(secured):
    _, channel = secured
    listed = channel.unary_unary(f"/{SERVICE.full_name}/ListCollections",
                                 request_serializer=pb.ListCollectionsRequest.SerializeToString,
                                 response_deserializer=pb.ListCollectionsResponse.FromString)
    names = {c.name for c in listed(pb.ListCollectionsRequest(), metadata=bearer("reader")).collections}
    assert names == {"photos", "photos_videos", "team_a", "team_a_videos"}
    everything = {c.name for c in listed(pb.ListCollectionsRequest(), metadata=bearer("admin")).collections}
    assert {"secret", "photos_videos"} <= everything


def test_health_answers_without_a_key_and_reflection_is_off_while_keys_are_on(secured):
    _, channel = secured
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_key_over_its_rate_gets_resource_exhausted_with_a_retry_hint(secured):
    _, channel = secured
    info = channel.unary_unary(f"/{SERVICE.full_name}/GetServerInfo",
                               request_serializer=pb.GetServerInfoRequest.SerializeToString,
                               response_deserializer=pb.GetServerInfoResponse.FromString)
    refused = []
    for _ in range(8):
        try:
            info(pb.GetServerInfoRequest(), metadata=bearer("slow"), timeout=10)
        except grpc.RpcError as err:
            refused.append(err)
    assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    hint = dict(refused[0].trailing_metadata() or ())
    assert int(hint["retry-after-ms"]) > 0


def test_requests_and_denials_are_counted_by_key_id_and_no_key_reaches_the_log(secured, caplog):
    server, channel = secured
    caplog.set_level(logging.DEBUG)
    call(channel, "SearchImages", requests("SearchImages", "photos"), bearer("reader"))
    call(channel, "SearchImages", requests("SearchImages", "secret"), bearer("reader"))
    registry = server.server.metrics.registry
    assert registry.get_sample_value("revsearch_key_requests_total",
                                     {"key": "reader", "rpc": "SearchImages", "code": "OK"}) >= 1
    assert registry.get_sample_value("revsearch_auth_denials_total", {"key": "reader", "reason": "collection"}) >= 1
    assert registry.get_sample_value("revsearch_auth_denials_total", {"key": "-", "reason": "no_key"}) >= 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(secret in logged for secret in KEYS.values())


def test_without_the_servers_ca_the_client_cannot_connect(secured):
    server, _ = secured
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials()) as channel:
        assert call(channel, "GetServerInfo", [pb.GetServerInfoRequest()], bearer("admin")) == \
            grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as channel:  # plaintext to a TLS port
        assert call(channel, "GetServerInfo", [pb.GetServerInfoRequest()], bearer("admin")) == \
            grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_the_cas_clients_and_refuses_others(start_server, pki):
    server = start_server(fakes=True, tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key),
                          tls_client_ca=str(pki["ca"].pem))
    ca = pki["ca"].pem.read_bytes()
    for pair, expected in ((pki["client"], grpc.StatusCode.OK), (pki["stranger"], grpc.StatusCode.UNAVAILABLE),
                           (None, grpc.StatusCode.UNAVAILABLE)):
        creds = grpc.ssl_channel_credentials(ca, pair.key.read_bytes() if pair else None,
                                             pair.cert.read_bytes() if pair else None)
        with grpc.secure_channel(server.address, creds) as channel:
            assert call(channel, "GetServerInfo", [pb.GetServerInfoRequest()]) == expected, pair


def _settings(**kw) -> Settings:
    return Settings(**{"host": "127.0.0.1", **kw})


def test_start_up_names_an_unreadable_expired_or_mismatched_certificate(pki, tmp_path):
    ca, server = pki["ca"], pki["server"]
    expired = ca.issue("expired", "localhost", expired=True)
    other = ca.issue("other", "localhost")
    cases = [(dict(tls_cert=str(tmp_path / "missing.crt"), tls_key=str(server.key)), "missing.crt"),
             (dict(tls_cert=str(expired.cert), tls_key=str(expired.key)), "expired on"),
             (dict(tls_cert=str(server.cert), tls_key=str(other.key)), "does not belong to the certificate"),
             (dict(tls_cert=str(server.key), tls_key=str(server.key)), "is not a PEM certificate"),
             (dict(tls_cert=str(server.cert)), "needs both --tls-cert and --tls-key")]
    for settings, message in cases:
        with pytest.raises(StartupError, match=message):
            build_security(_settings(**settings), Metrics())


def test_start_up_names_the_line_of_a_bad_key_file_and_refuses_plaintext_keys_on_the_network(tmp_path):
    bad = tmp_path / "keys.toml"
    bad.write_text('[[keys]]\nid = "a"\nkey = "0123456789abcdef-a"\nrole = "read"\n\n'
                   '[[keys]]\nid = "b"\nkey = "0123456789abcdef-b"\nrole = "owner"\n')
    with pytest.raises(StartupError, match=r"entry 2 \(line 6\).*role must be read, write or admin"):
        build_security(_settings(api_keys=str(bad)), Metrics())
    bad.write_text("[[keys]\nid = 1")
    with pytest.raises(StartupError, match="not valid TOML"):
        build_security(_settings(api_keys=str(bad)), Metrics())
    with pytest.raises(StartupError, match="cannot read the API key file"):
        build_security(_settings(api_keys=str(tmp_path / "nope.toml")), Metrics())
    good = tmp_path / "good.toml"
    key_file(good, {"admin": KEYS["admin"]})
    with pytest.raises(StartupError, match="without TLS on 0.0.0.0"):
        build_security(_settings(host="0.0.0.0", api_keys=str(good)), Metrics())
    assert build_security(_settings(host="0.0.0.0", api_keys=str(good), allow_insecure_keys=True), Metrics()).auth


def test_the_client_library_and_the_cli_work_against_tls_and_keys(secured, pki):
    import subprocess
    import sys

    from revsearch import SearchClient, Security
    from revsearch.client import ImageInput
    from revsearch.errors import PermissionDeniedError, UnauthenticatedError

    server, _ = secured
    target = f"localhost:{server.server.port}"
    ca = pki["ca"].pem
    with SearchClient(target, security=Security(tls=True, ca=ca, api_key=KEYS["photo_writer"])) as client:
        [done] = list(client.index_images("photos", [ImageInput(image=encode(synthetic_image(42)), id="via_client")]))
        assert done.status in (pb.ITEM_STATUS_INDEXED, pb.ITEM_STATUS_DUPLICATE)
        assert client.search("photos", image=encode(synthetic_image(42)), top_k=1).hits[0].id == "via_client"
        with pytest.raises(PermissionDeniedError):
            client.create_collection("not_mine")
    with SearchClient(target, security=Security(tls=True, ca=ca)) as client, pytest.raises(UnauthenticatedError):
        client.info()

    def cli(*args, env_key=None):
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("REVSEARCH_")}
        if env_key:
            env["REVSEARCH_API_KEY"] = env_key
        return subprocess.run([sys.executable, "-m", "revsearch", "--server", target, "--tls-ca", str(ca), *args],
                              capture_output=True, text=True, timeout=120, env=env)

    listed = cli("--api-key", KEYS["reader"], "collections")
    assert listed.returncode == 0 and "photos" in listed.stdout and "secret" not in listed.stdout
    assert cli("info", env_key=KEYS["admin"]).returncode == 0  # the key from REVSEARCH_API_KEY
    refused = cli("info")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in (refused.stdout + refused.stderr).upper()
    assert KEYS["reader"] not in listed.stdout + listed.stderr


def test_the_container_health_check_passes_over_tls_without_a_key(secured, pki):
    import os
    import subprocess
    import sys

    server, _ = secured
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REVSEARCH_")},
           "REVSEARCH_TLS_CA": str(pki["ca"].pem)}
    probe = subprocess.run([sys.executable, "-m", "revsearch_server.healthcheck", f"localhost:{server.server.port}"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert probe.returncode == 0 and probe.stdout.strip() == "SERVING"
    env.pop("REVSEARCH_TLS_CA")
    plaintext = subprocess.run([sys.executable, "-m", "revsearch_server.healthcheck", f"localhost:{server.server.port}"],
                               capture_output=True, text=True, timeout=60, env=env)
    assert plaintext.returncode == 1
