"""ListImages' page tokens (AIP-158): opaque to clients, bound to one collection and one filter.

A token carries where the next page starts (the last item id of the page) with the collection and
the filter's digest it was made for, and a checksum. It is not signed with a secret: every replica
of the server must accept every other's tokens without shared configuration, and a forged token
could only start a listing the caller may already make somewhere else (the filter and the caller's
scope apply on every page). The checksum catches tokens that were cut, edited or mixed up, which
answer INVALID_ARGUMENT instead of a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from .errors import InvalidArgument

_VERSION = 1
_CHECK_BYTES = 12


def _check(payload: bytes) -> bytes:
    return hashlib.sha256(b"revsearch page token\0" + payload).digest()[:_CHECK_BYTES]


def encode_page_token(collection: str, filter_digest: str, after: str) -> str:
    payload = json.dumps({"v": _VERSION, "c": collection, "f": filter_digest, "a": after},
                         separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _check(payload)).decode().rstrip("=")


def decode_page_token(token: str, collection: str, filter_digest: str) -> str:
    """The item id the page after `token` starts after; INVALID_ARGUMENT for a token that is not one
    of ours, or was made for another collection or filter."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument("page_token is not a token ListImages gave; start again without one") from None
    payload, check = raw[:-_CHECK_BYTES], raw[-_CHECK_BYTES:]
    if len(raw) <= _CHECK_BYTES or _check(payload) != check:
        raise InvalidArgument("page_token is damaged or not a token ListImages gave; pass next_page_token back "
                              "unchanged, or start again without one")
    fields = json.loads(payload)
    if fields.get("v") != _VERSION or not isinstance(fields.get("a"), str):
        raise InvalidArgument("page_token comes from another version of the server; start again without one")
    if fields.get("c") != collection:
        raise InvalidArgument(f"page_token belongs to a listing of collection {fields.get('c')!r}, not "
                              f"{collection!r}; start again without one")
    if fields.get("f") != filter_digest:
        raise InvalidArgument("page_token belongs to a listing with another filter; send the same filter on "
                              "every page, or start again without a token")
    return fields["a"]
