"""Domain errors raised by the pipeline, independent of gRPC.

Each class names the kind of failure; `grpc_status.py` maps them to gRPC codes in one place.
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


class FailedPrecondition(RevsearchError):
    pass


class Unavailable(RevsearchError):
    """A dependency (Triton, Milvus) cannot be reached or did not answer in time; retry later."""
