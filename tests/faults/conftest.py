"""Fixtures of the fault tests that more than one module uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spool.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A started Redis server of the module's own, and its URL: for tests that flush or stop
    it, which the suite's shared server must never be."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("private-redis"))
    try:
        yield server, server.start()
    finally:
        server.stop()
