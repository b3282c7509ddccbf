"""revsearch server: a gRPC reverse image search service (grpc.aio, Triton, Milvus)."""

__version__ = "0.1.0"
