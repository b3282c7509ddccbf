"""Typed client errors: one class per gRPC status a caller may want to handle differently."""

from __future__ import annotations

import grpc


class RevsearchClientError(Exception):
    """An RPC failed. `code` is the grpc.StatusCode, `details` the server's message;
    `retry_after_ms` the server's hint (trailing metadata `retry-after-ms`) when it was overloaded."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms


class InvalidArgumentError(RevsearchClientError): ...
class NotFoundError(RevsearchClientError): ...
class AlreadyExistsError(RevsearchClientError): ...
class ResourceExhaustedError(RevsearchClientError): ...
class UnavailableError(RevsearchClientError): ...
class DeadlineExceededError(RevsearchClientError): ...
class UnauthenticatedError(RevsearchClientError): ...  # no API key, or one the server does not know
class PermissionDeniedError(RevsearchClientError): ...  # a known key that may not make this call


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


# grpc.aio (grpc/grpc#36066, still in grpcio 1.81): when the server ends a client-streaming call before the
# client has sent everything (an API key turned away before the stream is read, say), the failed write can replace
# the server's status with this one. The server's code is lost; the message at least says what happened.
_LOST_STATUS = "Internal error from Core"
_LOST_STATUS_DETAILS = ("the server ended the call while requests were still being sent, and grpc.aio lost its "
                        "status (grpc/grpc#36066); the blocking client reports it")


def from_rpc_error(exc: grpc.RpcError) -> RevsearchClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.INTERNAL and details == _LOST_STATUS and "SendMessageOperation" in _debug(exc):
        details = _LOST_STATUS_DETAILS
    return _BY_CODE.get(code, RevsearchClientError)(code, details or "", _retry_after_ms(exc))


def _debug(exc: grpc.RpcError) -> str:
    try:
        return exc.debug_error_string() or ""
    except Exception:  # not every RpcError has one
        return ""


def _retry_after_ms(exc: grpc.RpcError) -> int | None:
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:  # not every RpcError carries metadata
        return None
    for key, value in metadata:
        if key == "retry-after-ms":
            try:
                return int(value)
            except ValueError:
                return None
    return None
