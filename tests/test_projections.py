"""The projection runner: exactly-once application, NOTIFY wake-ups, rebuild aside and swap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import sqlalchemy as sa

from spool.adapters.database import create_pool
from spool.adapters.event_store import AppendResult, Batch, EventStore, StreamAppend
from spool.adapters.read_models import all_projections
from spool.adapters.read_models.jobs import JobsProjection
from spool.adapters.read_models.nodes import NodesProjection
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.domain import job, node
from spool.domain.events import NewEvent, RecordedEvent
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import node_started
from tests.conftest import api_client


class ApplicationLog:
    """A projection that records every application, so doubled work would show."""

    name = "application_log"
    table = sa.Table("application_log", sa.MetaData(), sa.Column("position", sa.BigInteger))
    tables: Sequence[sa.Table] = (table,)
    event_types: frozenset[str] = frozenset({"JobCreated"})

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        await conn.executemany(
            "INSERT INTO application_log (position) VALUES ($1)", [(e.position,) for e in events]
        )


@pytest.fixture
async def isolated(fresh_database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database_url, max_size=20)
    await pool.execute("CREATE TABLE application_log (position bigint)")
    yield EventStore(pool)
    await pool.close()


async def _append_job(store: EventStore, account_id: str) -> tuple[str, AppendResult]:
    """Create one job (one append, one NOTIFY); its id and where its events landed."""
    jid = str(uuid.uuid4())
    events = job.create(
        job_id=jid,
        account_id=account_id,
        url=f"http://media.test/{jid}",
        options=job.JobOptions(),
    )
    return jid, await store.append(job.stream_id(jid), [NewEvent(e) for e in events], 0)


async def _create_jobs(store: EventStore, account_id: str, n: int) -> list[str]:
    """Create `n` jobs and wait until subscribers can read them all."""
    ids = []
    for _ in range(n):
        jid, last = await _append_job(store, account_id)
        ids.append(jid)
    await store.wait_readable(last.checkpoint)
    return ids


async def test_two_runners_on_one_projection_apply_each_event_once(isolated: EventStore) -> None:
    await _create_jobs(isolated, "a", 120)
    runners = [ProjectionRunner(isolated, [ApplicationLog()], batch_size=7) for _ in range(4)]

    await asyncio.gather(*(r.catch_up() for r in runners))

    rows = await isolated.pool.fetch("SELECT position FROM application_log")
    positions = [r[0] for r in rows]
    assert len(positions) == 120
    assert len(set(positions)) == 120


async def _append_other_events(store: EventStore, n: int) -> None:
    """`n` events of a type `ApplicationLog` does not follow."""
    stops = [NewEvent(node.NodeStopped(node_id="elsewhere")) for _ in range(n)]
    [result] = await store.append_many([StreamAppend(node.stream_id("elsewhere"), stops)])
    await store.wait_readable(result.checkpoint)


async def _checkpoint(store: EventStore, name: str) -> asyncpg.Record | None:
    return await store.pool.fetchrow(
        "SELECT position, updated_at FROM checkpoints WHERE name = $1", name
    )


async def test_a_projection_steps_over_a_pile_of_events_it_does_not_follow(
    isolated: EventStore,
) -> None:
    await _create_jobs(isolated, "a", 3)
    await _append_other_events(isolated, 2500)
    runner = ProjectionRunner(isolated, [ApplicationLog()], batch_size=100)

    assert await runner.catch_up() == 3

    last = await isolated.pool.fetchval("SELECT max(position) FROM events")
    cp = await _checkpoint(isolated, "application_log")
    assert cp is not None and cp["position"] == last  # later wake-ups need not scan them again
    assert await isolated.pool.fetchval("SELECT count(*) FROM application_log") == 3


async def test_a_wake_up_with_nothing_to_follow_writes_nothing(isolated: EventStore) -> None:
    await _create_jobs(isolated, "a", 2)
    runner = ProjectionRunner(isolated, [ApplicationLog()], batch_size=100)
    await runner.catch_up()
    before = await _checkpoint(isolated, "application_log")
    await _append_other_events(isolated, 5)

    assert await runner.catch_up() == 0

    assert await _checkpoint(isolated, "application_log") == before
    await _create_jobs(isolated, "a", 1)
    assert await runner.catch_up() == 1  # and the next event it follows is applied at once


async def test_the_runner_wakes_on_notify_without_waiting_for_its_poll(
    isolated: EventStore,
) -> None:
    runner = ProjectionRunner(isolated, [JobsProjection()], poll_interval=60)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await first_look_done(runner)  # from here on only a NOTIFY can wake it within 60 s
        [jid] = await _create_jobs(isolated, "a", 1)
        async with asyncio.timeout(5):
            while not await isolated.pool.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", jid):
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def first_look_done(runner: ProjectionRunner, within: float = 10.0) -> None:
    """Wait until a running runner's first look (at every projection) is over: a first look
    ends with each projection's first step, which writes its checkpoint row."""
    names = [p.name for p in runner.projections]
    async with asyncio.timeout(within):
        while await runner.pool.fetchval(
            "SELECT count(*) FROM checkpoints WHERE name = ANY($1::text[])", names
        ) < len(names):
            await asyncio.sleep(0.01)


class ReadCountingStore(EventStore):
    """The real store, counting the reads each projection (by its types) makes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.reads: list[frozenset[str]] = []

    async def read_batch(self, *args: Any, **kwargs: Any) -> Batch:
        self.reads.append(frozenset(kwargs.get("types") or ()))
        return await super().read_batch(*args, **kwargs)


async def test_a_notify_wakes_only_the_projections_of_the_types_it_names(
    isolated: EventStore,
) -> None:
    store = ReadCountingStore(isolated.pool)
    jobs, nodes = JobsProjection(), NodesProjection()
    runner = ProjectionRunner(store, [jobs, nodes], poll_interval=60)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await first_look_done(runner)
        store.reads.clear()
        started = node_started("notified")  # followed by the nodes projection, not the jobs one
        await isolated.append(node.stream_id("notified"), [NewEvent(started)], 0)
        async with asyncio.timeout(5):
            while not await isolated.pool.fetchval(
                "SELECT 1 FROM nodes WHERE node_id = 'notified'"
            ):
                await asyncio.sleep(0.02)
        assert nodes.event_types in store.reads
        assert jobs.event_types not in store.reads

        [jid] = await _create_jobs(isolated, "a", 1)  # and a job wakes the jobs projection
        async with asyncio.timeout(5):
            while not await isolated.pool.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", jid):
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


class BatchCountingJobs(JobsProjection):
    """The jobs projection, recording how many events each of its transactions applied."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def apply(self, conn: Any, events: Any) -> None:
        self.batches.append(len(events))
        await super().apply(conn, events)


async def test_appends_made_moments_apart_are_applied_together(isolated: EventStore) -> None:
    jobs = BatchCountingJobs()
    # A long coalescing window, so that a slow machine still lands all five appends inside it.
    runner = ProjectionRunner(isolated, [jobs], poll_interval=60, coalesce=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await first_look_done(runner)
        jobs.batches.clear()
        ids = []
        for _ in range(5):  # five appends a tenth of a second apart, five NOTIFYs
            jid, _ = await _append_job(isolated, "a")
            ids.append(jid)
            await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            while (
                await isolated.pool.fetchval(
                    "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[])", ids
                )
                < 5
            ):
                await asyncio.sleep(0.05)
        assert jobs.batches == [5]  # one transaction for the burst, not one per append
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_jobs_projection_equals_the_fold_of_each_stream(isolated: EventStore) -> None:
    ids = await _create_jobs(isolated, "a", 5)
    await ProjectionRunner(isolated, all_projections()).catch_up()

    for jid in ids:
        events = await isolated.read_stream(job.stream_id(jid))
        folded = job.fold([(e.data, e.recorded_at, e.version) for e in events])
        row = await isolated.pool.fetchval("SELECT state FROM jobs WHERE job_id = $1", jid)
        assert msgspec.json.decode(row, type=job.JobState) == folded


async def test_a_rebuild_serves_the_old_rows_until_it_swaps_in_the_new(
    isolated: EventStore, tmp_path: Path
) -> None:
    runner = ProjectionRunner(isolated, all_projections(), batch_size=10)
    issued = await issue(isolated, name="t", admin=False)
    key, account_id = issued.key, issued.account_id
    ids = await _create_jobs(isolated, account_id, 45)
    await runner.settle()
    before = await isolated.pool.fetch("SELECT job_id, state FROM jobs ORDER BY job_id")

    app = create_app(
        pool=isolated.pool,
        store=isolated,
        settings=Settings(secret_key="test-secret-key"),
        storage=LocalStorage(tmp_path),
    )
    answers: list[int] = []
    async with api_client(app) as client:
        rebuilding = ProjectionRunner(isolated, all_projections(), batch_size=10)

        async def during(n: int) -> None:
            # Mid-rebuild the API still answers from the complete old rows.
            listing = await client.get("/jobs?limit=100", headers={"x-api-key": key})
            answers.append(len(listing.json()["jobs"]))

        def progress(n: int) -> None:
            pending.append(asyncio.ensure_future(during(n)))

        pending: list[asyncio.Future[None]] = []
        applied = await rebuilding.rebuild("jobs", progress=progress)
        await asyncio.gather(*pending)

        assert applied == 45
        assert answers and all(a == 45 for a in answers)
        after = await isolated.pool.fetch("SELECT job_id, state FROM jobs ORDER BY job_id")
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        got = await client.get(f"/jobs/{ids[0]}", headers={"x-api-key": key})
        assert got.status_code == 200

    # The live runner carries on from the swapped-in checkpoint without applying anything twice.
    more = await _create_jobs(isolated, account_id, 3)
    assert await runner.catch_up("jobs") == 3
    count = await isolated.pool.fetchval("SELECT count(*) FROM jobs")
    assert count == 48
    assert set(more) <= {r[0] for r in await isolated.pool.fetch("SELECT job_id FROM jobs")}
    leftovers = await isolated.pool.fetchval(
        "SELECT count(*) FROM checkpoints WHERE name LIKE '%@rebuild'"
    )
    assert leftovers == 0
