"""Fixtures of the multi-host tests: a cluster of network namespaces (tests/cluster/multihost.py)
over the suite's PostgreSQL and Redis, skipped with the reason where namespaces cannot be made."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.multihost import MultiHost, multihost
from tests.cluster.network import namespaces_unavailable
from tests.fixtures.media import make_clip

StartMultiHost = Callable[..., contextlib.AbstractAsyncContextManager[MultiHost]]


@pytest.fixture(scope="session")
def namespaces() -> None:
    """Skip when this machine cannot make network namespaces (not root, no `ip`, ...)."""
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")


@pytest.fixture(scope="session")
def cluster_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`clip.mp4`: a 1 s 160x120 clip, short so that 60 jobs go through in seconds."""
    root = tmp_path_factory.mktemp("cluster-media")
    make_clip(root / "clip.mp4", 1.0, width=160, height=120)
    return root


@pytest.fixture
def start_multihost(
    namespaces: None, fresh_database_url: str, redis_url: str, cluster_media: Path, tmp_path: Path
) -> StartMultiHost:
    """A factory: `async with start_multihost(nodes=3, SPOOL_NODE_TIMEOUT="4") as c: ...`."""

    def start(nodes: int, **options: Any) -> contextlib.AbstractAsyncContextManager[MultiHost]:
        return multihost(
            database_url=fresh_database_url,
            redis_url=redis_url,
            media_root=cluster_media,
            root=tmp_path / "hosts",
            nodes=nodes,
            **options,
        )

    return start
