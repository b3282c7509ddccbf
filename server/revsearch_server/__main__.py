"""`python -m revsearch_server`: run the gRPC server with flags / REVSEARCH_* settings."""

from .app import main

main()
