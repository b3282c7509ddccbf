"""Typed client errors: one class per gRPC status a caller may want to handle differently."""

from __future__ import annotations

import grpc


class RevsearchClientError(Exception):
    """An RPC failed. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


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
    return _BY_CODE.get(code, RevsearchClientError)(code, details or "")
