"""Domain errors raised by the pipeline, independent of gRPC.

Each class names the kind of failure; `transport/status.py` maps them to gRPC codes in one place.
"""


class RevsearchError(Exception):
    """Base class: the message is shown to the client, so it must say what to fix."""


class InvalidArgument(RevsearchError):
    pass


class NotFound(RevsearchError):
    pass


class AlreadyExists(RevsearchError):
    pass


class ResourceExhausted(RevsearchError):
    pass


class Overloaded(ResourceExhausted):
    """Too much work in flight: retry after `retry_after_ms` (sent as `retry-after-ms` trailing metadata)."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class FailedPrecondition(RevsearchError):
    pass


class Unavailable(RevsearchError):
    """A dependency (Triton, Milvus) cannot be reached or did not answer in time; retry later."""


class DeadlineExceeded(RevsearchError):
    """The call took longer than allowed (e.g. a stream that sent nothing for too long)."""


class Unauthenticated(RevsearchError):
    """No API key, an unknown one, or a malformed authorization header."""


class PermissionDenied(RevsearchError):
    """The caller's key may not do this (its role, or a collection outside its scope)."""
