"""Domain errors map to gRPC codes in one place; unknown errors leak nothing."""

import grpc
import pytest

from revsearch_server import errors
from revsearch_server.transport.status import to_status, trailing_metadata


@pytest.mark.parametrize("exc, code", [
    (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("gone"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted("big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition("state"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
])
def test_each_domain_error_has_its_grpc_code_and_keeps_its_message(exc, code):
    assert to_status(exc) == (code, str(exc))


def test_an_unexpected_exception_becomes_internal_without_its_details():
    code, message = to_status(KeyError("secret_internal_name"))
    assert code is grpc.StatusCode.INTERNAL
    assert "secret_internal_name" not in message and "incident" in message


def test_overload_is_resource_exhausted_with_its_retry_hint_as_trailing_metadata():
    exc = errors.Overloaded("the server is overloaded; retry after 120 ms", retry_after_ms=120)
    assert to_status(exc) == (grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    assert trailing_metadata(exc) == (("retry-after-ms", "120"),)
    assert trailing_metadata(errors.ResourceExhausted("too big")) == ()
    assert trailing_metadata(KeyError("x")) == ()
