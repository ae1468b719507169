"""Reset to a stage (issue 24, Deliver 5): `POST /jobs/{id}/retry` with `from_stage` re-muxes or
re-uploads the files a failed job's last run left on its node, without downloading again.

Real parts only: PostgreSQL, Redis, moto's S3 server, FFmpeg and loopback media. A job's upload
fails for good because the cluster's bucket is gone; "fixing the storage" makes it again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from spool.domain import job, work_files
from spool.domain.errors import InvalidTransition
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer


def _break_storage(cluster: Cluster) -> None:
    cluster.s3.client().delete_bucket(Bucket=cluster.bucket)


def _fix_storage(cluster: Cluster) -> None:
    cluster.s3.client().create_bucket(Bucket=cluster.bucket)


async def _failed_at_upload(cluster: Cluster, media_server: MediaServer, name: str) -> str:
    """A job whose download and mux went well and whose upload failed for good."""
    _break_storage(cluster)
    job_id = await cluster.create(media_server.url("clip.mp4"), filename=name)
    failed = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
    assert failed["status"] == "Failed", failed
    assert failed["error"].startswith("Upload failed"), failed
    _fix_storage(cluster)
    return job_id


async def _events(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


async def _stages_started_after_the_retry(cluster: Cluster, job_id: str) -> list[str]:
    events = await _events(cluster, job_id)
    retried = max(i for i, e in enumerate(events) if e["type"] == "JobRetried")
    return [e["data"]["stage"] for e in events[retried:] if e["type"] == "StageStarted"]


async def _retry(cluster: Cluster, job_id: str, body: dict[str, str] | None) -> Any:
    return await cluster.client.post(f"/jobs/{job_id}/retry", json=body, headers=cluster.headers())


async def test_a_job_whose_upload_failed_retried_from_upload_uploads_without_downloading_again(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await _failed_at_upload(cluster, media_server, "again")

    answer = await _retry(cluster, job_id, {"from_stage": "upload"})
    assert answer.status_code == 200, answer.text
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert cluster.objects() == [cluster.in_bucket("again.mp4")]
    assert await _stages_started_after_the_retry(cluster, job_id) == ["upload"]
    retried = [e for e in await _events(cluster, job_id) if e["type"] == "JobRetried"]
    assert [(e["data"]["from_stage"], e["data"]["node_id"]) for e in retried] == [
        ("upload", cluster.settings.node_id)
    ]


async def test_a_retry_from_mux_muxes_again_without_downloading(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await _failed_at_upload(cluster, media_server, "remuxed")

    answer = await _retry(cluster, job_id, {"from_stage": "mux"})
    assert answer.status_code == 200, answer.text
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert await _stages_started_after_the_retry(cluster, job_id) == ["mux", "upload"]
    assert done["mux_duration_ms"] is not None and done["download_duration_ms"] is None


async def test_a_retry_from_upload_whose_files_are_gone_fails_saying_so_and_download_still_works(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await _failed_at_upload(cluster, media_server, "gone")
    assert cluster.node is not None
    shutil.rmtree(cluster.node.workroot / job_id)  # the disk was wiped, or the sweep took them

    answer = await _retry(cluster, job_id, {"from_stage": "upload"})
    assert answer.status_code == 200, answer.text
    failed = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert failed["status"] == "Failed", failed
    assert failed["error"].startswith("Files gone: the muxed file is no longer on node"), failed
    assert failed["error"].endswith("retry from download")

    plain = await _retry(cluster, job_id, None)
    assert plain.status_code == 200, plain.text
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    assert await _stages_started_after_the_retry(cluster, job_id) == ["download", "mux", "upload"]


async def test_a_retry_from_upload_is_refused_with_409_while_the_files_node_is_offline(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await _failed_at_upload(cluster, media_server, "offline")
    await cluster.stop_node()
    await cluster.runner.settle()  # the nodes read model has the node's stop

    refused = await _retry(cluster, job_id, {"from_stage": "upload"})
    assert refused.status_code == 409, refused.text
    assert "not online" in refused.json()["error"]
    assert (await cluster.job(job_id))["status"] == "Failed"  # nothing was recorded

    anew = await _retry(cluster, job_id, {"from_stage": "download"})
    assert anew.status_code == 200, anew.text
    assert (await cluster.job(job_id))["status"] == "Pending"


async def test_a_bad_from_stage_is_a_400_and_a_job_that_failed_downloading_has_nothing_to_reuse(
    cluster: Cluster,
) -> None:
    job_id = await cluster.create("http://127.0.0.1:1/nothing-listens-here.mp4")
    failed = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert failed["status"] == "Failed", failed

    bad = await _retry(cluster, job_id, {"from_stage": "transcode"})
    assert bad.status_code == 400, bad.text
    assert "from_stage" in bad.json()["error"]
    unknown = await _retry(cluster, job_id, {"stage": "mux"})
    assert unknown.status_code == 400, unknown.text

    nothing = await _retry(cluster, job_id, {"from_stage": "mux"})
    assert nothing.status_code == 400, nothing.text
    assert nothing.json()["error"].endswith("retry from download")
    assert (await cluster.job(job_id))["status"] == "Failed"


async def test_a_failed_jobs_kept_files_are_reclaimed_by_the_nodes_sweep_once_their_time_is_up(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(failed_files_keep=1.0, work_sweep_interval=0.2) as cluster:
        job_id = await _failed_at_upload(cluster, media_server, "reclaimed")
        assert cluster.node is not None
        folder = cluster.node.workroot / job_id
        deadline = time.monotonic() + 30
        while folder.exists():
            assert time.monotonic() < deadline, f"{folder} was never swept"
            await asyncio.sleep(0.1)

        answer = await _retry(cluster, job_id, {"from_stage": "upload"})
        assert answer.status_code == 200, answer.text
        failed = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
        assert failed["error"].startswith("Files gone"), failed


async def test_another_accounts_job_is_not_found_whatever_the_stage_asked(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    created = await client.post(
        "/jobs", json={"url": "http://media.test/a.mp4"}, headers={"x-api-key": api_key}
    )
    job_id = created.json()["job_id"]
    for body in ({"from_stage": "upload"}, {"from_stage": "mux"}, None):
        answer = await client.post(
            f"/jobs/{job_id}/retry", json=body, headers={"x-api-key": other_api_key}
        )
        assert answer.status_code == 404, answer.text


# -- the rules, without servers ---------------------------------------------------------------

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def _job_failed_at(stage: job.Stage, *, node: str = "n1", root: str = "/w") -> job.JobState:
    jid = "6b3f9a52-5a57-4f34-9d55-3c1c8f7e1a10"
    events: list[job.Event] = [
        job.JobCreated(job_id=jid, account_id="a", url="https://x.test/a.mp4"),
        job.StageStarted(stage="download", run=1, attempt=1, node_id=node),
    ]
    if stage in ("mux", "upload"):
        media = job.MediaFile(path=f"{root}/{jid}/1/a.mp4", kind="av", size=10)
        events += [
            job.DownloadCompleted(
                run=1, attempt=1, node_id=node, files=[media], bytes=10, seconds=1.0
            ),
            job.StageStarted(stage="mux", run=1, attempt=1, node_id=node),
        ]
    if stage == "upload":
        output = job.MediaFile(path=f"{root}/{jid}/1/output.mp4", kind="av", size=9)
        events += [
            job.MuxCompleted(run=1, attempt=1, node_id=node, output=output, seconds=1.0),
            job.StageStarted(stage="upload", run=1, attempt=1, node_id=node),
        ]
    events += [
        job.StageFailed(stage=stage, run=1, attempt=1, node_id=node, reason="x"),
        job.JobFailed(run=1, stage=stage, reason="x"),
    ]
    state = None
    for version, ev in enumerate(events, 1):
        state = job.evolve(state, ev, T0, version)
    assert state is not None
    return state


def _after(state: job.JobState, events: list[job.Event]) -> job.JobState:
    for ev in events:
        state = job.evolve(state, ev, T0 + timedelta(minutes=1), state.version + 1)
    return state


def test_a_retry_from_upload_keeps_the_last_runs_output_and_node() -> None:
    failed = _job_failed_at("upload")
    retried = _after(failed, job.retry(failed, "upload"))
    assert (retried.status, retried.run, retried.stage, retried.node_id) == (
        "Pending",
        2,
        "upload",
        "n1",
    )
    assert retried.output == failed.output and retried.files == failed.files
    assert work_files.still_needed(retried, "n1", 1)  # the files of run 1, for run 2's upload


def test_a_retry_from_mux_keeps_the_downloaded_files_but_not_the_output() -> None:
    failed = _job_failed_at("upload")
    retried = _after(failed, job.retry(failed, "mux"))
    assert (retried.stage, retried.files, retried.output) == ("mux", failed.files, None)


@pytest.mark.parametrize(("failed_at", "from_stage"), [("download", "mux"), ("mux", "upload")])
def test_a_retry_from_a_stage_the_last_run_made_nothing_for_is_refused(
    failed_at: job.Stage, from_stage: job.Stage
) -> None:
    with pytest.raises(InvalidTransition, match="retry from download"):
        job.retry(_job_failed_at(failed_at), from_stage)


def test_a_plain_retry_starts_from_download_with_nothing_of_the_last_run() -> None:
    failed = _job_failed_at("upload")
    retried = _after(failed, job.retry(failed))
    assert (retried.stage, retried.files, retried.output, retried.node_id) == (
        "download",
        [],
        None,
        None,
    )


def test_a_retry_recorded_before_from_stage_replays_as_a_retry_from_download() -> None:
    old = msgspec.json.decode(b'{"run": 2}', type=job.JobRetried)
    assert (old.from_stage, old.node_id) == ("download", None)


def test_a_failed_jobs_files_are_kept_for_a_retry_only_for_a_while_and_on_their_node() -> None:
    failed = _job_failed_at("upload")
    keep = timedelta(hours=1)
    soon, late = T0 + timedelta(minutes=59), T0 + timedelta(minutes=61)
    assert work_files.kept_for_retry(failed, "n1", 1, now=soon, keep=keep)
    assert not work_files.kept_for_retry(failed, "n1", 1, now=late, keep=keep)
    assert not work_files.kept_for_retry(failed, "n2", 1, now=soon, keep=keep)
    assert not work_files.kept_for_retry(failed, "n1", 2, now=soon, keep=keep)
    at_download = _job_failed_at("download")
    assert not work_files.kept_for_retry(at_download, "n1", 1, now=soon, keep=keep)
