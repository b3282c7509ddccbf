"""revsearch client: the generated stubs (revsearch.v1), a friendly client library and the CLI.

`from revsearch import SearchClient, AsyncSearchClient, RevsearchClientError` works as before (and so does
Security, the TLS and API key settings), but the client library is loaded only when one of them is first
asked for (PEP 562): the server imports the stubs (revsearch.v1) and the enum names (revsearch.names) from
this package and should not pay for, or depend on, the client library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time __getattr__ below does the import
    from .client import AsyncSearchClient, ImageInput, SearchClient, Security, VectorInput
    from .errors import RevsearchClientError

# Public name -> the submodule that defines it.
_LAZY = {"SearchClient": "client", "AsyncSearchClient": "client", "Security": "client", "ImageInput": "client",
         "VectorInput": "client", "RevsearchClientError": "errors"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
