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


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def from_rpc_error(exc: grpc.RpcError) -> RevsearchClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _BY_CODE.get(code, RevsearchClientError)(code, details or "", _retry_after_ms(exc))


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
