"""Snapshot rows carry the version of the state's shape they were written in: a row an older
release wrote (another `snapshot_version`) is not trusted, and the answer is the fold
of the stream, right after an upgrade as before it."""

from __future__ import annotations

import uuid

import msgspec

from spool.adapters.event_store import EventStore
from spool.adapters.job_store import load_job
from spool.adapters.viewer_store import load_viewers
from spool.domain import job, viewer
from spool.domain.aggregate import steps
from spool.domain.events import Metadata, NewEvent
from spool.reactors.projection import ProjectionRunner
from tests.test_viewers_projection import append, connected, stats, unique

META = Metadata(actor="snapshot-test")


async def _job(store: EventStore) -> str:
    job_id = str(uuid.uuid4())
    created = job.create(
        job_id=job_id, account_id="a", url="http://m/a.mp4", options=job.JobOptions(), held=True
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


async def test_the_jobs_projection_stamps_its_rows_with_the_snapshot_version(
    store: EventStore, runner: ProjectionRunner
) -> None:
    job_id = await _job(store)
    await runner.settle("jobs")
    stamped = await store.pool.fetchval(
        "SELECT snapshot_version FROM jobs WHERE job_id = $1", job_id
    )
    assert stamped == job.AGGREGATE.snapshot_version


async def test_a_viewer_row_of_another_snapshot_version_is_folded_from_its_stream(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
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
