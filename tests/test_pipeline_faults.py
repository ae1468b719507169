"""Faults in the middle of work: nothing accepted is lost, and nothing is done twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spool.embedded import EmbeddedRedis
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of this module's own: its FLUSHALL must not empty other tests' queues."""
    redis = EmbeddedRedis(tmp_path_factory.mktemp("flushall-redis"))
    try:
        yield redis.start()
    finally:
        redis.stop()


def _worker(cluster: Cluster, node_id: str, log: Path) -> subprocess.Popen[bytes]:
    """`spool worker` as a process of its own, configured only through the environment."""
    env = {
        **os.environ,
        "SPOOL_DATABASE_URL": cluster.settings.database_url or "",
        "SPOOL_REDIS_URL": cluster.settings.redis_url or "",
        "SPOOL_STORAGE_URL": cluster.settings.storage_url or "",
        "SPOOL_URL_ALLOWLIST": "127.0.0.1/32",
        "SPOOL_DATA_DIR": str(cluster.settings.data_dir),
        "SPOOL_NODE_ID": node_id,
        "SPOOL_STALL_TIMEOUT": "10",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "spool", "worker", "--concurrency", "download=2,mux=1,upload=1"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def _all_finished(cluster: Cluster, job_ids: list[str], seconds: float) -> list[dict]:
    return [
        await cluster.wait(j, "Completed", "Failed", "Cancelled", seconds=seconds) for j in job_ids
    ]


async def test_a_worker_killed_mid_download_loses_no_job(
    start_cluster: StartCluster, media_server: MediaServer, tmp_path: Path
) -> None:
    async with start_cluster(with_node=False) as cluster:
        log = tmp_path / "worker.log"
        worker = _worker(cluster, "killed-node", log)
        try:
            slow = media_server.slow_url("clip.mp4", chunk=8192, interval=0.1)
            job_ids = [await cluster.create(slow) for _ in range(3)]
            await cluster.wait(job_ids[0], until=lambda j: j["step"] == "Downloading", seconds=60)

            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            worker = _worker(cluster, "killed-node", log)

            finished = await _all_finished(cluster, job_ids, seconds=120)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        assert [j["status"] for j in finished] == ["Completed"] * 3, log.read_text()[-3000:]
        for job_id in job_ids:
            types = await cluster.event_types(job_id)
            assert types.count("JobCompleted") == 1
        assert len(cluster.objects()) == 3
        histories = [await cluster.event_types(j) for j in job_ids]
        assert any("StageFailed" in h for h in histories)  # the killed attempt was retried


async def test_a_redis_flushall_mid_run_loses_no_job(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(download_concurrency=1) as cluster:
        slow = media_server.slow_url("clip.mp4", chunk=16384, interval=0.05)
        job_ids = [await cluster.create(slow, filename=f"f{i}") for i in range(4)]
        await cluster.wait(job_ids[0], until=lambda j: j["step"] == "Downloading", seconds=60)

        await cluster.redis.flushall()

        finished = await _all_finished(cluster, job_ids, seconds=120)
        assert [j["status"] for j in finished] == ["Completed"] * 4
        for job_id in job_ids:
            assert (await cluster.event_types(job_id)).count("JobCompleted") == 1
            # The units the reconciler dispatched again still follow the job's request.
            answer = await cluster.client.get(
                f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
            )
            history = answer.json()["events"]
            assert {e["metadata"]["correlation_id"] for e in history} == {
                history[0]["metadata"]["request_id"]
            }
        assert sorted(cluster.objects()) == [f"media/f{i}.mp4" for i in range(4)]


async def test_a_stage_without_progress_is_failed_and_retried(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    # The source sends a little, then nothing for longer than the stall timeout.
    async with start_cluster(stall_timeout=1.5, stage_attempts=2) as cluster:
        stalled = media_server.slow_url("clip.mp4", chunk=1024, interval=5)
        job_id = await cluster.create(stalled)
        failed = await cluster.wait(job_id, "Failed", "Completed", seconds=60)
        assert failed["status"] == "Failed"
        assert "No progress for 1.5 s" in failed["error"]
        assert failed["download_retries"] == 2
        await asyncio.sleep(0)
