"""revsearch's test kit: the harnesses the tests and the benchmarks share (crash testing and the
embedded Milvus launcher: `revsearch_testkit.chaos`).

Not part of the `revsearch` distribution (`pip install .` never ships it) and never imported by the
client (clients/revsearch) or the server (server/revsearch_server): tests/unit/test_layers.py checks
that. It may import both. `make venv` installs it into .venv with `pip install --no-deps -e testkit`.
"""
