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

import uuid
from datetime import UTC, datetime
from typing import Any

from spool.adapters.job_store import load_job, load_job_gated
from spool.adapters.queue import unit_status
from spool.domain import account, account_policy, job, pause
from spool.domain.events import Metadata, NewEvent, RecordedEvent
from tests.cluster_api_helpers import assert_error
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until
from tests.test_reconciler import OPTIONS, Scene, scene


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


async def _held_in_line(cluster: Cluster, job_id: str) -> None:
    """Wait until the pipeline holds the job in its download line (nothing of it in Redis)."""

    async def in_line() -> bool:
        found: bool = await cluster.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM dispatch_waiting WHERE job_id = $1)", job_id
        )
        return found

    await until(in_line, seconds=60)


def _starts(log: list[RecordedEvent]) -> list[tuple[str, int]]:
    return [(e.data.stage, e.data.attempt) for e in log if isinstance(e.data, job.StageStarted)]


async def _post(cluster: Cluster, path: str, key: str | None = None) -> Any:
    return await cluster.client.post(path, headers=cluster.headers(key))


async def test_a_paused_job_finishes_its_download_and_starts_no_mux_until_resumed_after_a_restart(
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

    # The node restarts while the job waits between stages, its files on the node's disk.
    await cluster.stop_node()
    cluster.start_node()
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

        # Its pause reached the pipeline's line before it was sent: it stays there, passed
        # over; or it was sent first, and the node that takes it leaves it for the resume.
        async def held_or_left() -> bool:
            held = await cluster.pool.fetchval(
                "SELECT paused FROM dispatch_waiting WHERE job_id = $1", job_id
            )
            log = await _log(cluster, job_id)
            return bool(held) or any(isinstance(e.data, job.StageDeferred) for e in log)

        await until(held_or_left, seconds=60)
        for e in await _log(cluster, job_id):
            if isinstance(e.data, job.StageDeferred):
                assert (e.data.stage, e.data.paused_by) == ("download", "job")
        shown = await cluster.job(job_id)
        assert (shown["status"], shown["paused"], shown["paused_by"]) == ("Pending", True, "job")

        await cluster.stop_node()
        cluster.start_node()
        assert _starts(await _log(cluster, job_id)) == []
        resumed = await _post(cluster, f"/jobs/{job_id}/resume")
        assert resumed.status_code == 200, resumed.text
        finished = await cluster.wait(job_id, "Completed", "Failed")
        assert finished["status"] == "Completed", finished
        # Each stage ran once; a deferred attempt (if any) spent nothing.
        assert [stage for stage, _ in _starts(await _log(cluster, job_id))] == [
            "download",
            "mux",
            "upload",
        ]
        assert finished["download_retries"] == 0


async def test_pausing_a_finished_job_is_refused_and_another_accounts_job_is_not_found(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="finished")
    await cluster.wait(job_id, "Completed")
    refused = await _post(cluster, f"/jobs/{job_id}/pause")
    # As a cancel or a retry the job's state does not allow: a 400.
    assert refused.status_code == 400
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


async def _bulk(cluster: Cluster, urls: list[str], key: str | None = None) -> tuple[str, list[str]]:
    body = {"jobs": [{"url": u, "filename": f"b{i}"} for i, u in enumerate(urls)]}
    answer = await cluster.client.post("/jobs/bulk", json=body, headers=cluster.headers(key))
    assert answer.status_code == 201, answer.text
    return answer.json()["batch_id"], answer.json()["job_ids"]


async def _started(cluster: Cluster, job_ids: list[str]) -> str:
    """The first of `job_ids` whose download has started, once one has."""

    async def found() -> str | None:
        for job_id in job_ids:
            if any(isinstance(e.data, job.StageStarted) for e in await _log(cluster, job_id)):
                return job_id
        return None

    return await until(found, seconds=60)


async def test_a_batch_paused_after_its_start_holds_its_waiting_jobs_while_another_batch_runs(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(download_concurrency=1) as cluster:
        held = [media_server.held_url("clip.mp4") for _ in range(2)]
        batch_id, job_ids = await _bulk(cluster, [url for url, _ in held])
        running = await _started(cluster, job_ids)  # one download at a time: the other waits
        waiting = next(j for j in job_ids if j != running)

        paused = await _post(cluster, f"/batch/{batch_id}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json() == {"batch_id": batch_id, "status": "processing", "paused": True}
        await cluster.runner.settle("pauses")
        for _, gate in held:
            gate.set()

        # The running job goes on to its end; another batch's job runs; the waiting one is
        # taken by the node and left.
        assert (await cluster.wait(running, "Completed", "Failed"))["status"] == "Completed"
        _, (other,) = await _bulk(cluster, [media_server.url("clip.mp4")])
        assert (await cluster.wait(other, "Completed", "Failed"))["status"] == "Completed"
        deferred = await _event(cluster, waiting, job.StageDeferred)
        assert isinstance(deferred.data, job.StageDeferred)
        assert deferred.data.paused_by == "batch"
        shown = await cluster.job(waiting)
        assert (shown["status"], shown["paused"], shown["paused_by"]) == ("Pending", True, "batch")
        listed = await cluster.client.get(
            "/jobs", params={"batch_id": batch_id}, headers=cluster.headers()
        )
        assert {j["id"]: j["paused_by"] for j in listed.json()["jobs"]} == {
            running: None,
            waiting: "batch",
        }
        assert (await cluster.client.get(f"/batch/{batch_id}", headers=cluster.headers())).json()[
            "paused"
        ]

        resumed = await _post(cluster, f"/batch/{batch_id}/resume")
        assert resumed.json() == {"batch_id": batch_id, "status": "processing", "paused": False}
        assert (await cluster.wait(waiting, "Completed", "Failed"))["status"] == "Completed"
        assert _starts(await _log(cluster, waiting)) == [("download", 2), ("mux", 1), ("upload", 1)]


async def test_batch_pause_refusals_answer_in_the_job_apis_shape(
    cluster: Cluster, media_server: MediaServer
) -> None:
    batch_id, _ = await _bulk(cluster, [media_server.url("clip.mp4")])
    for action in ("pause", "resume"):
        answer = await _post(cluster, f"/batch/{batch_id}/{action}", cluster.admin_key)
        assert answer.status_code == 404, answer.text
        assert "error" in answer.json()
    assert (await cluster.client.delete(f"/batch/{batch_id}", headers=cluster.headers())).is_success
    refused = await _post(cluster, f"/batch/{batch_id}/pause")
    assert refused.status_code == 409
    assert refused.json() == {"error": "Batch is cancelled and cannot be paused"}

    body = {"jobs": [{"url": media_server.url("clip.mp4")}], "paused": True}
    created = await cluster.client.post("/jobs/bulk", json=body, headers=cluster.headers())
    unstarted = created.json()["batch_id"]
    assert (await _post(cluster, f"/batch/{unstarted}/pause")).json()["paused"] is True
    resumed = await _post(cluster, f"/batch/{unstarted}/resume")
    assert resumed.status_code == 400
    assert resumed.json() == {
        "error": "Batch has not started. Start it with POST /batch/{id}/start."
    }


async def test_an_account_paused_by_an_admin_waits_while_its_running_job_finishes_and_others_run(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url, release = media_server.held_url("clip.mp4")
    running = await cluster.create(url, filename="under-way")
    await _event(cluster, running, job.StageStarted)

    # Only an admin pauses an account, in the job API's error shape otherwise.
    path = f"/admin/accounts/{cluster.account_id}"
    refused = await _post(cluster, f"{path}/pause")
    assert refused.status_code == 403 and "error" in refused.json()
    paused = await _post(cluster, f"{path}/pause", cluster.admin_key)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    await cluster.runner.settle("pauses")

    waiting = await cluster.create(media_server.url("clip.mp4"), filename="waits")
    release.set()
    # The running job goes on through mux and upload; another account's job runs.
    assert (await cluster.wait(running, "Completed", "Failed"))["status"] == "Completed"
    other = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url("clip.mp4")},
        headers=cluster.headers(cluster.admin_key),
    )
    other_id = other.json()["job_id"]

    async def other_done() -> bool:
        answer = await cluster.client.get(
            f"/jobs/{other_id}", headers=cluster.headers(cluster.admin_key)
        )
        return answer.json()["status"] == "Completed"

    await until(other_done, seconds=60)
    # Another account's later job ran: the paused account's stayed in the line, never sent.
    await _held_in_line(cluster, waiting)
    assert _starts(await _log(cluster, waiting)) == []
    shown = await cluster.job(waiting)
    assert (shown["status"], shown["paused_by"]) == ("Pending", "account")
    account = await cluster.client.get(path, headers=cluster.headers(cluster.admin_key))
    assert account.json()["paused"] is True

    resumed = await _post(cluster, f"{path}/resume", cluster.admin_key)
    assert resumed.json()["paused"] is False
    assert (await cluster.wait(waiting, "Completed", "Failed"))["status"] == "Completed"
    assert _starts(await _log(cluster, waiting)) == [("download", 1), ("mux", 1), ("upload", 1)]


async def test_a_paused_intake_starts_no_new_download_anywhere_even_across_a_node_restart(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url, release = media_server.held_url("clip.mp4")
    running = await cluster.create(url, filename="under-way")
    await _event(cluster, running, job.StageStarted)

    refused = await _post(cluster, "/api/v1/config/intake/pause")
    assert refused.status_code == 403
    assert_error(refused.json(), "UNAUTHORIZED")
    paused = await _post(cluster, "/api/v1/config/intake/pause", cluster.admin_key)
    assert paused.status_code == 200, paused.text
    assert paused.json()["data"] == {"paused": True}
    await cluster.runner.settle("pauses")

    waiting = await cluster.create(media_server.url("clip.mp4"), filename="waits")
    await _held_in_line(cluster, waiting)
    release.set()
    assert (await cluster.wait(running, "Completed", "Failed"))["status"] == "Completed"

    await cluster.stop_node()
    cluster.start_node()
    shown = await cluster.job(waiting)
    assert (shown["status"], shown["paused"], shown["paused_by"]) == ("Pending", True, "cluster")
    intake = await cluster.client.get(
        "/api/v1/config/intake", headers=cluster.headers(cluster.admin_key)
    )
    assert intake.json()["data"] == {"paused": True}

    resumed = await _post(cluster, "/api/v1/config/intake/resume", cluster.admin_key)
    assert resumed.json()["data"] == {"paused": False}
    assert (await cluster.wait(waiting, "Completed", "Failed"))["status"] == "Completed"
    log = await _log(cluster, waiting)
    assert _starts(log) == [("download", 1), ("mux", 1), ("upload", 1)]
    assert [type(e.data).__name__ for e in log].count("JobCompleted") == 1


async def test_the_reconciler_leaves_a_paused_jobs_unstarted_unit_alone_pass_after_pass(
    fresh_database_url: str, redis_url: str
) -> None:
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        meta = Metadata(actor="test")

        async def created(*more: job.Event, account_id: str = "acct") -> str:
            job_id = uuid.uuid4().hex
            events = [
                *job.create(
                    job_id=job_id, account_id=account_id, url="http://m/a.mp4", options=OPTIONS
                ),
                *more,
            ]
            await s.store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in events], 0)
            return job_id

        # Never dispatched, so missing from Redis: the control is re-dispatched, the rest not.
        control = await created()
        paused_job = await created(job.JobPaused())
        between = await created(
            job.StageStarted(stage="download", run=1, attempt=1, node_id="gone"),
            job.DownloadCompleted(
                run=1, attempt=1, node_id="gone", files=[], bytes=1, seconds=1, paused=True
            ),
            job.JobPaused(),
        )
        held_account = await created(account_id="paused-acct")
        paused = account_policy.AccountPaused(account_id="paused-acct")
        await s.store.append(account.stream_id("paused-acct"), [NewEvent(paused, meta)], None)
        passes = 0

        def control_redispatched_and_two_passes_more() -> bool:
            nonlocal passes
            redispatched = any(a.startswith(f"re-dispatched {control}:") for a in s.done)
            passes = passes + 1 if redispatched else 0
            return passes >= 3

        await s.passes_until(control_redispatched_and_two_passes_more)
        for job_id in (paused_job, between, held_account):
            assert not any(job_id in action for action in s.done), s.done
            state = await load_job(s.store, job_id)
            assert state is not None
            unit = job.arq_job_id(job_id, state.run, state.stage, state.attempt)
            assert await unit_status(s.redis, unit) == "missing"
            assert not any(isinstance(e.data, job.StageFailed) for e in await _history(s, job_id))


async def _history(s: Scene, job_id: str) -> list[RecordedEvent]:
    return await s.store.read_stream(job.stream_id(job_id))


def _fold(*events: job.Event) -> job.JobState:
    at = datetime.now(UTC)
    state = job.fold([(e, at, v) for v, e in enumerate(events, start=1)])
    assert state is not None
    return state


def test_a_resume_dispatches_the_unit_a_paused_job_waits_for_and_never_a_running_one() -> None:
    created = job.create(job_id="j", account_id="a", url="http://m/a.mp4", options=OPTIONS)[0]
    started = job.StageStarted(stage="download", run=1, attempt=1, node_id="n")
    done = job.DownloadCompleted(
        run=1, attempt=1, node_id="n", files=[], bytes=1, seconds=1, paused=True
    )
    # Paused while its download ran: resumed before it ends, nothing is dispatched.
    (running,) = job.resume(_fold(created, started, job.JobPaused()))
    assert isinstance(running, job.JobResumed) and not running.due
    # Paused between stages: the mux, on the node that holds the files.
    (between,) = job.resume(_fold(created, started, job.JobPaused(), done))
    assert isinstance(between, job.JobResumed)
    assert (between.due, between.stage, between.attempt, between.node_id) == (True, "mux", 1, "n")
    # A unit a node left for the pause is the next attempt, and spent none.
    deferred = job.StageDeferred(stage="download", run=1, attempt=1, node_id="n", paused_by="job")
    waiting = _fold(created, job.JobPaused(), deferred)
    assert (waiting.attempt, waiting.attempt - waiting.interruptions) == (2, 1)
    assert job.resume(waiting)[0] == job.JobResumed(run=1, stage="download", attempt=2, due=True)
    # Not paused: nothing; twice paused: one event.
    assert job.resume(_fold(created)) == []
    assert job.pause(_fold(created, job.JobPaused())) == []


def test_a_scope_holds_back_only_a_run_that_has_not_started() -> None:
    created = job.create(
        job_id="j", account_id="a", url="http://m/a.mp4", options=OPTIONS, batch_id="b"
    )[0]
    pending = _fold(created)
    under_way = _fold(created, job.StageStarted(stage="download", run=1, attempt=1, node_id="n"))
    for scope in pause.scopes_of(pending):
        assert pause.paused_by(pending, {scope}) == scope[0]
        assert pause.paused_by(under_way, {scope}) is None
    assert pause.paused_by(_fold(created, job.JobPaused()), {("cluster", pause.CLUSTER)}) == "job"
    assert pause.paused_by(pending, {("batch", "other"), ("account", "other")}) is None


async def test_an_account_resumed_leaves_its_batch_created_paused_held_until_started(
    cluster: Cluster, media_server: MediaServer
) -> None:
    path = f"/admin/accounts/{cluster.account_id}"
    assert (await _post(cluster, f"{path}/pause", cluster.admin_key)).json()["paused"]
    await cluster.runner.settle("pauses")
    body = {"jobs": [{"url": media_server.url("clip.mp4")}], "paused": True}
    created = await cluster.client.post("/jobs/bulk", json=body, headers=cluster.headers())
    batch_id, (held,) = created.json()["batch_id"], created.json()["job_ids"]
    waiting = await cluster.create(media_server.url("clip.mp4"), filename="waits")
    await _held_in_line(cluster, waiting)

    assert not (await _post(cluster, f"{path}/resume", cluster.admin_key)).json()["paused"]
    assert (await cluster.wait(waiting, "Completed", "Failed"))["status"] == "Completed"
    # The resume dispatched nothing for the held job: its batch's start runs it, once.
    assert await unit_status(cluster.redis, job.arq_job_id(held, 1, "download", 1)) == "missing"
    assert (await cluster.job(held))["status"] == "Pending"
    started = await _post(cluster, f"/batch/{batch_id}/start")
    assert started.status_code == 200, started.text
    assert (await cluster.wait(held, "Completed", "Failed"))["status"] == "Completed"
    assert _starts(await _log(cluster, held)) == [("download", 1), ("mux", 1), ("upload", 1)]


async def test_a_node_reads_the_pauses_over_a_job_with_the_job_itself(
    fresh_database_url: str, redis_url: str
) -> None:
    async with scene(fresh_database_url, redis_url, lease_ttl=2.0) as s:
        meta = Metadata(actor="test")
        job_id = uuid.uuid4().hex
        created = job.create(
            job_id=job_id, account_id="acct", url="http://m/a.mp4", options=OPTIONS, batch_id="b1"
        )
        await s.store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in created], 0)
        # No row yet to name its account: the node is told to ask the pauses itself.
        assert (await load_job_gated(s.store, job_id, "n1")).paused is None
        paused = account_policy.AccountPaused(account_id="acct")
        await s.store.append(account.stream_id("acct"), [NewEvent(paused, meta)], None)
        other = account_policy.AccountPaused(account_id="someone-else")
        await s.store.append(account.stream_id("someone-else"), [NewEvent(other, meta)], None)
        await s.runner.settle()
        gated = await load_job_gated(s.store, job_id, "n1")
        assert gated.state is not None and gated.state.job_id == job_id
        assert gated.paused == {("account", "acct")}
        assert pause.paused_by(gated.state, gated.paused) == "account"


async def test_a_paused_job_retried_keeps_its_pause_in_the_line(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False) as cluster:
        job_id = await cluster.create(media_server.url("clip.mp4"), filename="paused-retried")
        assert (await _post(cluster, f"/jobs/{job_id}/pause")).status_code == 200
        assert (
            await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
        ).is_success
        await cluster.runner.settle("jobs")
        retried = await _post(cluster, f"/jobs/{job_id}/retry")
        assert retried.status_code == 200, retried.text

        async def held_in_line() -> bool:
            row = await cluster.pool.fetchrow(
                "SELECT run, paused FROM dispatch_waiting WHERE job_id = $1", job_id
            )
            return row is not None and (row["run"], row["paused"]) == (2, True)

        await until(held_in_line, seconds=30)
        # Room there is (no run-2 unit went out): the line passes the paused job over.
        unit = job.arq_job_id(job_id, 2, "download", 1)
        assert await unit_status(cluster.redis, unit) == "missing"
        assert (await cluster.job(job_id))["paused_by"] == "job"
