"""The repository's contract, once, for every aggregate that runs through it.

Each case names an aggregate's repository, how one of its streams is created, a command of
another writer, our command, a command its fresh state refuses, and what the state shows once
both writers' commands applied.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest

from spool.adapters import node_store
from spool.adapters.batch_store import batches, start_batch
from spool.adapters.config_store import configs
from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.feed_store import feeds
from spool.adapters.job_store import jobs
from spool.adapters.repository import (
    ChangingTooFast,
    Executor,
    Loaded,
    Repository,
    UnitOfWork,
    execute_many,
    record_many,
)
from spool.adapters.task_store import tasks
from spool.domain import (
    account,
    account_policy,
    archive,
    batch,
    cluster_config,
    feed,
    job,
    node,
    operation,
    storage_config,
    subscription,
    task,
    viewer,
)
from spool.domain.aggregate import Aggregate, steps
from spool.domain.errors import ConcurrencyError, DomainError
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.job_query import JobQuery

META = Metadata(actor="repository-test")


@dataclass(frozen=True)
class Case:
    name: str
    repository: Callable[[EventStore], Repository[Any]]
    new_id: Callable[[], str]
    create: Callable[[str], list[Event]]
    theirs: Callable[[Any], list[Event]]
    ours: Callable[[Any], list[Event]]
    refused: Callable[[Any], list[Event]]
    both_applied: Callable[[Any], bool]


CASES = [
    Case(
        name="job",
        repository=jobs,
        new_id=lambda: uuid.uuid4().hex,
        create=lambda job_id: job.create(
            job_id=job_id, account_id="a", url="http://m/a.mp4", options=job.JobOptions(), held=True
        ),
        theirs=lambda s: job.rename(s, "theirs.mp4"),
        ours=job.cancel,
        refused=job.retry,  # a pending job cannot be retried
        both_applied=lambda s: s.status == "Cancelled" and s.options.filename == "theirs.mp4",
    ),
    Case(
        name="task",
        repository=tasks,
        new_id=lambda: uuid.uuid4().hex,
        create=lambda task_id: task.submit(task_id=task_id, account_id="a", task_type="echo"),
        theirs=lambda s: task.assign(s, "node-1"),
        ours=task.cancel,
        refused=task.retry,  # a queued task cannot be retried
        both_applied=lambda s: s.status == "cancelled" and s.device_id == "node-1",
    ),
    Case(
        name="config",
        repository=configs,
        new_id=lambda: cluster_config.STREAM_ID,
        create=lambda _: cluster_config.change_heartbeat(
            cluster_config.ClusterConfig(), {"interval": 2}
        ),
        theirs=lambda s: cluster_config.change_server(s, {"max_connections": 7}),
        ours=lambda s: cluster_config.change_heartbeat(s, {"timeout": 40}),
        refused=lambda s: cluster_config.change_heartbeat(s, {"timeout": 0}),
        both_applied=lambda s: s.server.max_connections == 7 and s.heartbeat.timeout == 40,
    ),
]


@pytest.fixture
async def own_store(fresh_database_url: str) -> AsyncIterator[EventStore]:
    """A log of this test's own: the config is one stream for the whole cluster."""
    pool: asyncpg.Pool = await create_pool(fresh_database_url, min_size=1, max_size=4)
    yield EventStore(pool)
    await pool.close()


async def _created(store: EventStore, case: Case) -> str:
    aggregate_id = case.new_id()
    repo = case.repository(store)
    events = case.create(aggregate_id)
    await store.append(repo.stream_id(aggregate_id), [NewEvent(e, META) for e in events], 0)
    return aggregate_id


def _with_a_writer_in_between(repo: Repository[Any], theirs: Callable[[Any], list[Event]]) -> Any:
    """`repo` whose first read is followed by another writer's command on the same stream."""
    landed: list[bool] = []

    async def read_then_let_them_write(
        store: EventStore, aggregate_id: str, executor: Executor
    ) -> Loaded[Any]:
        conn = executor if isinstance(executor, asyncpg.Connection) else None
        loaded = await repo.read(aggregate_id, conn)
        if not landed:
            landed.append(True)
            assert loaded.state is not None
            new = [NewEvent(e, META) for e in theirs(loaded.state)]
            await store.append(repo.stream_id(aggregate_id), new, loaded.version)
        return loaded

    return replace(repo, loader=read_then_let_them_write)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_a_clash_with_another_writer_is_decided_again_on_what_they_left(
    own_store: EventStore, case: Case
) -> None:
    aggregate_id = await _created(own_store, case)
    seen: list[int] = []

    def ours(state: Any) -> list[Event]:
        seen.append(state.version)
        return case.ours(state)

    repo = _with_a_writer_in_between(case.repository(own_store), case.theirs)
    state, appended = await repo.execute(aggregate_id, ours, META)

    assert seen == [1, 2]  # the first decision lost the race; the second saw their event
    assert appended is not None and appended.version == 3
    assert case.both_applied(state)
    assert case.both_applied(await case.repository(own_store).load(aggregate_id))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_a_clash_inside_a_transaction_is_retried_and_the_transaction_commits(
    own_store: EventStore, case: Case
) -> None:
    aggregate_id = await _created(own_store, case)
    repo = _with_a_writer_in_between(case.repository(own_store), case.theirs)
    async with own_store.pool.acquire() as conn, conn.transaction():
        state, _ = await repo.execute(aggregate_id, case.ours, META, conn=conn)
        assert case.both_applied(state)
    assert case.both_applied(await case.repository(own_store).load(aggregate_id))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_a_refused_decision_appends_nothing(own_store: EventStore, case: Case) -> None:
    aggregate_id = await _created(own_store, case)
    repo = case.repository(own_store)

    with pytest.raises(DomainError):
        await repo.execute(aggregate_id, case.refused, META)

    assert len(await own_store.read_stream(repo.stream_id(aggregate_id))) == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_an_empty_decision_appends_nothing_and_returns_the_state_read(
    own_store: EventStore, case: Case
) -> None:
    aggregate_id = await _created(own_store, case)
    repo = case.repository(own_store)

    state, appended = await repo.execute(aggregate_id, lambda _: [], META)

    assert appended is None and state is not None and state.version == 1
    assert len(await own_store.read_stream(repo.stream_id(aggregate_id))) == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_as_of_reads_the_state_before_a_later_command(
    own_store: EventStore, case: Case
) -> None:
    aggregate_id = await _created(own_store, case)
    repo = case.repository(own_store)
    [created] = await own_store.read_stream(repo.stream_id(aggregate_id))
    await repo.execute(aggregate_id, case.ours, META)

    by_position = await repo.load(aggregate_id, as_of=created.position)
    by_time = await repo.load(aggregate_id, as_of=created.recorded_at)
    now = await repo.load(aggregate_id)

    assert by_position is not None and by_position.version == 1
    assert by_time is not None and by_time.version == 1
    assert now is not None and now.version == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_a_missing_stream_loads_none(own_store: EventStore, case: Case) -> None:
    repo = case.repository(own_store)
    assert await repo.load(case.new_id()) is None
    assert await repo.load(case.new_id(), as_of=10**9) is None


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "config"], ids=lambda c: c.name)
async def test_a_command_on_a_missing_aggregate_decides_nothing(
    own_store: EventStore, case: Case
) -> None:
    repo = case.repository(own_store)
    missing = case.new_id()

    def never(_: Any) -> list[Event]:
        raise AssertionError("decided on an aggregate that does not exist")

    assert await repo.execute(missing, never, META) == (None, None)
    assert await own_store.read_stream(repo.stream_id(missing)) == []


# -- as_of and the state a command returns, for every aggregate ------------------------------

_CAPS = node.Capabilities(cpu_count=1, memory_total_gb=1.0, storage_total_gb=1.0)
_SEALED = storage_config.Sealed(key_version=1, nonce="bm9uY2U=", ciphertext="c2VjcmV0")


def _history(kind: str, aggregate_id: str) -> tuple[list[Event], list[Event]]:
    """Two commands' events on one aggregate: the first (creating it), then a later one."""
    if kind == "job":
        options = job.JobOptions()
        created = job.create(job_id=aggregate_id, account_id="a", url="http://m/a", options=options)
        return created, [job.JobCancelled(run=1, stage=None)]
    if kind == "batch":
        created_batch = batch.BatchCreated(
            batch_id=aggregate_id, account_id="a", kind="bulk", job_ids=[], paused=True
        )
        return [created_batch], [batch.BatchStarted(started_jobs=0)]
    if kind == "task":
        submitted = task.submit(task_id=aggregate_id, account_id="a", task_type="echo")
        return submitted, [task.TaskCancelled(reason="no longer needed")]
    if kind == "viewer":
        connected = viewer.ViewerConnected(
            viewer_id=aggregate_id, harness_type="STORM_HLS_VIEWER", state="PLAYING", started_at=1
        )
        return [connected], [viewer.ViewerStateChanged(viewer_id=aggregate_id, state="PAUSED")]
    if kind == "account":
        issued = account.issue_key(
            key="sk_" + "k" * 30, key_id="key-1", account_id=aggregate_id, name="n", scope="jobs"
        )
        return issued, [account.ApiKeyRevoked(key_id="key-1")]
    if kind == "storage":
        configured = storage_config.StorageConfigured(
            account_id=aggregate_id, provider="s3", bucket="b", sealed_credentials=_SEALED
        )
        return [configured], [storage_config.StorageRemoved(account_id=aggregate_id, provider="s3")]
    if kind == "account_policy":
        quotas = account_policy.QuotasSet(
            account_id=aggregate_id, quotas=account_policy.Quotas(max_running_jobs=2)
        )
        granted = account_policy.CodeTasksGranted(account_id=aggregate_id, task_types=["command"])
        return [quotas], [granted]
    if kind == "config":
        changed = cluster_config.HeartbeatConfigChanged(
            heartbeat=cluster_config.HeartbeatConfig(interval=2)
        )
        return [changed], [cluster_config.ConfigReset()]
    if kind == "operation":
        asked = operation.request(
            operation_id=aggregate_id, account_id="a", accounts=["a"], action="retry",
            filter=JobQuery(status=["Failed"]), dry_run=False, matched=1, job_ids=["j1"],
        )  # fmt: skip
        return asked, [operation.OperationJobDone(index=0, job_id="j1")]
    if kind == "feed":
        scope = feed.FeedScope("batch", aggregate_id)
        return feed.issue(scope, "a", "feed_one"), feed.issue(scope, "a", "feed_two")
    if kind == "subscription":
        made = subscription.SubscriptionCreated(
            subscription_id=aggregate_id, account_id="a", url="http://m/feed.xml",
            schedule=subscription.Schedule(interval=300, max_items=5),
        )  # fmt: skip
        return [made], [subscription.SubscriptionPaused()]
    if kind == "archive":
        return archive.remove(aggregate_id, "youtube a"), archive.remove(aggregate_id, "vimeo b")
    assert kind == "node"
    started = node.NodeStarted(
        node_id=aggregate_id, hostname="h", ip="127.0.0.1", role="worker", tags=[],
        capabilities=_CAPS, concurrency={},
    )  # fmt: skip
    return [started], [node.NodeStopped(node_id=aggregate_id)]


AGGREGATES: list[Aggregate[Any]] = [
    job.AGGREGATE,
    batch.AGGREGATE,
    task.AGGREGATE,
    viewer.AGGREGATE,
    account.AGGREGATE,
    storage_config.AGGREGATE,
    account_policy.AGGREGATE,
    cluster_config.AGGREGATE,
    node.AGGREGATE,
    operation.AGGREGATE,
    feed.AGGREGATE,
    subscription.AGGREGATE,
    archive.AGGREGATE,
]


@pytest.mark.parametrize("aggregate", AGGREGATES, ids=lambda a: a.name)
async def test_as_of_answers_every_aggregate_as_the_log_held_it(
    own_store: EventStore, aggregate: Aggregate[Any]
) -> None:
    repo = Repository(own_store, aggregate)
    aggregate_id = uuid.uuid4().hex
    first, later = _history(aggregate.name, aggregate_id)
    stream = repo.stream_id(aggregate_id)
    await own_store.append(stream, [NewEvent(e, META) for e in first], 0)
    await own_store.append(stream, [NewEvent(e, META) for e in later], len(first))
    recorded = await own_store.read_stream(stream)
    created = recorded[len(first) - 1]

    then = await repo.load(aggregate_id, as_of=created.position)
    by_time = await repo.load(aggregate_id, as_of=created.recorded_at)
    now = await repo.load(aggregate_id)

    assert then == by_time == aggregate.fold(steps(recorded[: len(first)]))
    assert now == aggregate.fold(steps(recorded))
    assert then != now
    assert await repo.load(aggregate_id, as_of=created.position - 1) is None


@pytest.mark.parametrize("aggregate", AGGREGATES, ids=lambda a: a.name)
async def test_a_command_returns_the_state_a_later_read_finds(
    own_store: EventStore, aggregate: Aggregate[Any]
) -> None:
    repo = Repository(own_store, aggregate)
    aggregate_id = uuid.uuid4().hex
    first, later = _history(aggregate.name, aggregate_id)
    await own_store.append(repo.stream_id(aggregate_id), [NewEvent(e, META) for e in first], 0)

    state, appended = await repo.execute(aggregate_id, lambda _: later, META)

    assert appended is not None and appended.version == len(first) + len(later)
    assert state == await repo.load(aggregate_id)  # the recorded times included


async def test_a_batch_starts_with_its_held_jobs_in_one_unit_of_work(
    own_store: EventStore,
) -> None:
    batch_id, held, running = (uuid.uuid4().hex for _ in range(3))
    for job_id, paused in ((held, True), (running, False)):
        created = job.create(
            job_id=job_id, account_id="a", url="http://m/a", options=job.JobOptions(), held=paused
        )
        await own_store.append(job.stream_id(job_id), [NewEvent(e, META) for e in created], 0)
    made = batch.BatchCreated(
        batch_id=batch_id, account_id="a", kind="bulk", job_ids=[held, running], paused=True
    )
    await own_store.append(batch.stream_id(batch_id), [NewEvent(made, META)], 0)

    released = await start_batch(own_store, batch_id, META)

    assert [j.job_id for j in released] == [held]
    started = await batches(own_store).load(batch_id)
    assert started is not None and started.status == "processing"
    now_held = await jobs(own_store).load(held)
    assert now_held is not None and not now_held.held
    with pytest.raises(DomainError):  # started already: nothing more is appended
        await start_batch(own_store, batch_id, META)
    assert len(await own_store.read_stream(batch.stream_id(batch_id))) == 2


async def test_a_unit_of_work_that_lost_a_race_is_decided_again_on_what_the_other_left(
    own_store: EventStore,
) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    for job_id in (first, second):
        created = job.create(
            job_id=job_id, account_id="a", url="http://m/a", options=job.JobOptions(), held=True
        )
        await own_store.append(job.stream_id(job_id), [NewEvent(e, META) for e in created], 0)
    repo = jobs(own_store)
    seen: list[int] = []

    async def release_both(unit: UnitOfWork) -> None:
        states = [await unit.load(repo, job_id) for job_id in (first, second)]
        seen.append(states[1].version)
        if len(seen) == 1:  # another writer renames the second job after our read
            await own_store.append(
                job.stream_id(second), [NewEvent(job.JobRenamed(filename="x.mp4"), META)], 1
            )
        for s in states:
            unit.record(repo, s.job_id, job.release(s))

    await execute_many(own_store, release_both, META)

    assert seen == [1, 2]
    for job_id in (first, second):
        state = await repo.load(job_id)
        assert state is not None and not state.held


async def test_a_retry_after_a_lost_answer_does_not_append_twice(own_store: EventStore) -> None:
    case = CASES[0]  # the job
    aggregate_id = await _created(own_store, case)
    calls: list[str] = []

    async def answer_lost_once(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """A database that committed the first try but whose answer never came back."""
        calls.append(what)
        if len(calls) == 2:  # the append (the first call was the read)
            await call()
        return await call()

    repo = replace(case.repository(own_store), patience=answer_lost_once)
    state, appended = await repo.execute(aggregate_id, case.ours, META)

    assert len(await own_store.read_stream(repo.stream_id(aggregate_id))) == 2
    assert appended is not None and appended.version == 2
    assert state == await case.repository(own_store).load(aggregate_id)


async def test_a_recorded_fact_lands_where_the_stream_ends_whoever_wrote_before(
    own_store: EventStore,
) -> None:
    node_id = uuid.uuid4().hex
    nodes = node_store.nodes(own_store)
    await nodes.record(node_id, [node.NodeStopped(node_id=node_id)], META)
    await own_store.append(
        node.stream_id(node_id), [NewEvent(node.NodeRemoved(node_id=node_id))], 1
    )

    removed_again = await nodes.record(node_id, [node.NodeRemoved(node_id=node_id)], META)

    assert removed_again.version == 3
    state = await nodes.load(node_id)
    assert state is not None and state.removed_at is not None and state.version == 3


async def test_a_recorded_batch_lands_whole_or_not_at_all(own_store: EventStore) -> None:
    node_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    beat = StreamAppend(node.stream_id(node_id), [NewEvent(node.NodeStopped(node_id=node_id))])
    stale = StreamAppend(job.stream_id(job_id), [NewEvent(job.JobReleased())], 3)

    with pytest.raises(ConcurrencyError):
        await record_many(own_store, [beat, stale])
    assert await own_store.read_stream(node.stream_id(node_id)) == []

    [landed] = await record_many(own_store, [beat], durable=False)
    assert landed.version == 1


async def test_a_unit_of_work_decides_on_the_states_it_was_given_at_their_versions(
    own_store: EventStore,
) -> None:
    case = CASES[0]  # the job
    job_id = await _created(own_store, case)
    repo = jobs(own_store)
    read = await repo.read(job_id)
    assert read.state is not None
    await own_store.append(
        repo.stream_id(job_id), [NewEvent(e) for e in case.theirs(read.state)], 1
    )

    async def release(unit: UnitOfWork) -> None:
        state = unit.know(repo, job_id, read)  # read before the other writer's event
        unit.record(repo, job_id, case.ours(state))

    with pytest.raises(ChangingTooFast):
        await execute_many(own_store, release, META, tries=1)
    assert len(await own_store.read_stream(repo.stream_id(job_id))) == 2


async def test_a_feed_read_from_its_last_event_is_the_fold_of_its_whole_stream(
    own_store: EventStore,
) -> None:
    scope = feed.FeedScope("batch", uuid.uuid4().hex)
    repo = feeds(own_store)
    assert await repo.load(scope.feed_id) is None
    for n in range(3):  # opened, then rotated twice
        await repo.execute(scope.feed_id, lambda _, n=n: feed.issue(scope, "a", f"feed_{n}"), META)
    whole = Repository(own_store, feed.AGGREGATE)
    rotated = await repo.load(scope.feed_id)
    assert rotated == await whole.load(scope.feed_id)
    assert rotated is not None and rotated.token_hash == feed.hash_token("feed_2")
    await repo.execute(scope.feed_id, lambda state: feed.revoke(state, scope, "a"), META)
    closed = await repo.load(scope.feed_id)
    assert closed == await whole.load(scope.feed_id)
    assert closed is not None and not closed.open
