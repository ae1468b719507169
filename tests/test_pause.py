"""Pause and resume (issue 24, Deliver 2): one job, a batch, an account, the cluster's intake.

A paused job's running stage finishes and its next one does not start, even on a node that
would go straight on; a job paused before its download stays Pending; resume starts what waits,
each stage once, also across a node's restart while paused. Real parts only: PostgreSQL,
Redis, moto's S3 server, FFmpeg and the loopback media server.

"Does not start" is never shown by sleeping: a test waits until the pipeline's checkpoint has
passed the event that would have called for the next stage, or until a node has taken the unit
and recorded that it left it (`StageDeferred`), and only then looks.
"""

from __future__ import annotations

from typing import Any

from spool.adapters.queue import unit_status
from spool.domain import job
from spool.domain.events import RecordedEvent
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until


async def _log(cluster: Cluster, job_id: str) -> list[RecordedEvent]:
    return await cluster.store.read_stream(job.stream_id(job_id))


async def _event(cluster: Cluster, job_id: str, kind: type[job.Event]) -> RecordedEvent:
    """The first `kind` event in the job's stream, once there is one."""

    async def found() -> RecordedEvent | None:
        return next((e for e in await _log(cluster, job_id) if isinstance(e.data, kind)), None)

    return await until(found, seconds=60)


async def _pipeline_past(cluster: Cluster, e: RecordedEvent) -> None:
    """Wait until the pipeline has handled `e`: whatever it dispatches for it is enqueued."""

    async def past() -> bool:
        row = await cluster.pool.fetchrow(
            "SELECT tx::text::bigint AS tx, position FROM checkpoints WHERE name = 'pipeline'"
        )
        return row is not None and (row["tx"], row["position"]) >= (e.tx, e.position)

    await until(past, seconds=30)


def _starts(log: list[RecordedEvent]) -> list[tuple[str, int]]:
    return [(e.data.stage, e.data.attempt) for e in log if isinstance(e.data, job.StageStarted)]


async def _post(cluster: Cluster, path: str, key: str | None = None) -> Any:
    return await cluster.client.post(path, headers=cluster.headers(key))


async def test_a_paused_job_finishes_its_download_and_does_not_start_the_mux_until_resumed(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url, release = media_server.held_url("clip.mp4")
    job_id = await cluster.create(url, filename="paused-between")
    await _event(cluster, job_id, job.StageStarted)  # the download is under way

    paused = await _post(cluster, f"/jobs/{job_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json() == {
        "job_id": job_id,
        "status": "Processing",
        "paused": True,
        "paused_by": "job",
    }
    release.set()

    # The running download finishes; the node, whose mux slot is free, does not go on.
    done = await _event(cluster, job_id, job.DownloadCompleted)
    assert isinstance(done.data, job.DownloadCompleted)
    assert done.data.paused and not done.data.chained
    await _pipeline_past(cluster, done)
    assert await unit_status(cluster.redis, job.arq_job_id(job_id, 1, "mux", 1)) == "missing"
    assert _starts(await _log(cluster, job_id)) == [("download", 1)]
    shown = await cluster.job(job_id)
    assert (shown["status"], shown["step"], shown["paused"], shown["paused_by"]) == (
        "Processing",
        "Downloading",
        True,
        "job",
    )

    resumed = await _post(cluster, f"/jobs/{job_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["paused"], resumed.json()["paused_by"]) == (False, None)
    finished = await cluster.wait(job_id, "Completed", "Failed")
    assert finished["status"] == "Completed", finished
    assert finished["paused"] is False
    log = await _log(cluster, job_id)
    assert _starts(log) == [("download", 1), ("mux", 1), ("upload", 1)]
    assert [type(e.data).__name__ for e in log].count("JobCompleted") == 1


async def test_a_job_paused_before_its_download_stays_pending_across_a_node_restart(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False) as cluster:
        job_id = await cluster.create(media_server.url("clip.mp4"), filename="paused-first")
        paused = await _post(cluster, f"/jobs/{job_id}/pause")
        assert paused.json()["status"] == "Pending"

        cluster.start_node()
        # The node takes the queued download and records that it left it for the resume.
        deferred = await _event(cluster, job_id, job.StageDeferred)
        assert isinstance(deferred.data, job.StageDeferred)
        assert (deferred.data.stage, deferred.data.paused_by) == ("download", "job")
        shown = await cluster.job(job_id)
        assert (shown["status"], shown["paused"], shown["paused_by"]) == ("Pending", True, "job")

        await cluster.stop_node()
        cluster.start_node()
        resumed = await _post(cluster, f"/jobs/{job_id}/resume")
        assert resumed.status_code == 200, resumed.text
        finished = await cluster.wait(job_id, "Completed", "Failed")
        assert finished["status"] == "Completed", finished
        log = await _log(cluster, job_id)
        # The deferred attempt spent nothing: the download ran once, as attempt 2.
        assert _starts(log) == [("download", 2), ("mux", 1), ("upload", 1)]
        assert finished["download_retries"] == 0


async def test_pausing_a_finished_job_is_a_conflict_and_another_accounts_job_is_not_found(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="finished")
    await cluster.wait(job_id, "Completed")
    refused = await _post(cluster, f"/jobs/{job_id}/pause")
    assert refused.status_code == 409
    assert refused.json() == {"error": "Job is already completed and cannot be paused"}
    # Resuming a job that is not paused changes nothing.
    assert (await _post(cluster, f"/jobs/{job_id}/resume")).status_code == 200

    # The admin's key is another account's: the user's job is not there for it.
    for action in ("pause", "resume"):
        answer = await _post(cluster, f"/jobs/{job_id}/{action}", cluster.admin_key)
        assert answer.status_code == 404, answer.text
        assert "error" in answer.json()
    assert not any(
        isinstance(e.data, job.JobPaused | job.JobResumed) for e in await _log(cluster, job_id)
    )
