"""The client's side of "safe to expose": TLS, mutual TLS and the API key, with no revsearch server.

A tiny in-process gRPC server stands in for the real one: it answers GetServerInfo (unary) and IndexImages
(stream-stream) and records the metadata of every call, so the tests see exactly what reaches the wire.
Certificates are made here with `cryptography` (a CA, and server and client certificates it signs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from revsearch import cli
from revsearch.client import AsyncSearchClient, ImageInput, SearchClient, Security
from revsearch.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError
from revsearch.v1 import search_service_pb2 as pb

SERVICE = "revsearch.v1.SearchService"
TIMEOUT_S = 10.0

# --------------------------------------------------------------------------------------------------------------
# certificates


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str = "revsearch test CA") -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (EC P-256: quick to make, and gRPC's BoringSSL takes it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), client: bool = False) -> Pem:
    """A leaf certificate signed by the CA: for a server (its names as SANs) or, with client=True, a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                    common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                     else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass
class Pki:
    """Files and bytes of one test PKI: a CA, a server certificate for localhost and 127.0.0.1, one for
    another name only, and a client certificate."""

    ca_file: Path
    server: Pem
    other_name_server: Pem
    client_cert_file: Path
    client_key_file: Path
    ca: Pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_ca()
    client = issue(ca_key, ca_cert, "revsearch test client", client=True)
    files = {"ca.pem": ca.cert, "client.pem": client.cert, "client.key": client.key}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Pki(ca_file=folder / "ca.pem",
               server=issue(ca_key, ca_cert, "localhost", dns=("localhost",), ips=("127.0.0.1",)),
               other_name_server=issue(ca_key, ca_cert, "search.internal", dns=("search.internal",)),
               client_cert_file=folder / "client.pem", client_key_file=folder / "client.key", ca=ca)


# --------------------------------------------------------------------------------------------------------------
# a tiny server that records what arrives


class Recorder:
    """Records the invocation metadata of each call as (method, dict). Keys the server turns away: "bad"
    (unknown: UNAUTHENTICATED) and "readonly" (known, not allowed: PERMISSION_DENIED)."""

    def __init__(self):
        self.calls: list[tuple[str, dict[str, str]]] = []

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.calls.append((method, metadata))
        answer = {"Bearer bad": (grpc.StatusCode.UNAUTHENTICATED, "unknown API key"),
                  "Bearer readonly": (grpc.StatusCode.PERMISSION_DENIED, "this key may not do that")}
        if metadata.get("authorization") in answer:
            context.abort(*answer[metadata["authorization"]])

    def info(self, request, context):
        self._check("GetServerInfo", context)
        return pb.GetServerInfoResponse()

    def index_images(self, requests, context):
        # The whole stream is read before the check: turned away earlier, the asyncio client may lose the status
        # (grpc/grpc#36066), which is not what these tests are about.
        for _ in requests:
            pass
        self._check("IndexImages", context)
        return iter(())

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetServerInfo": grpc.unary_unary_rpc_method_handler(
                self.info, request_deserializer=pb.GetServerInfoRequest.FromString,
                response_serializer=pb.GetServerInfoResponse.SerializeToString),
            "IndexImages": grpc.stream_stream_rpc_method_handler(
                self.index_images, request_deserializer=pb.IndexImagesRequest.FromString,
                response_serializer=pb.IndexImagesResponse.SerializeToString),
        })

    def authorization(self) -> dict[str, str | None]:
        return {method: metadata.get("authorization") for method, metadata in self.calls}


@contextlib.contextmanager
def tiny_server(credentials: grpc.ServerCredentials | None = None):
    """(address, recorder) of a server on 127.0.0.1, port 0; TLS with `credentials`."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((recorder.handler(),))
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def plaintext_server():
    with tiny_server() as served:
        yield served


def tls_credentials(server: Pem, client_ca: Pem | None = None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(server.key, server.cert)],
                                       root_certificates=client_ca.cert if client_ca else None,
                                       require_client_auth=client_ca is not None)


def call_both(address: str, security: Security | None) -> None:
    """One unary and one streaming call through the blocking client."""
    with SearchClient(address, timeout=TIMEOUT_S, security=security) as client:
        client.info()
        assert list(client.index_images("photos", [ImageInput(image=b"not really a jpeg")],
                                        timeout=TIMEOUT_S)) == []


async def call_both_async(address: str, security: Security | None) -> None:
    async with AsyncSearchClient(address, timeout=TIMEOUT_S, security=security) as client:
        await client.info()
        assert [r async for r in client.index_images("photos", [ImageInput(image=b"not really a jpeg")],
                                                     timeout=TIMEOUT_S)] == []


# --------------------------------------------------------------------------------------------------------------
# Security: settings, validation, repr


def test_from_env_reads_every_variable(pki):
    security = Security.from_env({"REVSEARCH_TLS": "yes", "REVSEARCH_TLS_CA": str(pki.ca_file),
                                  "REVSEARCH_TLS_CERT": str(pki.client_cert_file),
                                  "REVSEARCH_TLS_KEY": str(pki.client_key_file),
                                  "REVSEARCH_TLS_SERVER_NAME": "search.internal",
                                  "REVSEARCH_API_KEY": "k1\n"})
    assert security == Security(tls=True, ca=pki.ca_file, cert=pki.client_cert_file, key=pki.client_key_file,
                                server_name="search.internal", api_key="k1")
    assert security.channel_options() == [("grpc.ssl_target_name_override", "search.internal")]
    assert security.call_metadata() == (("authorization", "Bearer k1"),)
    assert isinstance(security.channel_credentials(), grpc.ChannelCredentials)


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("REVSEARCH_TLS", "on")
    monkeypatch.setenv("REVSEARCH_API_KEY", "k2")
    assert Security.from_env() == Security(tls=True, api_key="k2")


def test_an_empty_environment_is_plaintext_without_a_key():
    security = Security.from_env({})
    assert security == Security() and not security.tls
    assert security.call_metadata() == () and security.channel_options() == []


@pytest.mark.parametrize("word, tls", [("1", True), ("TRUE", True), ("on", True), ("0", False), ("off", False),
                                       ("", False)])
def test_the_tls_variable_takes_the_usual_words(word, tls):
    assert Security.from_env({"REVSEARCH_TLS": word}).tls is tls


def test_a_tls_variable_that_is_no_such_word_is_an_error_naming_it():
    with pytest.raises(ValueError, match="REVSEARCH_TLS='maybe'"):
        Security.from_env({"REVSEARCH_TLS": "maybe"})


def test_setting_a_ca_implies_tls(pki):
    assert Security.from_env({"REVSEARCH_TLS_CA": str(pki.ca_file)}).tls
    assert Security(ca=str(pki.ca_file)).tls


def test_a_missing_ca_file_is_an_error_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ValueError, match=f"TLS CA file '{missing}' cannot be read"):
        Security.from_env({"REVSEARCH_TLS_CA": str(missing)})


def test_a_cert_without_a_key_is_an_error(pki):
    with pytest.raises(ValueError, match="both a client certificate and its key: cert .*client.pem.* without a key"):
        Security(tls=True, cert=pki.client_cert_file)
    with pytest.raises(ValueError, match="key .*client.key.* without a cert"):
        Security.from_env({"REVSEARCH_TLS_KEY": str(pki.client_key_file)})


def test_swapped_cert_and_key_files_are_an_error_naming_the_file(pki):
    with pytest.raises(ValueError, match=f"TLS client certificate '{pki.client_key_file}' does not hold a PEM "
                                         "certificate"):
        Security(cert=pki.client_key_file, key=pki.client_cert_file)


def test_a_passphrase_protected_key_is_an_error(pki, tmp_path):
    key = serialization.load_pem_private_key(pki.server.key, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ValueError, match="encrypted.key' is encrypted"):
        Security(cert=pki.client_cert_file, key=encrypted)


def test_an_api_key_with_a_space_is_an_error_that_does_not_show_it():
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        Security(api_key="sec ret")
    assert "sec ret" not in str(caught.value)


def test_repr_never_shows_the_api_key(pki):
    security = Security(ca=pki.ca_file, api_key="super-secret-key")
    assert "super-secret-key" not in repr(security) and "super-secret-key" not in str(security)
    assert "api_key=<hidden>" in repr(security) and "ca.pem" in repr(security)
    with SearchClient("127.0.0.1:1", security=security) as client:
        assert "super-secret-key" not in repr(client._stub)


# --------------------------------------------------------------------------------------------------------------
# the API key on the wire


def test_the_api_key_reaches_the_server_on_unary_and_streaming_calls(plaintext_server):
    address, recorder = plaintext_server
    recorder.calls.clear()
    call_both(address, Security(api_key="k1"))
    assert recorder.authorization() == {"GetServerInfo": "Bearer k1", "IndexImages": "Bearer k1"}


def test_the_async_client_sends_the_api_key_on_unary_and_streaming_calls(plaintext_server):
    address, recorder = plaintext_server
    recorder.calls.clear()
    asyncio.run(call_both_async(address, Security(api_key="k1")))
    assert recorder.authorization() == {"GetServerInfo": "Bearer k1", "IndexImages": "Bearer k1"}


def test_without_security_no_authorization_is_sent(plaintext_server):
    address, recorder = plaintext_server
    recorder.calls.clear()
    call_both(address, None)
    asyncio.run(call_both_async(address, None))
    assert [metadata.get("authorization") for _, metadata in recorder.calls] == [None] * 4


def test_an_unknown_key_is_an_unauthenticated_error(plaintext_server):
    address, _ = plaintext_server
    with SearchClient(address, timeout=TIMEOUT_S, security=Security(api_key="bad")) as client:
        with pytest.raises(UnauthenticatedError, match="unknown API key") as caught:
            client.info()
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(UnauthenticatedError):
            list(client.index_images("photos", [ImageInput(image=b"x")]))


def test_a_key_without_the_right_is_a_permission_denied_error_sync_and_async(plaintext_server):
    address, _ = plaintext_server
    with SearchClient(address, timeout=TIMEOUT_S, security=Security(api_key="readonly")) as client:
        with pytest.raises(PermissionDeniedError, match="may not"):
            client.info()

    async def streaming():
        async with AsyncSearchClient(address, timeout=TIMEOUT_S, security=Security(api_key="readonly")) as client:
            async for _ in client.index_images("photos", [ImageInput(image=b"x")]):
                pass

    with pytest.raises(PermissionDeniedError):
        asyncio.run(streaming())


# --------------------------------------------------------------------------------------------------------------
# TLS end to end


def test_tls_with_the_ca_succeeds_sync_and_async_and_carries_the_key(pki):
    with tiny_server(tls_credentials(pki.server)) as (address, recorder):
        security = Security(tls=True, ca=pki.ca_file, api_key="k1")
        call_both(address, security)
        asyncio.run(call_both_async(address, security))
        assert [metadata.get("authorization") for _, metadata in recorder.calls] == ["Bearer k1"] * 4


def test_tls_without_the_ca_fails_as_unavailable(pki):
    with tiny_server(tls_credentials(pki.server)) as (address, recorder):
        with SearchClient(address, timeout=TIMEOUT_S, security=Security(tls=True)) as client:
            with pytest.raises(UnavailableError) as caught:
                client.info()
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert recorder.calls == []  # the call never reached the server


def test_a_plaintext_client_cannot_talk_to_a_tls_server(pki):
    with tiny_server(tls_credentials(pki.server)) as (address, _):
        with SearchClient(address, timeout=TIMEOUT_S) as client, pytest.raises(UnavailableError):
            client.info()


def test_server_name_checks_the_certificate_against_another_name(pki):
    with tiny_server(tls_credentials(pki.other_name_server)) as (address, recorder):
        with SearchClient(address, timeout=TIMEOUT_S, security=Security(ca=pki.ca_file)) as client:
            with pytest.raises(UnavailableError):  # the certificate names search.internal, not 127.0.0.1
                client.info()
        named = Security(ca=pki.ca_file, server_name="search.internal")
        with SearchClient(address, timeout=TIMEOUT_S, security=named) as client:
            client.info()
        assert [method for method, _ in recorder.calls] == ["GetServerInfo"]


def test_mutual_tls_needs_the_client_certificate(pki):
    with tiny_server(tls_credentials(pki.server, client_ca=pki.ca)) as (address, recorder):
        with SearchClient(address, timeout=TIMEOUT_S, security=Security(ca=pki.ca_file)) as client:
            with pytest.raises(UnavailableError):
                client.info()
        mutual = Security(ca=pki.ca_file, cert=pki.client_cert_file, key=pki.client_key_file)
        call_both(address, mutual)
        asyncio.run(call_both_async(address, mutual))
        assert [method for method, _ in recorder.calls] == ["GetServerInfo", "IndexImages"] * 2


# --------------------------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("REVSEARCH_TLS", "REVSEARCH_TLS_CA", "REVSEARCH_TLS_CERT", "REVSEARCH_TLS_KEY",
                 "REVSEARCH_TLS_SERVER_NAME", "REVSEARCH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_cli_parses_the_tls_ca_and_api_key_into_a_security(pki, clean_env):
    args = cli.build_parser().parse_args(["--tls-ca", str(pki.ca_file), "--api-key", "y", "info"])
    assert cli.security_from_args(args) == Security(tls=True, ca=pki.ca_file, api_key="y")


def test_the_cli_flags_default_from_the_environment(pki, clean_env):
    clean_env.setenv("REVSEARCH_TLS", "1")
    clean_env.setenv("REVSEARCH_TLS_CERT", str(pki.client_cert_file))
    clean_env.setenv("REVSEARCH_TLS_KEY", str(pki.client_key_file))
    clean_env.setenv("REVSEARCH_TLS_SERVER_NAME", "search.internal")
    clean_env.setenv("REVSEARCH_API_KEY", "from-env")
    args = cli.build_parser().parse_args(["info"])
    assert cli.security_from_args(args) == Security.from_env()
    overridden = cli.build_parser().parse_args(["--api-key", "from-flag", "info"])
    assert cli.security_from_args(overridden).api_key == "from-flag"


def test_no_tls_on_the_command_line_wins_over_the_tls_variables(pki, clean_env):
    clean_env.setenv("REVSEARCH_TLS_CA", str(pki.ca_file))
    args = cli.build_parser().parse_args(["--no-tls", "--api-key", "k", "info"])
    assert cli.security_from_args(args) == Security(api_key="k")


def test_the_cli_without_flags_or_variables_is_plaintext(clean_env):
    assert cli.security_from_args(cli.build_parser().parse_args(["info"])) == Security()


def test_the_cli_reports_a_bad_setting_naming_the_file_and_exits_2(tmp_path, clean_env, capsys):
    missing = tmp_path / "ca.pem"
    assert cli.main(["--tls-ca", str(missing), "info"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_the_cli_help_names_the_variables_but_not_the_key(clean_env, capsys):
    clean_env.setenv("REVSEARCH_API_KEY", "super-secret-key")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for name in ("REVSEARCH_TLS", "REVSEARCH_TLS_CA", "REVSEARCH_TLS_CERT", "REVSEARCH_TLS_KEY",
                 "REVSEARCH_TLS_SERVER_NAME", "REVSEARCH_API_KEY"):
        assert name in text
    assert "super-secret-key" not in text


def test_the_cli_passes_its_security_to_the_server_it_calls(plaintext_server, clean_env, capsys):
    address, recorder = plaintext_server
    recorder.calls.clear()
    cli.main(["--server", address, "--api-key", "k1", "info", "--json"])  # the empty answer may not print well
    assert recorder.authorization() == {"GetServerInfo": "Bearer k1"}


# --------------------------------------------------------------------------------------------------------------
# grpc.aio losing the server's status


class _LostStatus(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.INTERNAL

    def details(self):
        return "Internal error from Core"

    def debug_error_string(self):
        return 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x7f>,)'


def test_a_status_grpc_aio_lost_is_explained_rather_than_shown_as_an_internal_error_from_core():
    from revsearch.errors import from_rpc_error

    error = from_rpc_error(_LostStatus())
    assert error.code is grpc.StatusCode.INTERNAL
    assert "ended the call while requests were still being sent" in error.details and "36066" in error.details
