"""The API process is SIGKILLed in the middle of a burst of `POST /jobs`: every 201 a client got
is a job, no job exists twice, and a request left unanswered made at most one job."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from spool.domain import job
from spool.embedded import free_port
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses


async def test_killing_the_api_mid_burst_loses_no_acknowledged_job_and_doubles_none(
    start_cluster: StartCluster, media_server: MediaServer, tmp_path: Path
) -> None:
    async with start_cluster() as cluster:
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        port = free_port()

        async def start_api() -> None:
            # The same port again after the kill: the clients' base URL stays.
            await asyncio.to_thread(procs.api, port=port, seconds=90)

        acknowledged: list[str] = []
        refused: list[int] = []
        unanswered: list[str] = []  # sent, or maybe not: no answer either way
        cut_off: list[str] = []  # sent, and the connection died before the answer
        clip = media_server.url("clip.mp4")

        async def post(client: httpx.AsyncClient, name: str) -> None:
            try:
                answer = await client.post(
                    "/jobs", json={"url": clip, "filename": name}, headers=cluster.headers()
                )
            except httpx.TransportError as exc:
                unanswered.append(name)
                if not isinstance(exc, httpx.ConnectError):
                    cut_off.append(name)
                return
            if answer.status_code == 201:
                acknowledged.append(answer.json()["job_id"])
            else:
                refused.append(answer.status_code)

        firing = True

        async def sender(client: httpx.AsyncClient, k: int) -> None:
            """Post one job after another while `firing`: some are always in flight."""
            i = 0
            while firing:
                await post(client, f"burst{k}-{i}")
                i += 1

        try:
            await start_api()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
                senders = [asyncio.create_task(sender(client, k)) for k in range(5)]
                for _ in range(3000):  # the kill lands once the burst is being answered
                    if len(acknowledged) >= 5:
                        break
                    await asyncio.sleep(0.01)
                procs.kill("api")
                firing = False
                await asyncio.gather(*senders)

                await start_api()
                await asyncio.gather(*(post(client, f"after{i}") for i in range(3)))
        finally:
            procs.stop_all()

        assert cut_off, "no request was in flight when the API died"
        assert refused == []
        created = await cluster.pool.fetch(
            "SELECT stream_id, data->'options'->>'filename' AS filename FROM events "
            "WHERE type = 'JobCreated'"
        )
        jobs = {r["stream_id"].removeprefix("job-"): r["filename"] for r in created}
        assert set(acknowledged) <= set(jobs)
        names = Counter(jobs.values())
        assert [n for n, count in names.items() if count > 1] == []
        # A request the client never heard back about made its job at most once.
        assert set(jobs.values()) - {jobs[j] for j in acknowledged} <= set(unanswered)

        for job_id in jobs:
            await cluster.wait(job_id, *job.TERMINAL, seconds=120)
        await assert_nothing_lost(cluster, acknowledged)
