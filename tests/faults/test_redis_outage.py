"""Redis stops for a while in the middle of a run, then comes back empty.

Not a FLUSHALL (which `test_worker_kills.py` covers): the server is gone, so every arq worker's
poll, every dispatch and every enqueue fails meanwhile. Redis is only a transport here; the log
in PostgreSQL holds every job, so nothing accepted may be lost, nothing done twice, and the
cluster must pick up by itself once Redis answers again, without a restart.
"""

from __future__ import annotations

import asyncio

import pytest

from spool.domain import job
from spool.embedded import EmbeddedRedis
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import StartCluster
from tests.fixtures.media import MediaServer

OUTAGE_SECONDS = 5.0


@pytest.fixture(scope="module")
def redis_url(private_redis: tuple[EmbeddedRedis, str]) -> str:
    """The clusters here use the module's own Redis, which the test stops."""
    return private_redis[1]


async def test_redis_down_for_seconds_mid_run_loses_no_job_and_the_cluster_resumes_alone(
    start_cluster: StartCluster,
    media_server: MediaServer,
    private_redis: tuple[EmbeddedRedis, str],
) -> None:
    redis_server, redis_url = private_redis
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with start_cluster(download_concurrency=1) as cluster:
        slow = media_server.slow_url("clip.mp4", chunk=16384, interval=0.05)
        job_ids = [await cluster.create(slow, filename=f"r{i}") for i in range(3)]
        await cluster.wait(job_ids[0], until=lambda j: j["step"] == "Downloading", seconds=60)

        redis_server.stop()
        # Jobs are accepted meanwhile: the log is all a job needs to exist.
        job_ids.append(await cluster.create(media_server.url("clip.mp4"), filename="during"))
        await asyncio.sleep(OUTAGE_SECONDS)
        redis_server.start(port)

        finished = [await cluster.wait(j, *job.TERMINAL, seconds=120) for j in job_ids]
        assert [j["status"] for j in finished] == ["Completed"] * 4, finished
        assert sorted(cluster.objects()) == sorted(
            [cluster.in_bucket(f"r{i}.mp4") for i in range(3)] + [cluster.in_bucket("during.mp4")]
        )
        # And a job submitted after the outage goes through at once, on the same processes.
        after = await cluster.create(media_server.url("clip.mp4"), filename="after")
        assert (await cluster.wait(after, *job.TERMINAL, seconds=60))["status"] == "Completed"
        await assert_nothing_lost(cluster, [*job_ids, after])
