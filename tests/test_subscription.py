"""The one catch-up loop of every log follower (adapters/subscription.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from spool.adapters.database import create_pool
from spool.adapters.event_store import Checkpoint, EventStore
from spool.adapters.subscription import LogSubscription, Look
from spool.domain import job, node
from spool.domain.events import NewEvent
from tests.cluster_api_helpers import node_started


@pytest.fixture
async def store(fresh_database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(fresh_database_url, max_size=5)
    yield EventStore(pool)
    await pool.close()


async def _create_job(store: EventStore) -> str:
    """One job: one append, one NOTIFY; readable once this returns."""
    jid = str(uuid.uuid4())
    events = job.create(
        job_id=jid, account_id="a", url=f"http://media.test/{jid}", options=job.JobOptions()
    )
    appended = await store.append(job.stream_id(jid), [NewEvent(e) for e in events], 0)
    await store.wait_readable(appended.checkpoint)
    return jid


async def test_an_append_wakes_the_follower_with_the_types_it_wrote(store: EventStore) -> None:
    subscription = LogSubscription(store, what="test follower", poll_interval=3600)
    stop, listening = asyncio.Event(), asyncio.Event()
    looks: asyncio.Queue[Look] = asyncio.Queue()

    async def catch_up(look: Look) -> None:
        await looks.put(look)

    async def on_listen() -> None:
        listening.set()

    following = asyncio.create_task(subscription.follow(catch_up, stop, on_listen=on_listen))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        first = await asyncio.wait_for(looks.get(), 10)
        assert first.everything  # the first look after attaching takes everything
        await _create_job(store)
        look = await asyncio.wait_for(looks.get(), 10)  # an hour's poll: only NOTIFY explains it
        assert not look.everything
        assert look.concerns({job.JobCreated.__name__})
        assert not look.concerns({node.NodeHeartbeat.__name__})
    finally:
        stop.set()
        await asyncio.wait_for(following, 10)


async def test_a_failed_catch_up_is_handed_the_same_types_again(store: EventStore) -> None:
    subscription = LogSubscription(store, what="test follower", poll_interval=0.05)
    stop, failed = asyncio.Event(), asyncio.Event()
    after_failure: asyncio.Queue[Look] = asyncio.Queue()
    first_look_done = asyncio.Event()

    async def catch_up(look: Look) -> None:
        if not first_look_done.is_set():
            first_look_done.set()
            return
        if look.concerns({job.JobCreated.__name__}) and not failed.is_set():
            failed.set()
            raise ConnectionError("the database restarted mid-batch")
        if failed.is_set():
            await after_failure.put(look)

    following = asyncio.create_task(subscription.follow(catch_up, stop))
    try:
        await asyncio.wait_for(first_look_done.wait(), 10)
        await _create_job(store)
        await asyncio.wait_for(failed.wait(), 10)
        again = await asyncio.wait_for(after_failure.get(), 10)
        assert again.concerns({job.JobCreated.__name__})
    finally:
        stop.set()
        await asyncio.wait_for(following, 10)


async def test_batches_come_in_commit_order_and_step_past_other_types(store: EventStore) -> None:
    ids = [await _create_job(store) for _ in range(5)]
    subscription = LogSubscription(store, what="test follower")
    seen: list[str] = []
    horizons: list[Checkpoint] = []
    async for batch in subscription.batches(Checkpoint(), job.EVENT_TYPES, 2):
        seen += [e.stream_id.removeprefix("job-") for e in batch.events]
        horizons.append(batch.horizon)
    assert seen == ids
    assert horizons == sorted(horizons)
    nothing = [b.events async for b in subscription.batches(Checkpoint(), node.EVENT_TYPES, 2)]
    assert nothing == [[]]


async def test_events_behind_an_open_transaction_are_read_once_it_ends_without_a_notify_of_its_own(
    store: EventStore,
) -> None:
    subscription = LogSubscription(store, what="test follower", poll_interval=3600)
    stop, listening = asyncio.Event(), asyncio.Event()
    seen: set[str] = set()
    after = Checkpoint()
    notified = asyncio.Event()

    async def catch_up(look: Look) -> None:
        nonlocal after
        if not look.everything and look.concerns({job.JobCreated.__name__}):
            notified.set()
        async for batch in subscription.batches(after, frozenset(job.EVENT_TYPES), 100):
            seen.update(e.stream_id for e in batch.events)
            after = batch.horizon

    async def on_listen() -> None:
        listening.set()

    following = asyncio.create_task(subscription.follow(catch_up, stop, on_listen=on_listen))
    blocker = await store.pool.acquire()
    try:
        await asyncio.wait_for(listening.wait(), 10)
        # An older transaction, open and holding an id, that will end without appending: no
        # NOTIFY of its own will say when the job behind it becomes readable.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT pg_current_xact_id()")
        jid = str(uuid.uuid4())
        created = job.create(
            job_id=jid, account_id="a", url=f"http://media.test/{jid}", options=job.JobOptions()
        )
        await store.append(job.stream_id(jid), [NewEvent(e) for e in created], 0)
        await asyncio.wait_for(notified.wait(), 10)  # the NOTIFY's look ...
        assert job.stream_id(jid) not in seen  # ... found the job behind the open transaction
        await transaction.rollback()
        async with asyncio.timeout(5):  # an hour's poll: only the follower's own re-look
            while job.stream_id(jid) not in seen:
                await asyncio.sleep(0.01)
    finally:
        await store.pool.release(blocker)
        stop.set()
        await asyncio.wait_for(following, 10)


async def test_the_poll_comes_though_other_types_are_notified_more_often_than_it(
    store: EventStore,
) -> None:
    subscription = LogSubscription(store, what="test follower", poll_interval=0.5)
    stop, listening = asyncio.Event(), asyncio.Event()
    seen: set[str] = set()
    after = Checkpoint()

    async def catch_up(look: Look) -> None:
        nonlocal after
        if look.concerns({job.JobCreated.__name__}):
            async for batch in subscription.batches(after, frozenset(job.EVENT_TYPES), 100):
                seen.update(e.stream_id for e in batch.events)
                after = batch.horizon

    async def on_listen() -> None:
        listening.set()

    async def beat() -> None:  # a node's heartbeat: a NOTIFY of another type, more often
        n = 0
        while not stop.is_set():
            n += 1
            started = node_started(f"beating-{n}")
            await store.append(node.stream_id(f"beating-{n}"), [NewEvent(started)], 0)
            await asyncio.sleep(0.1)

    following = asyncio.create_task(subscription.follow(catch_up, stop, on_listen=on_listen))
    beating = asyncio.create_task(beat())
    try:
        await asyncio.wait_for(listening.wait(), 10)
        jid = str(uuid.uuid4())
        [created] = job.create(
            job_id=jid, account_id="a", url=f"http://media.test/{jid}", options=job.JobOptions()
        )
        # Written without a NOTIFY, as when the appender's NOTIFY was lost with its process.
        await store.pool.execute(
            "INSERT INTO events (stream_id, version, type, schema_version, data, metadata) "
            "VALUES ($1, 1, $2, $3, $4, '{}')",
            job.stream_id(jid),
            type(created).__name__,
            type(created).schema_version,
            msgspec.json.encode(created),
        )
        async with asyncio.timeout(10):
            while job.stream_id(jid) not in seen:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(following, beating), 10)
