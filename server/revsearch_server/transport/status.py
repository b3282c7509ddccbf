"""The single place where domain errors become gRPC status codes."""

from __future__ import annotations

import logging
import uuid

import grpc

from .. import errors

log = logging.getLogger(__name__)

_CODES: dict[type[errors.RevsearchError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


RETRY_AFTER_KEY = "retry-after-ms"


def trailing_metadata(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with the error's status: a retry hint for overload."""
    if isinstance(exc, errors.Overloaded):
        return ((RETRY_AFTER_KEY, str(int(exc.retry_after_ms))),)
    return ()


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Code and client-facing message for any exception; unknown ones never leak internals."""
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls], str(exc)
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal server error (incident {incident}); see the server log"
