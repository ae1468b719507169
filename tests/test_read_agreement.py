"""Every read surface tells the same story as the fold of the log.

Hypothesis generates histories of a few jobs, alone or in a batch (started at once, or paused
and then started or cancelled), driven by the commands of tests/test_job_properties.py (nodes
starting, completing and failing stages, users cancelling and retrying) through the same decide
functions and the same API endpoints Spool uses. Each history is appended to a database of its
own test; then each surface must show what folding the streams gives:

- the API: `GET /jobs/{id}`, `GET /jobs?batch_id=`, `GET /batch/{id}`, `GET /usage`;
- `spool replay job|batch` (`spool.replay.load_timeline`, what the command prints);
- the `reporting` views (`jobs`, `batches`, `usage_daily`), in SQL;
- the dashboard's throughput and the cluster metrics' job counts.

The same for tasks (`GET /api/v1/tasks/{id}`, the list, the statistics, `spool replay task`,
`reporting.tasks`), and every surface that says whether a node is online, to the one rule.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from spool.adapters import task_store
from spool.adapters.key_store import issue
from spool.adapters.read_models import batches as batch_rows
from spool.api.jobs import view
from spool.api.tasks import view as task_view
from spool.application.jobs import NewJob, plan_batch
from spool.domain import batch, cluster_config, job, node, task
from spool.domain.cluster_config import HeartbeatConfig, HeartbeatConfigChanged
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event, Metadata, NewEvent, RecordedEvent
from spool.replay import load_timeline
from tests.cluster_api_helpers import (
    FreshApi,
    append_node,
    fresh_api,
    heartbeat,
    node_started,
    register,
)
from tests.test_job_properties import (
    Command,
    DeleteFile,
    Deliver,
    Release,
    Unit,
    _run_live,
    commands,
)
from tests.test_reporting import History as ReportHistory

LINKS = ("s3_url", "subtitle_url", "thumbnail_url")
"""Signed links differ per answer: everything else of a job's view is compared."""


@dataclass(frozen=True)
class ToJob:
    """A command for one job of the history (by its index)."""

    index: int
    command: Command


@dataclass(frozen=True)
class RunStage:
    """A node runs one job's current stage through: it starts it, then completes it."""

    index: int


@dataclass(frozen=True)
class StartBatch:
    pass


@dataclass(frozen=True)
class CancelBatch:
    pass


Step = ToJob | RunStage | StartBatch | CancelBatch
Grouping = Literal["alone", "batch", "paused batch"]


def _step(roll: int, index: int, command: Command) -> Step:
    if roll < 6:
        return StartBatch()
    if roll < 9:
        return CancelBatch()
    if roll < 55:  # so that jobs get through all three stages, not only to their first
        return RunStage(index)
    if roll < 60:  # a completed job's file deleted: what `bytes_deleted` counts
        return ToJob(index, DeleteFile())
    return ToJob(index, command)


steps: st.SearchStrategy[Step] = st.builds(_step, st.integers(0, 99), st.integers(0, 2), commands)


@dataclass
class History:
    """The ids a generated history wrote, and whose they are."""

    key: str
    account_id: str
    job_ids: list[str]
    batch_id: str | None


async def _create(api: FreshApi, grouping: Grouping, n_jobs: int) -> History:
    """A new account with `n_jobs` jobs: one by one as `POST /jobs` makes them, or as one
    batch as `POST /jobs/bulk` makes it (application.jobs.plan_batch)."""
    issued = await issue(api.store, name="reader")
    await api.runner.wait_until("api_keys", issued.at)
    meta = Metadata(actor=issued.key_id)
    options = job.JobOptions()
    if grouping == "alone":
        ids = [str(uuid.uuid4()) for _ in range(n_jobs)]
        for job_id in ids:
            created = job.create(
                job_id=job_id, account_id=issued.account_id, url="http://x/", options=options
            )
            await api.store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in created], 0)
        return History(issued.key, issued.account_id, ids, None)
    plan = plan_batch(
        meta,
        issued.account_id,
        [NewJob(f"http://x/{i}", options) for i in range(n_jobs)],
        kind="bulk",
        paused=grouping == "paused batch",
    )
    await api.store.append_many(plan.appends)
    return History(issued.key, issued.account_id, plan.job_ids, plan.batch_id)


async def _run(api: FreshApi, h: History, history: list[Step]) -> None:
    """Each step in turn, as the API or a node would take it."""
    headers = {"X-API-Key": h.key}
    resolved: dict[int, list[tuple[Deliver, Unit]]] = {i: [] for i in range(len(h.job_ids))}
    for s in history:
        if isinstance(s, ToJob) and isinstance(s.command, Release):
            s = StartBatch()  # only starting its batch lets a held job go
        if isinstance(s, StartBatch | CancelBatch):
            if h.batch_id is None:
                continue
            answer = await (
                api.client.post(f"/batch/{h.batch_id}/start", headers=headers)
                if isinstance(s, StartBatch)
                else api.client.delete(f"/batch/{h.batch_id}", headers=headers)
            )
            assert answer.status_code in (200, 400), answer.text  # 400: not paused, or again
            continue
        index = s.index % len(h.job_ids)
        todo = (
            [Deliver("start", None, 0, 0), Deliver("complete", None, 0, 0)]
            if isinstance(s, RunStage)
            else [s.command]
        )
        for command in todo:
            await _run_live(api.store, h.job_ids[index], command, resolved[index])


def _fold(events: list[RecordedEvent]) -> job.JobState:
    state = job.fold([(e.data, e.recorded_at, e.version) for e in events])
    assert state is not None
    return state


def _counters(streams: list[list[RecordedEvent]]) -> dict[str, int]:
    """What `domain.job.count` adds up over every event of `streams`, and the bytes each
    FileDeleted freed: the file size of the job it deleted from."""
    counts = dict.fromkeys(job.USAGE_COUNTERS, 0)
    for events in streams:
        state: job.JobState | None = None
        for e in events:
            if isinstance(e.data, job.FileDeleted) and state is not None:
                counts["bytes_deleted"] += state.file_size or 0
            job.count(counts, e.data)
            state = job.evolve(state, e.data, e.recorded_at, e.version)
    return counts


def _job_view(state: job.JobState) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(view(state))
    return {k: v for k, v in shown.items() if k not in LINKS}


async def _check_jobs(api: FreshApi, h: History, folded: dict[str, job.JobState]) -> None:
    headers = {"X-API-Key": h.key}
    listed = await api.client.get(
        "/jobs", params={"limit": 100, **({"batch_id": h.batch_id} if h.batch_id else {})},
        headers=headers,
    )  # fmt: skip
    assert listed.status_code == 200
    in_list = {j["id"]: j for j in listed.json()["jobs"]}
    for job_id, state in folded.items():
        expected = _job_view(state)
        one = await api.client.get(f"/jobs/{job_id}", headers=headers)
        assert one.status_code == 200
        assert {k: v for k, v in one.json().items() if k not in LINKS} == expected, "GET /jobs/id"
        if h.batch_id is not None:
            got = {k: v for k, v in in_list[job_id].items() if k not in LINKS}
            assert got == expected, "GET /jobs list"

        timeline = await load_timeline(api.store, "job", job.stream_id(job_id))
        assert timeline is not None and timeline.status == state.status, "spool replay job"

        row = await api.pool.fetchrow(
            "SELECT status, step, run, download_retries, mux_retries, upload_retries, error, "
            "file_size_bytes, finished_at, batch_id FROM reporting.jobs WHERE job_id = $1",
            job_id,
        )
        assert dict(row) == {
            "status": state.status,
            "step": state.step,
            "run": state.run,
            "download_retries": state.retries.get("download", 0),
            "mux_retries": state.retries.get("mux", 0),
            "upload_retries": state.retries.get("upload", 0),
            "error": state.error,
            "file_size_bytes": state.file_size,
            "finished_at": state.finished_at,
            "batch_id": state.batch_id,
        }, "reporting.jobs"


async def _check_batch(api: FreshApi, h: History, folded: dict[str, job.JobState]) -> None:
    assert h.batch_id is not None
    events = await api.store.read_stream(batch.stream_id(h.batch_id))
    state = batch.fold([(e.data, e.recorded_at, e.version) for e in events])
    assert state is not None
    jobs = [folded[j] for j in state.job_ids]
    shown = batch.summarize(state, [batch.facts_of(j) for j in jobs])
    nonzero = {s: n for s, n in shown.counts.items() if n}

    answer = await api.client.get(f"/batch/{h.batch_id}", headers={"X-API-Key": h.key})
    assert answer.status_code == 200
    got = answer.json()
    assert (got["status"], got["counts"], got["progress"], got["total_jobs"]) == (
        shown.status, nonzero, shown.progress, len(state.job_ids)
    ), "GET /batch/id"  # fmt: skip
    assert {j["id"]: j["status"] for j in got["jobs"]} == {j.job_id: j.status for j in jobs}

    timeline = await load_timeline(api.store, "batch", batch.stream_id(h.batch_id))
    assert timeline is not None
    assert (timeline.status, timeline.counts) == (shown.status, nonzero), "spool replay batch"

    row = await api.pool.fetchrow(
        "SELECT status, jobs_total, jobs_pending, jobs_processing, jobs_completed, jobs_failed, "
        "jobs_cancelled, jobs_skipped, bytes_uploaded, last_finished_at FROM reporting.batches "
        "WHERE batch_id = $1",
        h.batch_id,
    )
    assert row is not None
    assert dict(row) == {
        **batch_rows.summary_row(shown),
        "jobs_total": len(state.job_ids),
    }, "reporting.batches"


async def _check_usage(api: FreshApi, h: History, streams: list[list[RecordedEvent]]) -> None:
    counts = _counters(streams)
    by_status = Counter(_fold(s).status for s in streams)
    answer = await api.client.get("/usage", headers={"X-API-Key": h.key})
    assert answer.status_code == 200
    all_time = answer.json()["all_time"]
    assert {c: all_time[c] for c in job.USAGE_COUNTERS} == counts, "GET /usage"
    assert {s: n for s, n in all_time["jobs_by_status"].items() if n} == dict(by_status)
    row = await api.pool.fetchrow(
        "SELECT {} FROM reporting.usage_daily WHERE account_id = $1".format(
            ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in job.USAGE_COUNTERS)
        ),
        h.account_id,
    )
    assert dict(row) == counts, "reporting.usage_daily"


async def _check_cluster(api: FreshApi) -> None:
    """Cluster-wide counts against the fold of every job stream in the log."""
    rows = await api.pool.fetch(
        "SELECT stream_id FROM events WHERE version = 1 AND type = 'JobCreated'"
    )
    counts = _counters([await api.store.read_stream(r[0]) for r in rows])

    chart = await api.client.get("/dashboard/throughput", headers=api.admin())
    assert chart.status_code == 200
    points = chart.json()["points"]
    assert (sum(p["completed"] for p in points), sum(p["failed"] for p in points)) == (
        counts["jobs_completed"], counts["jobs_failed"]
    ), "dashboard throughput"  # fmt: skip
    assert sum(p["bytes"] for p in points) == counts["bytes_uploaded"]

    metrics = await api.client.get("/api/v1/cluster/metrics", headers=api.admin())
    assert metrics.status_code == 200
    window = metrics.json()["data"]["windows"]["last_15m"]
    assert (window["jobs_completed"], window["jobs_failed"], window["jobs_cancelled"]) == (
        counts["jobs_completed"], counts["jobs_failed"], counts["jobs_cancelled"]
    ), "cluster metrics"  # fmt: skip


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> Any:
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    grouping=st.sampled_from(["alone", "batch", "paused batch"]),
    n_jobs=st.integers(1, 3),
    history=st.lists(steps, min_size=6, max_size=30),
)
async def test_every_read_surface_agrees_with_the_fold_of_the_log(
    api: FreshApi, grouping: Grouping, n_jobs: int, history: list[Step]
) -> None:
    h = await _create(api, grouping, n_jobs)
    await _run(api, h, history)
    await api.runner.settle()

    streams = [await api.store.read_stream(job.stream_id(j)) for j in h.job_ids]
    folded = {j: _fold(s) for j, s in zip(h.job_ids, streams, strict=True)}
    await _check_jobs(api, h, folded)
    if h.batch_id is not None:
        await _check_batch(api, h, folded)
    await _check_usage(api, h, streams)
    await _check_cluster(api)


async def test_a_started_batch_whose_jobs_all_ended_reads_completed_everywhere(
    api: FreshApi,
) -> None:
    """The issue's case: `GET /batch` said completed, replay and the report said processing."""
    h = await _create(api, "batch", 2)
    here: list[Step] = []
    for index in (0, 1):
        here += [ToJob(index, Deliver("start", None, 0, 0))]
        here += [ToJob(index, Deliver("complete", None, 0, 0))] * 2
        here += [ToJob(index, Deliver("start", None, 0, 0))]
        here += [ToJob(index, Deliver("complete", None, 0, 0))]
    # The second job's upload fails for good: the batch still ended.
    here[-1] = ToJob(1, Deliver("fail", None, 0, 0, retryable=False))
    await _run(api, h, here)
    await api.runner.settle()
    assert h.batch_id is not None

    answer = await api.client.get(f"/batch/{h.batch_id}", headers={"X-API-Key": h.key})
    timeline = await load_timeline(api.store, "batch", batch.stream_id(h.batch_id))
    assert timeline is not None
    report = await api.pool.fetchval(
        "SELECT status FROM reporting.batches WHERE batch_id = $1", h.batch_id
    )
    assert (answer.json()["status"], timeline.status, report) == ("completed",) * 3
    assert answer.json()["counts"] == timeline.counts == {"Completed": 1, "Failed": 1}


async def test_a_node_reads_online_or_offline_alike_on_every_surface(api: FreshApi) -> None:
    """One rule (adapters/read_models/nodes.py), with the timeout an admin set: a node silent for
    45 s is online under a 60 s timeout on every surface, one silent for 90 s offline."""
    changed = HeartbeatConfigChanged(heartbeat=HeartbeatConfig(interval=1, timeout=60))
    await api.store.append(cluster_config.STREAM_ID, [NewEvent(changed)], 0)
    await register(api.store, api.runner, "recent")
    await register(api.store, api.runner, "stopped")
    await append_node(api.store, api.runner, "stopped", node.NodeStopped(node_id="stopped"))
    past = ReportHistory(api.pool)
    for node_id, silent in (("quiet", 45), ("gone", 90)):
        at = (datetime.now(UTC) - timedelta(seconds=silent)).replace(tzinfo=None).isoformat()
        await past.record(node.stream_id(node_id), at, node_started(node_id), heartbeat(node_id))
    await api.runner.settle()
    expected = {"recent": True, "quiet": True, "gone": False, "stopped": False}

    devices = await api.client.get("/api/v1/devices", headers=api.admin())
    shown = {d["device_id"]: d["status"] == "online" for d in devices.json()["data"]}
    assert shown == expected, "devices"
    nodes = await api.client.get("/dashboard/nodes", headers=api.admin())
    assert {n["node_id"]: n["online"] for n in nodes.json()["nodes"]} == expected, "dashboard"
    cluster = await api.client.get("/dashboard/cluster", headers=api.admin())
    assert cluster.json()["total_downloading"] == 2, "dashboard cluster"  # one each online
    rows = await api.pool.fetch("SELECT node_id, online FROM reporting.nodes")
    assert {r[0]: r[1] for r in rows} == expected, "reporting.nodes"
    types = await api.client.get("/api/v1/tasks/types", headers=api.admin())
    assert types.json()["data"]["online_devices"] == 2, "task types"
    scraped = await api.client.get("/metrics", headers=api.admin())
    online = [
        s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "retire_cluster_devices_total" and s.labels == {"status": "online"}
    ]
    assert online == [2.0], "metrics"


# -- tasks -----------------------------------------------------------------------------------

TASK_COMMANDS: tuple[str, ...] = (
    "assign", "assign", "start", "start", "succeed", "fail", "fail for good", "time out",
    "cancel", "retry",
)  # fmt: skip


def _decide_task(state: task.TaskState, command: str) -> list[Event]:
    """What the scheduler, a node or a user decides, through the domain's own functions."""
    node_id, attempt = state.device_id or "node-a", state.attempt
    match command:
        case "assign":
            return task.assign(state, "node-a")
        case "start":
            return task.start(state, node_id, attempt)
        case "succeed":
            return task.succeed(state, node_id, attempt, {"ok": True}, 0.5)
        case "fail" | "fail for good":
            return task.fail(state, None, attempt, "boom", retryable=command == "fail")
        case "time out":
            return task.time_out(state, attempt)
        case "cancel":
            return task.cancel(state)
    return task.retry(state)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    histories=st.lists(
        st.lists(st.sampled_from(TASK_COMMANDS), max_size=10), min_size=1, max_size=3
    )
)
async def test_every_read_of_a_task_agrees_with_the_fold_of_its_stream(
    api: FreshApi, histories: list[list[str]]
) -> None:
    issued = await issue(api.store, name="tasks")
    await api.runner.wait_until("api_keys", issued.at)
    meta = Metadata(actor=issued.key_id)
    ids = [str(uuid.uuid4()) for _ in histories]
    for task_id, commands_of_task in zip(ids, histories, strict=True):
        submitted = task.submit(
            task_id=task_id, account_id=issued.account_id, task_type="sleep",
            payload={"seconds": 0}, requirements=task.Requirements(max_retries=1),
        )  # fmt: skip
        await api.store.append(task.stream_id(task_id), [NewEvent(e, meta) for e in submitted], 0)
        for command in commands_of_task:
            with contextlib.suppress(InvalidTransition):
                await task_store.tasks(api.store).execute(
                    task_id, lambda s, c=command: _decide_task(s, c), meta
                )
    await api.runner.settle()

    headers = {"X-API-Key": issued.key}
    folded = {}
    for task_id in ids:
        events = await api.store.read_stream(task.stream_id(task_id))
        state = task.fold([(e.data, e.recorded_at, e.version) for e in events])
        assert state is not None
        folded[task_id] = state
        expected = msgspec.to_builtins(task_view(state))
        one = await api.client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert one.json()["data"] == expected, "GET /api/v1/tasks/id"
        timeline = await load_timeline(api.store, "task", task.stream_id(task_id))
        assert timeline is not None and timeline.status == state.status, "spool replay task"
        row = await api.pool.fetchrow(
            "SELECT status, attempt, retry_count, error, device_id FROM reporting.tasks "
            "WHERE task_id = $1",
            task_id,
        )
        assert dict(row) == {
            "status": state.status, "attempt": state.attempt, "retry_count": state.retry_count,
            "error": state.error, "device_id": state.device_id,
        }, "reporting.tasks"  # fmt: skip
    listed = await api.client.get("/api/v1/tasks", params={"page_size": 100}, headers=headers)
    got = {t["task_id"]: t["status"] for t in listed.json()["data"]}
    assert got == {t: s.status for t, s in folded.items()}, "GET /api/v1/tasks"
    stats = await api.client.get("/api/v1/tasks/statistics", headers=headers)
    by_status = {s: n for s, n in stats.json()["data"]["by_status"].items() if n}
    assert by_status == dict(Counter(s.status for s in folded.values())), "task statistics"
