"""Who is calling and what they may do: the `authorization: Bearer <key>` metadata against the key
file, the RPC's role, the collection's scope and the key's rate.

Without `--api-keys` every caller is anonymous and may do everything (the server stays open as
before). The key ring is re-read on SIGHUP: a bad new file keeps the old keys and logs why; a
call already admitted keeps the key it was admitted with, so in-flight calls finish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import Overloaded, PermissionDenied, Unauthenticated
from ..observability import Metrics, or_null
from .keys import RPC_ROLES, ApiKey, KeyFileError, KeyRing, load_key_file

log = logging.getLogger(__name__)

ANONYMOUS_ID = "-"


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None  # None: the server runs without keys

    @property
    def id(self) -> str:
        return self.key.id if self.key else ANONYMOUS_ID

    def may_use(self, collection: str) -> bool:
        return self.key is None or self.key.may_use(collection)


ANONYMOUS = Caller(None)


class Authenticator:
    def __init__(self, key_file: Path, metrics: Metrics | None = None):
        self.key_file = key_file
        self._ring: KeyRing = load_key_file(key_file)  # KeyFileError at start-up: the server does not start
        self._metrics = or_null(metrics)

    @property
    def key_ids(self) -> list[str]:
        return [k.id for k in self._ring.keys]

    def reload(self) -> bool:
        """Re-reads the key file; on any problem the current keys stay and the reason is logged."""
        try:
            ring = load_key_file(self.key_file)
        except KeyFileError as exc:
            log.error("API keys not reloaded, keeping the current %d keys: %s", len(self._ring.keys), exc)
            return False
        self._ring = ring
        log.info("API keys reloaded from %s: %d keys (%s)", self.key_file, len(ring.keys),
                 ", ".join(k.id for k in ring.keys))
        return True

    def admit(self, rpc: str, metadata) -> Caller:
        """The caller of an RPC from its invocation metadata, checked for the RPC's role and the
        key's rate; UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED otherwise."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            self._deny("-", "no_key")
            raise Unauthenticated("this server requires an API key: send the metadata 'authorization: Bearer <key>' "
                                  "(CLI: --api-key or REVSEARCH_API_KEY)")
        scheme, _, token = (values[0] if isinstance(values[0], str) else "").partition(" ")
        token = token.strip()
        if len(values) > 1 or scheme.lower() != "bearer" or not token or " " in token:
            self._deny("-", "malformed")
            raise Unauthenticated("malformed authorization metadata: send exactly one 'authorization: Bearer <key>'")
        ring = self._ring  # one ring for the whole check, also while a reload swaps it
        key = ring.find(token)
        if key is None:
            self._deny("-", "unknown_key")
            raise Unauthenticated("the API key is not known (mistyped, or removed from the server's key file)")
        if not key.may(rpc):
            self._deny(key.id, "role")
            needed = RPC_ROLES.get(rpc)
            raise PermissionDenied(f"key {key.id!r} has role {key.role.name.lower()}; {rpc} needs role "
                                   f"{needed.name.lower() if needed else 'none that exists'}")
        wait_s = ring.wait_s(key)
        if wait_s > 0:
            self._deny(key.id, "rate")
            raise Overloaded(f"key {key.id!r} is over its rate of {key.rate:g} requests/s; retry after "
                             f"{wait_s * 1000:.0f} ms", retry_after_ms=max(1, int(wait_s * 1000 + 0.5)))
        return Caller(key)

    def authorize(self, caller: Caller, rpc: str, collection: str) -> None:
        """PERMISSION_DENIED when the key's scope does not cover the collection. Decided from the
        name alone, so the answer never tells whether the collection exists."""
        if collection and not caller.may_use(collection):
            self._deny(caller.id, "collection")
            raise PermissionDenied(f"key {caller.id!r} may not use collection {collection!r} (its collections: "
                                   f"{', '.join(caller.key.collections)})")

    def _deny(self, key_id: str, reason: str) -> None:
        self._metrics.denied(key_id, reason)
