"""Subscriptions checked by two `spool reactors` processes at once, as two machines would:
each new entry of a feed whose entries are direct files and HLS streams becomes one job, and
every job downloads.

Real parts: the test cluster (PostgreSQL, Redis, moto S3, an in-process node) and two
`spool reactors` child processes against the same database and Redis, each running the
subscription checks; a loopback RSS feed the test changes between checks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spool.domain import subscription
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses
from tests.fixtures.waiting import until


class Playlist:
    """An RSS feed on the loopback media server: entry `n` is the test clip when odd, the test
    HLS stream when even (each under a query of its own, so every entry is another URL)."""

    def __init__(self, media_dir: Path, media_server: MediaServer) -> None:
        self.name = f"list-{uuid.uuid4().hex[:8]}"
        self.path = media_dir / f"{self.name}.xml"
        self.url = media_server.url(f"{self.name}.xml")
        self.media_server = media_server
        self.items: list[int] = []

    def entry_url(self, n: int) -> str:
        path = "clip.mp4" if n % 2 else "hls/index.m3u8"
        return self.media_server.url(f"{path}?entry={self.name}-{n}")

    def publish(self, *numbers: int) -> None:
        self.items.extend(numbers)
        items = "".join(
            f"<item><title>Entry {n}</title><guid>{self.name}-{n}</guid>"
            f'<enclosure url="{self.entry_url(n)}" type="video/mp4" length="1"/></item>'
            for n in reversed(self.items)
        )
        self.path.write_text(
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>{self.name}</title>'
            f"{items}</channel></rss>"
        )


@pytest.fixture
async def two_reactors(
    start_cluster: StartCluster, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, SpoolProcesses]]:
    """A cluster (its own reactors run no subscription checks) and two `spool reactors`
    processes that do, each every few seconds, any subscription due once a second."""
    async with start_cluster(subscription_min_interval=1) as cluster:
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        try:
            with procs.kept_logs():
                for name in ("reactors-a", "reactors-b"):
                    procs.start(name, "reactors", SPOOL_SUBSCRIPTION_MIN_INTERVAL="1")
                yield cluster, procs
        finally:
            await asyncio.to_thread(procs.stop_all)


async def _created(cluster: Cluster, subscription_id: str) -> Counter[str]:
    """How many jobs each entry (by title) became, from the log itself."""
    rows = await cluster.pool.fetch(
        "SELECT data->>'title' FROM events WHERE type = 'JobCreated'"
        " AND data->>'subscription_id' = $1",
        subscription_id,
    )
    return Counter(r[0] for r in rows)


async def _checks_finished(cluster: Cluster, subscription_id: str) -> int:
    count: int = await cluster.pool.fetchval(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND type = 'CheckFinished'",
        subscription.stream_id(subscription_id),
    )
    return count


async def test_two_reactor_processes_make_each_new_entry_one_job_and_every_job_downloads(
    two_reactors: tuple[Cluster, SpoolProcesses], media_dir: Path, media_server: MediaServer
) -> None:
    cluster, procs = two_reactors
    playlist = Playlist(media_dir, media_server)
    playlist.publish(1, 2)
    answer = await cluster.client.post(
        "/subscriptions",
        json={"url": playlist.url, "interval": 1, "max_items": 10},
        headers=cluster.headers(),
    )
    assert answer.status_code == 201, answer.text
    sid = answer.json()["subscription_id"]

    async def made(n: int) -> bool:
        return sum((await _created(cluster, sid)).values()) >= n

    await until(lambda: made(2), seconds=60)
    playlist.publish(3, 4)
    await until(lambda: made(4), seconds=60)
    # Both processes keep checking it every second it is due: once several more checks have
    # found nothing new, every entry is still one job.
    seen = await _checks_finished(cluster, sid)

    async def checked_again() -> bool:
        return await _checks_finished(cluster, sid) >= seen + 3

    await until(checked_again, seconds=60)
    assert await _created(cluster, sid) == {f"Entry {n}": 1 for n in (1, 2, 3, 4)}

    listed = await cluster.client.get(
        "/jobs", params={"subscription_id": sid}, headers=cluster.headers()
    )
    jobs = listed.json()["jobs"]
    assert len(jobs) == 4
    done = [await cluster.wait(j["id"], "Completed", "Failed", seconds=90) for j in jobs]
    assert [d["status"] for d in done] == ["Completed"] * 4, [d.get("error") for d in done]
    assert all(p.poll() is None for p in procs.procs.values()), procs.logs()
