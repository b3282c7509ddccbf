"""Use cases: what the service does (collections, images, videos, server info), free of gRPC."""
