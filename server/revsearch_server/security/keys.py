"""API keys: the key file (TOML), roles, collection scopes, per-key rates, constant-time lookup.

The file, as `--api-keys FILE` takes it:

    [[keys]]
    id = "search-frontend"              # shown in logs and metrics; never the secret
    sha256 = "<hex sha256 of the key>"  # or: key = "<the key itself>"
    role = "read"                       # read | write | admin
    collections = ["photos", "team-*"]  # optional: names or glob patterns; default all
    rate = 50                           # optional: requests per second (token bucket)

A presented key is hashed with sha256 and compared with every stored digest by
`hmac.compare_digest`, so the time taken does not depend on which key (or how much of one)
matched. Keys are never logged: errors name the entry's id or its line.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_FIELDS = {"id", "sha256", "key", "role", "collections", "rate"}


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""
    READ = 1
    WRITE = 2
    ADMIN = 3


# The role each RPC needs; an RPC missing here is refused to every key.
RPC_ROLES = {
    "SearchImages": Role.READ, "BatchSearchImages": Role.READ, "SearchVideos": Role.READ, "EmbedImage": Role.READ,
    "ListCollections": Role.READ, "DescribeCollection": Role.READ, "GetServerInfo": Role.READ,
    "GetImages": Role.READ, "ListImages": Role.READ,
    "IndexImages": Role.WRITE, "IndexVideo": Role.WRITE, "DeleteImages": Role.WRITE, "ImportVectors": Role.WRITE,
    "UpdateImages": Role.WRITE,
    "CreateCollection": Role.ADMIN, "DropCollection": Role.ADMIN,
}


class KeyFileError(Exception):
    """The key file cannot be used; the message names the file and the line."""


class TokenBucket:
    """`rate` requests per second on average, bursts up to `rate` (at least 1)."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes = field(repr=False)  # sha256 of the key
    role: Role
    collections: tuple[str, ...] | None  # None: every collection
    rate: float | None  # requests per second; None: unlimited

    def may(self, rpc: str) -> bool:
        needed = RPC_ROLES.get(rpc)
        return needed is not None and self.role >= needed

    def may_use(self, collection: str) -> bool:
        if self.collections is None:
            return True
        return any(fnmatch.fnmatchcase(collection, pattern) for pattern in self.collections)


class KeyRing:
    """The keys of one key file, with their rate buckets."""

    def __init__(self, keys: list[ApiKey], source: str = ""):
        self.keys = keys
        self.source = source
        self._buckets = {k.id: TokenBucket(k.rate) for k in keys if k.rate}

    def find(self, presented: str) -> ApiKey | None:
        """The key whose digest equals sha256(presented); every stored digest is compared."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def wait_s(self, key: ApiKey) -> float:
        """0 when the key is within its rate, else seconds until its next request may go."""
        bucket = self._buckets.get(key.id)
        return bucket.take() if bucket else 0.0


def load_key_file(path: Path) -> KeyRing:
    """Reads and checks the file; KeyFileError naming the file, the entry's line and the problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"API key file {path} is not valid TOML: {exc}") from None
    entries = data.get("keys")
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        raise KeyFileError(f"API key file {path}: unknown table {unknown[0]!r}; the file holds [[keys]] entries")
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"API key file {path} has no [[keys]] entry")
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip().startswith("[[keys]]")]
    keys, ids, digests = [], set(), set()
    for n, entry in enumerate(entries):
        where = f"API key file {path}, entry {n + 1} (line {lines[n] if n < len(lines) else '?'})"
        key = _parse_entry(entry, where)
        if key.id in ids:
            raise KeyFileError(f"{where}: id {key.id!r} is used twice")
        if key.digest in digests:
            raise KeyFileError(f"{where}: the same key is listed twice (id {key.id!r})")
        ids.add(key.id)
        digests.add(key.digest)
        keys.append(key)
    return KeyRing(keys, str(path))


def _parse_entry(entry, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: each [[keys]] entry is a table of id, sha256 or key, role")
    extra = sorted(set(entry) - _FIELDS)
    if extra:
        raise KeyFileError(f"{where}: unknown field {extra[0]!r}; allowed: {', '.join(sorted(_FIELDS))}")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise KeyFileError(f"{where}: id must be 1-64 characters from A-Z a-z 0-9 . _ : -")
    if ("sha256" in entry) == ("key" in entry):
        raise KeyFileError(f"{where} ({key_id}): give exactly one of sha256 (hex digest of the key) or key")
    if "sha256" in entry:
        if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
            raise KeyFileError(f"{where} ({key_id}): sha256 must be 64 hex characters")
        digest = bytes.fromhex(entry["sha256"])
    else:
        if not isinstance(entry["key"], str) or len(entry["key"]) < 16:
            raise KeyFileError(f"{where} ({key_id}): key must be a string of at least 16 characters")
        digest = hashlib.sha256(entry["key"].encode()).digest()
    try:
        role = Role[str(entry.get("role", "")).upper()]
    except KeyError:
        raise KeyFileError(f"{where} ({key_id}): role must be read, write or admin") from None
    collections = entry.get("collections")
    if collections is not None and (not isinstance(collections, list) or not collections
                                    or not all(isinstance(c, str) and c for c in collections)):
        raise KeyFileError(f"{where} ({key_id}): collections must be a non-empty list of names or glob patterns")
    rate = entry.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
        raise KeyFileError(f"{where} ({key_id}): rate must be a positive number of requests per second")
    return ApiKey(key_id, digest, role, tuple(collections) if collections is not None else None,
                  float(rate) if rate is not None else None)
