"""What every fault test checks at its end: nothing accepted lost, nothing done twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from tests.fixtures.cluster import Cluster
from tests.fixtures.processes import audit, replay_verify, summary


async def assert_nothing_lost(
    cluster: Cluster, jobs: Iterable[str], tasks: Iterable[str] = ()
) -> None:
    """Every accepted job and task ended, once; the bucket holds completed jobs' files only;
    `spool replay verify` passes."""
    url = cluster.settings.database_url
    assert url is not None
    found = await audit(url, jobs, tasks, cluster.objects(), prefix="media/")
    assert found.clean, summary(found)
    # In a thread: the cluster's own reactors run on this loop, and `verify` waits for them.
    verified = await asyncio.to_thread(replay_verify, url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
