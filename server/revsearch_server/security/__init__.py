"""Safe exposure: TLS certificates, API keys with roles, collection scopes and rates."""
