"""Snapshot rows carry the version of the state's shape they were written in: a row an older
release wrote (another `snapshot_version`) is not trusted, and the answer is the fold
of the stream, right after an upgrade as before it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import msgspec

from spool.adapters import live_progress
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import load_job, load_jobs
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import tasks as task_rows
from spool.adapters.settings import Settings
from spool.adapters.viewer_store import load_viewers
from spool.domain import job, task, viewer
from spool.domain.aggregate import steps
from spool.domain.events import Metadata, NewEvent
from spool.domain.job_query import JobQuery
from spool.reactors.projection import ProjectionRunner
from tests.test_viewers_projection import append, connected, stats, unique

META = Metadata(actor="snapshot-test")


async def _job(store: EventStore, account_id: str = "a") -> str:
    job_id = str(uuid.uuid4())
    created = job.create(
        job_id=job_id,
        account_id=account_id,
        url="http://m/a.mp4",
        options=job.JobOptions(),
        held=True,
    )
    events = [*created, job.JobRenamed(filename="first.mp4"), job.JobReleased()]
    await store.append(job.stream_id(job_id), [NewEvent(e, META) for e in events], 0)
    return job_id


async def _write_row(store: EventStore, job_id: str, title: str, snapshot: int) -> None:
    """The job's row as a release with another JobState could have left it."""
    row = await store.pool.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
    state = msgspec.json.decode(row)
    state["title"] = title
    await store.pool.execute(
        "UPDATE jobs SET state = $2, snapshot_version = $3 WHERE job_id = $1",
        job_id,
        msgspec.json.encode(state),
        snapshot,
    )


async def test_a_job_row_of_another_snapshot_version_is_folded_from_its_stream(
    store: EventStore, runner: ProjectionRunner
) -> None:
    job_id = await _job(store)
    await runner.settle("jobs")
    folded = job.fold(steps(await store.read_stream(job.stream_id(job_id))))
    assert folded is not None and folded.title is None

    await _write_row(store, job_id, "what the row says", job.AGGREGATE.snapshot_version)
    current = await load_job(store, job_id)
    assert current is not None and current.title == "what the row says"  # a current row is used

    for stale in (job.AGGREGATE.snapshot_version - 1, job.AGGREGATE.snapshot_version + 1):
        await _write_row(store, job_id, "an older shape's answer", stale)
        assert await load_job(store, job_id) == folded


@contextlib.asynccontextmanager
async def _default_moved(store: EventStore, table: str) -> AsyncIterator[None]:
    """The stamp column's default as a migration for a later shape would leave it, while this
    release's projection still writes rows."""
    was = await store.pool.fetchval(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = $1 AND column_name = 'snapshot_version'",
        table,
    )
    column = f"ALTER TABLE {table} ALTER COLUMN snapshot_version SET DEFAULT"
    await store.pool.execute(f"{column} 99")
    try:
        yield
    finally:
        await store.pool.execute(f"{column} {was}")


async def test_the_jobs_projection_stamps_its_rows_with_the_snapshot_version(
    store: EventStore, runner: ProjectionRunner
) -> None:
    async with _default_moved(store, "jobs"):
        job_id = await _job(store)
        await runner.settle("jobs")
    stamped = await store.pool.fetchval(
        "SELECT snapshot_version FROM jobs WHERE job_id = $1", job_id
    )
    assert stamped == job.AGGREGATE.snapshot_version


async def test_a_job_row_an_older_shape_wrote_is_folded_again_when_the_job_moves_on(
    store: EventStore, runner: ProjectionRunner
) -> None:
    account_id = f"acct_{uuid.uuid4().hex}"
    job_id = await _job(store, account_id)
    await runner.settle("jobs")
    await _write_row(store, job_id, "an older shape's answer", job.AGGREGATE.snapshot_version - 1)

    renamed = NewEvent(job.JobRenamed(filename="second.mp4"), META)
    await store.append(job.stream_id(job_id), [renamed], None)
    await runner.settle("jobs")

    folded = job.fold(steps(await store.read_stream(job.stream_id(job_id))))
    assert folded is not None and folded.title is None
    assert folded.options.filename == "second.mp4"
    row = await store.pool.fetchrow(
        "SELECT state, snapshot_version FROM jobs WHERE job_id = $1", job_id
    )
    assert row["snapshot_version"] == job.AGGREGATE.snapshot_version
    assert job_rows.ROWS.decode(row["state"]) == folded
    listed = await job_rows.page(
        store.pool,
        account_id,
        JobQuery(),
        after=None,
        limit=10,
        live_within=live_progress.fresh_within(Settings()),
    )
    assert listed.states == [folded]  # what GET /jobs lists, as the events say
    assert await load_job(store, job_id) == folded


async def test_a_task_row_an_older_shape_wrote_is_folded_again_when_the_task_moves_on(
    store: EventStore, runner: ProjectionRunner
) -> None:
    task_id = str(uuid.uuid4())
    submitted = task.submit(task_id=task_id, account_id="a", task_type="echo")
    await store.append(task.stream_id(task_id), [NewEvent(e, META) for e in submitted], 0)
    await runner.settle("tasks")
    raw = await store.pool.fetchval("SELECT state FROM tasks WHERE task_id = $1", task_id)
    older = msgspec.json.decode(raw)
    older["reason"] = "an older shape's answer"
    await store.pool.execute(
        "UPDATE tasks SET state = $2, snapshot_version = $3 WHERE task_id = $1",
        task_id,
        msgspec.json.encode(older),
        task.AGGREGATE.snapshot_version - 1,
    )

    state = task.fold(steps(await store.read_stream(task.stream_id(task_id))))
    assert state is not None
    await store.append(
        task.stream_id(task_id), [NewEvent(e, META) for e in task.cancel(state)], None
    )
    await runner.settle("tasks")

    folded = task.fold(steps(await store.read_stream(task.stream_id(task_id))))
    assert folded is not None and folded.status == "cancelled"
    assert folded.reason != "an older shape's answer"
    row = await store.pool.fetchrow(
        "SELECT state, snapshot_version, reason FROM tasks WHERE task_id = $1", task_id
    )
    assert row["snapshot_version"] == task.AGGREGATE.snapshot_version
    assert task_rows.ROWS.decode(row["state"]) == folded
    assert row["reason"] == folded.reason  # what GET /api/v1/tasks shows


async def test_a_viewer_row_of_another_snapshot_version_is_folded_from_its_stream(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
    async with _default_moved(store, "viewers"):
        await append(store, vid, connected(vid, unique(), bitrate=800_000))
        await append(store, vid, stats(vid, 100_000, 1000), stats(vid, 100_000, 2000))
        await runner.settle("viewers")
    folded = viewer.fold(steps(await store.read_stream(viewer.stream_id(vid))))
    stamped = await store.pool.fetchval(
        "SELECT snapshot_version FROM viewers WHERE viewer_id = $1", vid
    )
    assert stamped == viewer.AGGREGATE.snapshot_version

    await store.pool.execute(
        "UPDATE viewers SET out_total_bytes = 1, snapshot_version = 0 WHERE viewer_id = $1", vid
    )

    assert (await load_viewers(store, [vid]))[vid] == folded


async def test_jobs_read_together_are_each_what_reading_it_alone_gives(
    store: EventStore, runner: ProjectionRunner
) -> None:
    with_row, stale_row = await _job(store), await _job(store)
    await runner.settle("jobs")
    await _write_row(
        store, stale_row, "an older shape's answer", job.AGGREGATE.snapshot_version - 1
    )
    # Past its row: events the projection has not applied yet are folded on.
    await store.append(
        job.stream_id(with_row), [NewEvent(job.JobRenamed(filename="later.mp4"), META)], 3
    )
    without_row = await _job(store)  # no row yet at all
    missing = str(uuid.uuid4())

    together = await load_jobs(store, [with_row, stale_row, without_row, missing])

    assert set(together) == {with_row, stale_row, without_row}
    for job_id in (with_row, stale_row, without_row):
        assert together[job_id] == await load_job(store, job_id)
    assert together[with_row].options.filename == "later.mp4"
