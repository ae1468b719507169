"""Fixtures of the multi-host tests: a cluster of network namespaces (tests/cluster/multihost.py)
over the suite's PostgreSQL and Redis, skipped with the reason where namespaces cannot be made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.multihost import MultiHost, multihost
from tests.cluster.network import namespaces_unavailable
from tests.fixtures.databases import Databases
from tests.fixtures.media import make_clip, make_dense_clip


@pytest.fixture(scope="session")
def namespaces() -> None:
    """Skip when this machine cannot make network namespaces (not root, no `ip`, ...)."""
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")


@pytest.fixture(scope="session")
def cluster_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`clip.mp4`: a 1 s 160x120 clip, short so that 60 jobs go through in seconds; and
    `dense.mp4`, ~10 MiB of noise, uploaded in two parts (the multipart threshold is 8 MiB)."""
    root = tmp_path_factory.mktemp("cluster-media")
    make_clip(root / "clip.mp4", 1.0, width=160, height=120)
    make_dense_clip(root / "dense.mp4", seconds=2, video_bitrate="34M")
    return root


@pytest.fixture(scope="module")
async def three_nodes(
    namespaces: None,
    databases: Databases,
    redis_url: str,
    cluster_media: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> AsyncIterator[MultiHost]:
    """A cluster of three node hosts over a database of its own, shared by a module's tests:
    starting one costs seconds of imports on every host. A module that sets `SLOWABLE = True`
    gets a cluster whose links `slow` can slow (tests/cluster/slow_link.py); the others keep
    socat's forwards, whatever the kernel."""
    name, url = await databases.take()
    try:
        async with multihost(
            database_url=url,
            redis_url=redis_url,
            media_root=cluster_media,
            root=tmp_path_factory.mktemp("hosts"),
            nodes=3,
            slowable=getattr(request.module, "SLOWABLE", False),
        ) as cluster:
            yield cluster
    finally:
        databases.give_back(name)


@pytest.fixture
async def cluster(three_nodes: MultiHost) -> MultiHost:
    """The module's cluster with every node up, linked and online, whatever the test before
    did to it."""
    await three_nodes.restore()
    return three_nodes
