"""TLS for the gRPC port: certificate checks at start-up and reloading on SIGHUP.

`--tls-cert FILE --tls-key FILE` (PEM) serve TLS; `--tls-client-ca FILE` also requires client
certificates signed by that CA (mutual TLS). The files are checked before serving: readable, PEM,
the certificate within its validity period, the key the certificate's. A problem is a
TlsError naming the file and what is wrong.

grpc's dynamic server credentials ask `fetch` for a configuration on each new handshake; after a
successful `reload()` it hands grpc the new files once, so new connections use the new
certificate while open connections go on (the server is not restarted). A reload whose files
fail the checks keeps the current certificate and says why.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsError(Exception):
    """A certificate or key that cannot be served; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    not_after: datetime.datetime


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_material(files: TlsFiles, now: datetime.datetime | None = None) -> _Material:
    """Reads and checks the files (see the module docstring)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert_pem, key_pem = _read(files.cert, "TLS certificate (--tls-cert)"), _read(files.key, "TLS key (--tls-key)")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError(f"the TLS certificate {files.cert} is not a PEM certificate") from None
    leaf = certs[0]
    if now < leaf.not_valid_before_utc:
        raise TlsError(f"the TLS certificate {files.cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > leaf.not_valid_after_utc:
        raise TlsError(f"the TLS certificate {files.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message says what is wrong (encrypted, not PEM); it never contains the key.
        raise TlsError(f"the TLS key {files.key} cannot be loaded: "
                       f"{'it is encrypted; give an unencrypted PEM key' if 'encrypted' in str(exc) else 'not a PEM private key'}"
                       ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            leaf.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise TlsError(f"the TLS key {files.key} does not belong to the certificate {files.cert}")
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "client CA (--tls-client-ca)")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise TlsError(f"the client CA {files.client_ca} is not a PEM certificate") from None
    return _Material(cert_pem, key_pem, client_ca, leaf.not_valid_after_utc)


class ServerTls:
    """The server's TLS credentials, reloadable."""

    def __init__(self, files: TlsFiles):
        self.files = files
        self._material = load_material(files)
        self._pending: _Material | None = None
        self._lock = threading.Lock()

    @property
    def mutual(self) -> bool:
        return self.files.client_ca is not None

    def _config(self, m: _Material):
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._config(self._material), self._fetch,
                                                   require_client_authentication=self.mutual)

    def _fetch(self):
        # Called by grpc on each handshake: a configuration only when it changed.
        with self._lock:
            pending, self._pending = self._pending, None
        return self._config(pending) if pending is not None else None

    def reload(self) -> bool:
        """Re-reads the files; True when new connections will use them."""
        try:
            material = load_material(self.files)
        except TlsError as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        with self._lock:
            self._material = self._pending = material
        log.info("TLS certificate reloaded from %s (valid until %s)", self.files.cert, material.not_after)
        return True
