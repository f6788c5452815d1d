"""pytest fixtures for the loopback provider server.

Register them in tests/conftest.py::

    pytest_plugins = ["tests.helpers.fixtures", "tests.fakes.fixtures"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.provider_server import FakeProviderServer


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    """A started server answering the first label of a label task (``first_label_responder``).

    Change ``fake_provider.responder`` / ``latency_s`` / ``api_keys`` or call ``fail_next`` and
    ``malformed_next`` in the test; ``fake_provider.requests()`` is the log."""
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def fake_provider_factory() -> Iterator[Callable[..., FakeProviderServer]]:
    """Start servers with custom arguments: ``fake_provider_factory(responder=..., latency_s=0.1)``.
    All are stopped at the end of the test."""
    started: list[FakeProviderServer] = []

    def make(**kwargs: Any) -> FakeProviderServer:
        server = FakeProviderServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
