"""PostgreSQL stops for ten seconds mid-run: every surface answers 503 in its own error shape
(never a hang, never a 500), workers ride it out, and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters.database import create_database, migrate
from spool.api.unavailable import MESSAGE
from spool.domain import job
from spool.embedded import EmbeddedPostgres
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses

OUTAGE_SECONDS = 10.0


@pytest.fixture
def own_postgres(embedded_pg_dir: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A server of this test's own, since the test stops it (the suite's serves other tests)."""
    pg = EmbeddedPostgres(embedded_pg_dir)
    url = pg.start()
    try:
        yield pg, url
    finally:
        pg.stop()


@pytest.fixture
async def fresh_database_url(own_postgres: tuple[EmbeddedPostgres, str]) -> AsyncIterator[str]:
    """`start_cluster`'s database, on the test's own server."""
    url = await create_database(own_postgres[1], "spool_outage")
    await migrate(url)
    yield url


async def _bounded(request: Any) -> httpx.Response:
    # A hang fails the test here rather than stalling it: an outage must be answered at once.
    answer: httpx.Response = await asyncio.wait_for(request, 10)
    return answer


async def test_while_postgres_is_down_the_api_answers_503_and_no_job_is_lost(
    start_cluster: StartCluster,
    own_postgres: tuple[EmbeddedPostgres, str],
    media_server: MediaServer,
    tmp_path: Path,
) -> None:
    pg, _ = own_postgres
    async with start_cluster(with_node=False) as cluster:
        procs = SpoolProcesses.like(cluster.settings, tmp_path / "procs")
        procs.worker("steady", "--concurrency", "download=2,mux=1,upload=1")
        headers = cluster.headers()
        try:
            slow = media_server.slow_url("clip.mp4", chunk=8192, interval=0.1)
            job_ids = [await cluster.create(slow, filename=f"pg{i}") for i in range(3)]
            await cluster.wait(job_ids[0], until=lambda j: j["step"] == "Downloading", seconds=90)

            pg.pause()
            down = time.monotonic()
            job_api: list[httpx.Response] = []
            cluster_api: list[httpx.Response] = []
            try:
                while time.monotonic() - down < OUTAGE_SECONDS:
                    client = cluster.client
                    job_api.append(
                        await _bounded(client.get(f"/jobs/{job_ids[1]}", headers=headers))
                    )
                    job_api.append(
                        await _bounded(
                            client.post(
                                "/jobs", json={"url": media_server.url("clip.mp4")}, headers=headers
                            )
                        )
                    )
                    cluster_api.append(await _bounded(client.get("/api/v1/tasks", headers=headers)))
                    await asyncio.sleep(1)
            finally:
                pg.resume()

            after = await cluster.create(media_server.url("clip.mp4"), filename="after")
            finished = [
                await cluster.wait(j, *job.TERMINAL, seconds=180) for j in [*job_ids, after]
            ]
        finally:
            procs.stop_all()

        assert len(job_api) >= 10
        for answer in job_api:
            assert (answer.status_code, answer.json()) == (503, {"error": MESSAGE})
            assert answer.headers["retry-after"] == "5"
        for answer in cluster_api:
            body = answer.json()
            assert answer.status_code == 503
            assert (body["status"], body["error_code"], body["message"]) == (
                "error",
                "INTERNAL_ERROR",
                MESSAGE,
            )
            assert body["error_details"] == {"reason": "database_unavailable"}
        assert [j["status"] for j in finished] == ["Completed"] * 4, procs.logs()
        # The worker waited the outage out: no stage was failed (and run again) because of it.
        for job_id in job_ids:
            events = await cluster.store.read_stream(job.stream_id(job_id))
            assert [e.data for e in events if isinstance(e.data, job.StageFailed)] == []
        assert "the database is unreachable, retrying" in procs.log("steady", tail=10**6)
        await assert_nothing_lost(cluster, [*job_ids, after])
