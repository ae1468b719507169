"""How work reaches a node: a queued unit is taken as soon as it is enqueued, not at the next
poll; a node goes straight on from a download to its mux and from a mux to its upload when it
has the slot, each still a stage of its own in the log; when the slot is busy the next stage
waits in the node's queue; two workers on one queue never both run a unit.

Real parts only: PostgreSQL, Redis, moto's S3 server, FFmpeg and the loopback media server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter
from typing import Any

from arq.jobs import Job
from arq.worker import func

from spool.adapters.queue import (
    connect,
    enqueue,
    listen_for_wakeups,
    node_queue,
    unit_status,
)
from spool.domain import job
from spool.domain.events import RecordedEvent
from spool.reactors.worker.arq_workers import PromptWorker
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until
from tests.test_tasks_cluster import nodes_running, settled, submit
from tests.test_webhooks import Receiver

PATIENCE = 20.0
"""Seconds a test gives a unit to be taken and done: a third of the poll it must not wait for."""


async def _log(cluster: Cluster, job_id: str) -> list[RecordedEvent]:
    return await cluster.store.read_stream(job.stream_id(job_id))


def _stage_events(log: list[RecordedEvent]) -> list[RecordedEvent]:
    kinds = (job.StageStarted, job.DownloadCompleted, job.MuxCompleted, job.JobCompleted)
    return [e for e in log if isinstance(e.data, kinds)]


def _unit(job_id: str, stage: job.Stage, attempt: int = 1) -> str:
    return job.arq_job_id(job_id, 1, stage, attempt)


async def test_a_queued_unit_is_taken_at_once_though_the_poll_is_a_minute_away(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    receiver = Receiver()
    try:
        async with start_cluster(queue_poll=60.0) as cluster:
            cluster.start_scheduler()
            assert cluster.node is not None
            await nodes_running(cluster, cluster.node.node_id)
            # Two jobs one after the other: the second is enqueued long after the workers'
            # first look, so only its enqueue's wake-up can have it taken within the patience.
            for name in ("first", "second"):
                job_id = await cluster.create(
                    media_server.url("clip.mp4"), filename=name, webhook_url=receiver.url
                )
                done = await cluster.wait(
                    job_id,
                    seconds=PATIENCE,
                    until=lambda j: j["webhook_status"] in ("delivered", "failed"),
                )
                assert (done["status"], done["webhook_status"]) == ("Completed", "delivered")
            # A task goes to the node's own queue, woken the same way.
            task_id = await submit(cluster, task_type="echo", payload={"n": 1})
            await settled(cluster, task_id, "success", seconds=PATIENCE)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


async def test_a_node_goes_straight_on_to_the_mux_and_the_upload_each_recorded_as_its_own_stage(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="straight")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done

    log = await _log(cluster, job_id)
    steps = _stage_events(log)
    assert [(type(e.data).__name__, getattr(e.data, "stage", None)) for e in steps] == [
        ("StageStarted", "download"),
        ("DownloadCompleted", None),
        ("StageStarted", "mux"),
        ("MuxCompleted", None),
        ("StageStarted", "upload"),
        ("JobCompleted", None),
    ]
    download_done, mux_started, mux_done, upload_started = steps[1:5]
    assert isinstance(download_done.data, job.DownloadCompleted) and download_done.data.chained
    assert isinstance(mux_done.data, job.MuxCompleted) and mux_done.data.chained
    # Each result and the next stage's start are one append: one transaction, in order.
    assert (download_done.tx, download_done.version + 1) == (mux_started.tx, mux_started.version)
    assert (mux_done.tx, mux_done.version + 1) == (upload_started.tx, upload_started.version)
    # The stages themselves are apart: the download started in a transaction of its own.
    assert steps[0].tx != download_done.tx != mux_done.tx
    assert sum(isinstance(e.data, job.JobCompleted) for e in log) == 1
    # Only the download went through the queue.
    assert await unit_status(cluster.redis, _unit(job_id, "download")) == "done"
    assert await unit_status(cluster.redis, _unit(job_id, "mux")) == "missing"
    assert await unit_status(cluster.redis, _unit(job_id, "upload")) == "missing"


async def test_a_mux_waits_in_the_node_queue_while_its_slot_is_busy(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(mux_concurrency=1) as cluster:
        assert cluster.node is not None
        slot = cluster.node.slots["mux"]
        await slot.acquire()  # the only mux slot is busy before the download ends
        held = True
        try:
            job_id = await cluster.create(media_server.url("clip.mp4"), filename="waited")
            mux = _unit(job_id, "mux")

            async def mux_taken() -> bool:
                # Claimed from the node's queue by its worker, which waits for the slot.
                return await unit_status(cluster.redis, mux) == "in_progress"

            await until(mux_taken, seconds=60)
            log = await _log(cluster, job_id)
            download_done = next(e.data for e in log if isinstance(e.data, job.DownloadCompleted))
            assert not download_done.chained
            assert not any(
                isinstance(e.data, job.StageStarted) and e.data.stage == "mux" for e in log
            )
            assert (await cluster.job(job_id))["status"] == "Processing"

            slot.release()
            held = False
            done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
        finally:
            if held:
                slot.release()
        assert done["status"] == "Completed", done

        log = await _log(cluster, job_id)
        started = [
            (e.data.stage, e.data.attempt) for e in log if isinstance(e.data, job.StageStarted)
        ]
        assert started == [("download", 1), ("mux", 1), ("upload", 1)]
        assert sum(isinstance(e.data, job.JobCompleted) for e in log) == 1
        # The dispatched mux ran through the queue of the node that holds the files.
        ran = await Job(mux, cluster.redis).result_info()
        assert ran is not None and ran.success
        assert ran.queue_name == node_queue(cluster.node.node_id)
        assert all(
            e.data.node_id == cluster.node.node_id
            for e in log
            if isinstance(e.data, job.StageStarted)
        )


UNITS = 200


async def test_two_workers_on_one_queue_never_run_the_same_unit_twice(redis_url: str) -> None:
    queue = f"spool:queue:test-claims-{uuid.uuid4().hex[:8]}"
    calls: list[str] = []

    async def record(ctx: dict[str, Any], n: int) -> None:
        calls.append(ctx["job_id"])
        await asyncio.sleep(0.01)  # units overlap, so workers look again while others run

    redis = await connect(redis_url)
    stop = asyncio.Event()
    workers: list[PromptWorker] = []
    running: list[asyncio.Task[None]] = []
    try:
        for _ in range(2):
            wake = asyncio.Event()
            worker = PromptWorker(
                [func(record, name="record")],
                redis_pool=redis,
                queue_name=queue,
                wake=wake,
                handle_signals=False,
                max_jobs=16,
                poll_delay=60.0,
                keep_result=60,
            )
            workers.append(worker)
            # Each worker is woken by every enqueue at once: they race for the same units.
            running.append(asyncio.create_task(listen_for_wakeups(redis, {queue: wake}, stop)))
            running.append(asyncio.create_task(worker.async_run()))
        ids = [f"claim-test:{i}" for i in range(UNITS)]
        await asyncio.gather(
            *(enqueue(redis, "record", i, queue=queue, unit_id=u) for i, u in enumerate(ids))
        )

        async def all_done() -> bool:
            return all([await unit_status(redis, u) == "done" for u in ids])

        await until(all_done, seconds=PATIENCE)
    finally:
        stop.set()
        for worker in workers:
            worker.handle_sig(signal.SIGTERM)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await redis.aclose()

    ran = Counter(calls)
    assert set(ran) == set(ids)
    assert [u for u, n in ran.items() if n > 1] == []
    # Both took a share: the claims did race.
    assert all(w.jobs_complete > 0 for w in workers), [w.jobs_complete for w in workers]
