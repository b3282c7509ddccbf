"""Embedding backends: Triton over gRPC, ONNX Runtime in-process, and failover between them."""
