"""The event store: appends, optimistic concurrency, commit-ordered reads, upcasting, NOTIFY."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from spool.adapters.database import create_pool
from spool.adapters.event_store import (
    NOTIFY_CHANNEL,
    ORIGIN,
    EventStore,
    StreamAppend,
    checkpoint_of,
    parse_wake,
)
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, Metadata, NewEvent, registry
from spool.domain.job import JobCreated, JobOptions


@registry.register
class StoreProbe(Event, frozen=True, kw_only=True):
    """An event no projection follows, so these tests leave the read models alone."""

    note: str


def _created(note: str | None = None) -> NewEvent:
    return NewEvent(
        StoreProbe(note=note or str(uuid.uuid4())),
        Metadata(
            correlation_id="corr-1", causation_id="cause-1", actor="key-1", request_id="req-1"
        ),
    )


async def test_appended_events_read_back_in_order_with_their_metadata(store: EventStore) -> None:
    stream = f"probe-{uuid.uuid4()}"
    first, second = _created("first"), _created("second")
    result = await store.append(stream, [first, second], expected_version=0)
    assert result.version == 2

    events = await store.read_stream(stream)

    assert [e.version for e in events] == [1, 2]
    assert [e.data for e in events] == [first.event, second.event]
    assert events[0].metadata == Metadata(
        correlation_id="corr-1", causation_id="cause-1", actor="key-1", request_id="req-1"
    )
    assert events[0].position < events[1].position
    assert events[0].recorded_at <= events[1].recorded_at
    assert await store.read_stream(stream, from_version=2) == events[1:]


async def test_a_stale_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    stream = f"probe-{uuid.uuid4()}"
    await store.append(stream, [_created()], expected_version=0)

    with pytest.raises(ConcurrencyError) as raised:
        await store.append(stream, [_created(), _created()], expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append(stream, [_created()], expected_version=5)

    assert raised.value.actual == 1
    assert await store.stream_version(stream) == 1


async def test_concurrent_writers_of_one_stream_lose_no_write(store: EventStore) -> None:
    stream = f"probe-{uuid.uuid4()}"
    writes = [_created() for _ in range(40)]

    await asyncio.gather(*(store.append(stream, [w], expected_version=None) for w in writes))

    events = await store.read_stream(stream)
    assert [e.version for e in events] == list(range(1, 41))
    assert {e.data for e in events} == {w.event for w in writes}


async def test_an_append_at_the_end_never_loses_to_a_versioned_writer(store: EventStore) -> None:
    """Found by test_job_properties: progress (no version) racing a stage result (versioned)."""
    stream = f"probe-{uuid.uuid4()}"
    await store.append(stream, [_created()], expected_version=0)

    async def versioned_writer() -> None:
        for _ in range(15):
            while True:
                head = await store.stream_version(stream)
                try:
                    await store.append(stream, [_created()], expected_version=head)
                    break
                except ConcurrencyError:
                    continue

    anywhere = [store.append(stream, [_created()], expected_version=None) for _ in range(30)]
    await asyncio.gather(versioned_writer(), versioned_writer(), *anywhere)

    assert await store.stream_version(stream) == 1 + 30 + 30


async def test_racing_writers_with_the_same_expected_version_only_one_wins(
    store: EventStore,
) -> None:
    stream = f"probe-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(store.append(stream, [_created()], expected_version=0) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConcurrencyError) for r in results if isinstance(r, Exception))
    assert await store.stream_version(stream) == 1


async def test_a_batched_append_over_many_streams_is_all_or_nothing(store: EventStore) -> None:
    ok, stale = f"node-{uuid.uuid4()}", f"node-{uuid.uuid4()}"
    await store.append(stale, [_created()], expected_version=0)

    with pytest.raises(ConcurrencyError):
        await store.append_many(
            [StreamAppend(ok, [_created()], 0), StreamAppend(stale, [_created()], 0)]
        )
    assert await store.stream_version(ok) == 0

    results = await store.append_many(
        [StreamAppend(ok, [_created(), _created()], 0), StreamAppend(stale, [_created()], None)]
    )
    assert {(r.stream_id, r.version) for r in results} == {(ok, 2), (stale, 2)}


async def test_a_transaction_that_commits_late_is_not_skipped(fresh_database_url: str) -> None:
    """The ordering rule: a reader never steps past an event still in flight."""
    pool = await create_pool(fresh_database_url)
    store = EventStore(pool)
    try:
        async with pool.acquire() as slow:
            tx = slow.transaction()
            await tx.start()
            # The slow transaction takes its position first, then stays open...
            await store.append("probe-slow", [_created("slow")], 0, conn=slow)
            # ...while a later one commits.
            fast = await store.append("probe-fast", [_created("fast")], 0)

            seen = await store.read_all(ORIGIN)
            assert seen == []  # nothing yet: the fast event stands behind an open transaction

            # A naive `position >` reader would take the fast event now and never see the slow one.
            naive = await pool.fetch("SELECT position, stream_id FROM events ORDER BY position")
            assert [r["stream_id"] for r in naive] == ["probe-fast"]

            await tx.commit()

        # Readable once no older transaction on the server is still open (other tests' too).
        await store.wait_readable(fast.checkpoint)
        after_commit = await store.read_all(ORIGIN)
        assert [e.stream_id for e in after_commit] == ["probe-slow", "probe-fast"]

        # Reading on from the checkpoint finds nothing twice.
        assert await store.read_all(checkpoint_of(after_commit[-1])) == []
        # And reading in small steps sees each event exactly once.
        stepped, at = [], ORIGIN
        while batch := await store.read_all(at, limit=1):
            stepped += batch
            at = checkpoint_of(batch[-1])
        assert [e.stream_id for e in stepped] == ["probe-slow", "probe-fast"]
    finally:
        await pool.close()


async def test_the_log_refuses_updates_and_deletes(store: EventStore) -> None:
    stream = f"probe-{uuid.uuid4()}"
    await store.append(stream, [_created()], 0)
    for statement in (
        "UPDATE events SET type = 'Forged' WHERE stream_id = $1",
        "DELETE FROM events WHERE stream_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await store.pool.execute(statement, stream)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await store.pool.execute("TRUNCATE events")
    assert (await store.read_stream(stream))[0].type == "StoreProbe"


async def test_a_v1_job_created_is_upcast_to_v2_on_read(store: EventStore) -> None:
    """JobCreated v1 carried a flat `format`; v2 nests it in `options`. Stored rows stay v1."""
    stream = f"probe-{uuid.uuid4()}"
    v1 = {"job_id": "j1", "account_id": "a1", "url": "http://media.test/a.mp4", "format": "mkv"}
    await store.pool.execute(
        "INSERT INTO events (stream_id, version, type, schema_version, data, metadata) "
        "VALUES ($1, 1, 'JobCreated', 1, $2, $3)",
        stream,
        msgspec.json.encode(v1),
        b"{}",
    )

    [event] = await store.read_stream(stream)

    assert event.schema_version == 2
    assert event.data == JobCreated(
        job_id="j1",
        account_id="a1",
        url="http://media.test/a.mp4",
        options=JobOptions(format="mkv"),
    )
    stored = await store.pool.fetchval(
        "SELECT schema_version FROM events WHERE stream_id = $1", stream
    )
    assert stored == 1  # history is never rewritten


async def test_append_notifies_listeners_on_commit_naming_its_transaction_and_the_types(
    store: EventStore,
) -> None:
    payloads: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
        payloads.put_nowait(payload)

    async with store.pool.acquire() as listener:
        await listener.add_listener(NOTIFY_CHANNEL, on_notify)
        try:
            probe = _created()
            one = await store.append(f"job-{uuid.uuid4()}", [probe], 0)
            named = type(probe.event).__name__
            heard = await asyncio.wait_for(payloads.get(), timeout=5)
            assert parse_wake(heard) == (one.tx, frozenset({named}))
            many = await store.append_many(
                [
                    StreamAppend(f"job-{uuid.uuid4()}", [_created()]),
                    StreamAppend(f"job-{uuid.uuid4()}", [_created()]),
                ],
                durable=False,
            )
            heard = await asyncio.wait_for(payloads.get(), timeout=5)
            assert parse_wake(heard) == (many[0].tx, frozenset({named}))
            # An append that need not wait for its flush (a node's start of a unit) checks its
            # version and notifies all the same.
            stream = f"job-{uuid.uuid4()}"
            fleeting = await store.append(stream, [_created()], 0, durable=False)
            heard = await asyncio.wait_for(payloads.get(), timeout=5)
            assert parse_wake(heard) == (fleeting.tx, frozenset({named}))
            with pytest.raises(ConcurrencyError):
                await store.append(stream, [_created()], 0, durable=False)
            assert [e.version for e in await store.read_stream(stream)] == [1]
        finally:
            await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
