"""revsearch client: the generated stubs (revsearch.v1), a friendly client library and the CLI."""

from .client import AsyncSearchClient, SearchClient  # noqa: F401
from .errors import RevsearchClientError  # noqa: F401
