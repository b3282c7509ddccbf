"""The transport layer: gRPC messages in and out, one error path, stream mechanics."""
