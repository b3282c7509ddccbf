"""Fixtures shared by the test layers: in-process servers (port 0) and clients.

`fake_server` runs the real server, transport, use cases and Milvus Lite, with the deterministic
inference backend and face detector of tests/fakes.py: fast tests of the logic around the
models. `start_server` starts a server with any settings (the real models by default).
"""

from __future__ import annotations

import contextlib

import pytest

from revsearch import SearchClient
from revsearch_server.wiring import Overrides
from tests.fakes import FakeDetector, FakeInference
from tests.helpers import ServerThread, base_settings


def fake_parts() -> Overrides:
    return Overrides(inference=FakeInference(), detector_for=FakeDetector)


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(fakes=False, **settings) -> a running ServerThread, stopped after the module."""
    with contextlib.ExitStack() as stack:
        def start(fakes: bool = False, **settings) -> ServerThread:
            srv = ServerThread(base_settings(tmp_path_factory.mktemp("server"), **settings),
                               fake_parts() if fakes else Overrides())
            return stack.enter_context(srv)

        yield start


@pytest.fixture(scope="module")
def fake_server(start_server) -> ServerThread:
    return start_server(fakes=True)


@pytest.fixture(scope="module")
def fake_client(fake_server):
    with SearchClient(fake_server.address, timeout=60) as client:
        yield client
