"""`python -m revsearch_server.healthcheck HOST:PORT`: exit 0 when the server reports SERVING.

For container health checks. The health service needs no API key; TLS is used when
REVSEARCH_TLS_CA (the CA that signed the server's certificate) or REVSEARCH_TLS_CERT is set.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else "localhost:50051"
    ca = os.environ.get("REVSEARCH_TLS_CA", "")
    if ca or os.environ.get("REVSEARCH_TLS_CERT"):
        roots = open(ca, "rb").read() if ca else None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError as err:
        print(f"health check of {target} failed: {err.code().name}", file=sys.stderr)
        return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
