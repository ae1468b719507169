"""Workers die mid-work (SIGKILL, no goodbye) and Redis forgets everything: no accepted job or
task is lost, none is done twice, and storage keeps nothing a completed job does not own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spool.adapters.job_store import load_job
from spool.adapters.task_store import load_task
from spool.domain import job, task
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Metadata, NewEvent
from spool.embedded import EmbeddedRedis
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401

CONCURRENCY = ("--concurrency", "download=2,mux=1,upload=1,task=1")


async def _all_finished(cluster: Cluster, job_ids: list[str], seconds: float) -> list[dict]:
    return [await cluster.wait(j, *job.TERMINAL, seconds=seconds) for j in job_ids]


async def _history(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


@pytest.fixture(scope="module")
def redis_url(private_redis: tuple[EmbeddedRedis, str]) -> str:
    """A Redis server of this module's own: its FLUSHALL must not empty other tests' queues."""
    return private_redis[1]


# Per stage: how a job is held in it long enough to be caught there.
Source = Callable[[MediaServer, str], tuple[str, dict[str, Any]]]
HOLD: dict[str, Source] = {
    "download": lambda m, _: (m.slow_url("clip.mp4", chunk=8192, interval=0.1), {}),
    "mux": lambda m, long: (m.url(long), {"format": "webm"}),
    # The upload is held by pausing the proxy in front of S3 (below).
    "upload": lambda m, _: (m.url("clip.mp4"), {}),
}


async def _stage_started(cluster: Cluster, job_ids: list[str], stage: str) -> str:
    """Wait until the log says `stage` started on a node for one of the jobs; returns which."""
    deadline = time.monotonic() + 90
    while True:
        for job_id in job_ids:
            events = await cluster.store.read_stream(job.stream_id(job_id))
            if any(isinstance(e.data, job.StageStarted) and e.data.stage == stage for e in events):
                return job_id
        assert time.monotonic() < deadline, [e.type for e in events]
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("stage", ["download", "mux", "upload"])
async def test_a_worker_killed_mid_stage_and_restarted_completes_every_job_once(
    stage: str,
    start_cluster: StartCluster,
    media_server: MediaServer,
    long_clip: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    source = HOLD[stage]
    throttled: ThrottledS3 | None = None
    overrides: dict[str, Any] = {}
    if stage == "upload":
        throttled = request.getfixturevalue("throttled_s3")
        overrides["storage_url"] = throttled.storage_url
    url, options = source(media_server, long_clip)
    async with start_cluster(with_node=False, **overrides) as cluster:
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        procs.worker("mortal", *CONCURRENCY)
        try:
            if throttled is not None:
                throttled.proxy.pause()  # uploads hang, half sent, until the kill
            job_ids = [await cluster.create(url, filename=f"{stage}{i}", **options) for i in (0, 1)]
            # One at a time muxes and uploads: the other job waits for the slot.
            struck = await _stage_started(cluster, job_ids, stage)

            procs.kill("mortal")
            procs.worker("mortal", *CONCURRENCY)
            if throttled is not None:
                throttled.proxy.unthrottle()

            finished = await _all_finished(cluster, job_ids, seconds=120)
        finally:
            procs.stop_all()
        assert [j["status"] for j in finished] == ["Completed"] * 2, procs.logs()
        # The kill struck the stage itself: its attempt was failed and run again.
        history = await _history(cluster, struck)
        failed = [e["data"] for e in history if e["type"] == "StageFailed"]
        assert stage in [f["stage"] for f in failed], failed
        if stage != "download":
            # The first job to get there went straight on to the stage (its slot was free):
            # the kill struck a stage no queue held, which only the node's lease brings back.
            first_start = next(
                i
                for i, e in enumerate(history)
                if e["type"] == "StageStarted" and e["data"]["stage"] == stage
            )
            assert history[first_start - 1]["data"]["chained"], history[first_start - 1]
        await assert_nothing_lost(cluster, job_ids)


async def _task_status(cluster: Cluster, task_id: str, *statuses: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        state = await load_task(cluster.store, task_id)
        if state is not None and state.status in statuses:
            return state.status
        assert time.monotonic() < deadline, f"task stuck: {state}"
        await asyncio.sleep(0.1)


async def test_a_worker_killed_mid_task_and_restarted_runs_the_task_again_once(
    start_cluster: StartCluster, media_server: MediaServer, tmp_path: Path
) -> None:
    async with start_cluster(with_node=False) as cluster:
        cluster.start_scheduler(online_seconds=3.0)
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        procs.worker("mortal", *CONCURRENCY)
        try:
            answer = await cluster.client.post(
                "/api/v1/tasks",
                json={
                    "task_type": "sleep",
                    "payload": {"seconds": 2},
                    "requirements": {"timeout_seconds": 5, "max_retries": 2},
                },
                headers=cluster.headers(),
            )
            assert answer.status_code == 201, answer.text
            task_id = answer.json()["data"]["task_id"]
            slow = media_server.slow_url("clip.mp4", chunk=8192, interval=0.1)
            job_id = await cluster.create(slow, filename="beside-the-task")
            await _task_status(cluster, task_id, "running", seconds=90)

            procs.kill("mortal")
            procs.worker("mortal", *CONCURRENCY)

            ended = await _task_status(cluster, task_id, *task.TERMINAL, seconds=120)
            finished = await cluster.wait(job_id, *job.TERMINAL, seconds=120)
        finally:
            procs.stop_all()
        assert (ended, finished["status"]) == ("success", "Completed"), procs.logs()
        events = [e.type for e in await cluster.store.read_stream(task.stream_id(task_id))]
        assert events.count("TaskTimedOut") == 1 and "TaskRetried" in events
        await assert_nothing_lost(cluster, [job_id], [task_id])


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
            # The units the reconciler dispatched again still follow the job's request.
            history = await _history(cluster, job_id)
            assert {e["metadata"]["correlation_id"] for e in history} == {
                history[0]["metadata"]["request_id"]
            }
        assert sorted(cluster.objects()) == [cluster.in_bucket(f"f{i}.mp4") for i in range(4)]
        await assert_nothing_lost(cluster, job_ids)


async def test_a_stage_without_progress_is_failed_and_retried(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    # The source sends a little, then nothing for longer than the stall timeout.
    async with start_cluster(stall_timeout=1.5, stage_attempts=2) as cluster:
        stalled = media_server.slow_url("clip.mp4", chunk=1024, interval=2.5)
        job_id = await cluster.create(stalled)
        failed = await cluster.wait(job_id, "Failed", "Completed", seconds=60)
        assert failed["status"] == "Failed"
        assert "No progress for 1.5 s" in failed["error"]
        assert failed["download_retries"] == 2
        await assert_nothing_lost(cluster, [job_id])


async def test_an_upload_wrongly_given_up_on_finishes_late_and_its_retry_still_completes(
    start_cluster: StartCluster, media_server: MediaServer, request: pytest.FixtureRequest
) -> None:
    throttled: ThrottledS3 = request.getfixturevalue("throttled_s3")
    # One upload at a time: the retry waits until the attempt given up on has finished.
    async with start_cluster(storage_url=throttled.storage_url, upload_concurrency=1) as cluster:
        throttled.proxy.pause()
        job_id = await cluster.create(media_server.url("clip.mp4"), filename="late")
        await _stage_started(cluster, [job_id], "upload")

        # What the reconciler appends when it takes a starved worker for a dead one.
        while True:
            state = await load_job(cluster.store, job_id)
            assert state is not None
            events = job.fail_stage(
                state,
                "upload",
                state.run,
                state.attempt,
                node_id=state.node_id,
                reason="The worker running upload stopped answering",
                backoff=0.0,
            )
            try:
                await cluster.store.append(
                    job.stream_id(job_id),
                    [NewEvent(e, Metadata(actor="test")) for e in events],
                    state.version,
                )
                break
            except ConcurrencyError:
                continue  # a progress event landed first
        throttled.proxy.unthrottle()

        finished = await cluster.wait(job_id, *job.TERMINAL, seconds=90)
        assert finished["status"] == "Completed", finished
        await assert_nothing_lost(cluster, [job_id])
