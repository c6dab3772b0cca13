"""One real Mirror server per test session (see mirror_server.py); tests drive it over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mirror_server import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory.mktemp("serving"))
