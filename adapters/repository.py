"""One repository for every aggregate: load a stream's state, decide on it with a retry, or
record facts that need no decision.

The unit-of-work rule of docs/architecture.md in one place: a command loads the state, decides,
and appends at the version read; when another writer got there first, it re-reads and decides
again (`execute`, `execute_many`). A fact (a heartbeat, a node's description, a webhook's
answer) is recorded where its stream ends, without a read (`record`, `record_many`). Nothing
else in Spool appends (tests/test_appends.py holds every module to it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

import asyncpg

from spool.adapters.event_store import AppendResult, EventStore, StreamAppend
from spool.adapters.history import AsOf, read_stream_as_of
from spool.domain.aggregate import Aggregate, steps
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, Metadata, NewEvent, RecordedEvent

S = TypeVar("S")
T = TypeVar("T")

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection
"""Where a read runs: the pool, or a caller's connection (which sees its own uncommitted writes)."""


class Loaded(NamedTuple, Generic[S]):
    """A stream's state and the version it was read at (0 and None: no event yet)."""

    state: S | None
    version: int


class Executed(NamedTuple, Generic[S]):
    """The state after a command, and where its events landed (None: nothing was appended)."""

    state: S | None
    appended: AppendResult | None


Loader = Callable[[EventStore, str, Executor], Awaitable[Loaded[S]]]


def folded_on(
    store: EventStore, aggregate: Aggregate[S], state: S | None, tail: Sequence[Sequence[Any]]
) -> S | None:
    """A snapshot row's `state` with its stream's later events (rows of `EVENT_COLUMNS`) folded
    on: what a loader that reads a row and its tail answers, exact however far the row lags."""
    for row in tail:
        e = store.decode(row)
        state = aggregate.evolve(state, e.data, e.recorded_at, e.version)
    return state


"""Reads one aggregate's current state: `(store, aggregate id, executor)`."""


class Patience(Protocol):
    """How a repository makes each read and append: `(what, call)`, awaiting `call()`; a worker
    node's tries it again while the database cannot be reached (reactors/worker/outage.py)."""

    def __call__(self, what: str, call: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def at_once(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Each read and append tried once: an outage is the caller's to answer."""
    return await call()


class ChangingTooFast(ConcurrencyError):
    """Every try of a command lost the race to another writer of the stream."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id, None)


@dataclass(frozen=True)
class Repository(Generic[S]):
    """The one way to read an aggregate and to run a command on it.

    Built from the aggregate's descriptor (`domain.aggregate.Aggregate`: its stream id, fold
    and initial state). `loader`, when given, reads the current state a faster way than folding
    the whole stream (a snapshot row plus the tail); as-of reads always fold from the first
    event. A command on a stream with no event decides on the aggregate's initial state
    (`fold([])`): None refuses (the aggregate must exist), a value (an empty config, an account
    with no keys) lets the first command create the stream.
    """

    store: EventStore
    aggregate: Aggregate[S]
    loader: Loader[S] | None = None
    tries: int = 10
    patience: Patience = at_once

    def stream_id(self, aggregate_id: str) -> str:
        """The stream that holds one aggregate."""
        return self.aggregate.stream_id(aggregate_id)

    def fold(self, events: Sequence[RecordedEvent]) -> S | None:
        """The state after `events`, in version order."""
        return self.aggregate.fold(steps(events))

    async def read(self, aggregate_id: str, conn: asyncpg.Connection | None = None) -> Loaded[S]:
        """The current state and the version it was read at; in `conn` when given."""
        executor: Executor = conn if conn is not None else self.store.pool
        if self.loader is not None:
            return await self.loader(self.store, aggregate_id, executor)
        events = await self.store.read_stream(self.stream_id(aggregate_id), conn=conn)
        if not events:
            return Loaded(None, 0)
        return Loaded(self.fold(events), events[-1].version)

    async def load(self, aggregate_id: str, as_of: AsOf | None = None) -> S | None:
        """The aggregate as it stands now, or as it stood at `as_of`; None if it had no event."""
        if as_of is None:
            return (await self.read(aggregate_id)).state
        events = await read_stream_as_of(self.store, self.stream_id(aggregate_id), as_of)
        return self.fold(events) if events else None

    async def execute(
        self,
        aggregate_id: str,
        decide: Callable[[S], list[Event]],
        metadata: Metadata,
        *,
        conn: asyncpg.Connection | None = None,
        known: Loaded[S] | None = None,
        durable: bool = True,
    ) -> Executed[S]:
        """Load, decide, append at the version read; on a clash, re-read and decide again.

        `known`: a state the caller holds and the version it was read at, decided on first
        instead of a read (a worker node keeps its jobs' states).

        Returns the state after the decision (its events folded onto the state read, with the
        times the store recorded them) and where they landed. A missing aggregate (initial state
        None) is not decided on: `Executed(None, None)`. An error raised by `decide` propagates
        and nothing is appended; an empty decision appends nothing and returns the state read.
        With `conn` (in a transaction) the reads and the append run in it, each append under a
        savepoint so that a clash does not abort the caller's transaction. ChangingTooFast
        after `tries` lost races. `durable=False`: the append commits without waiting for its
        WAL flush (`EventStore.append`).
        """
        stream_id = self.stream_id(aggregate_id)
        for _ in range(self.tries):
            if known is None:
                state, version = await self.patience(
                    stream_id, lambda: self.read(aggregate_id, conn)
                )
            else:
                (state, version), known = known, None
            if state is None:
                state = self.aggregate.initial
            if state is None:
                return Executed(None, None)
            events = decide(state)
            if not events:
                return Executed(state, None)
            try:
                appended = await self._append(stream_id, events, version, metadata, conn, durable)
            except ConcurrencyError:
                continue  # another writer landed meanwhile: decide again on what it left
            return Executed(self.after(state, version, events, appended), appended)
        raise ChangingTooFast(stream_id)

    async def record(
        self,
        aggregate_id: str,
        events: Sequence[Event],
        metadata: Metadata,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append facts where the aggregate's stream ends: no read and no decision; another
        writer only moves where they land.

        For events that stand whatever the stream holds (a node's description, its removal, a
        webhook's answer, an account's policy): other writers' events may land before or after
        them. With `conn`, in the caller's transaction.
        """
        new = [NewEvent(e, metadata) for e in events]
        return await self.store.append(self.stream_id(aggregate_id), new, None, conn=conn)

    async def _append(
        self,
        stream_id: str,
        events: list[Event],
        version: int,
        metadata: Metadata,
        conn: asyncpg.Connection | None,
        durable: bool = True,
    ) -> AppendResult:
        """Append at `version` through `patience`; a try after one whose answer was lost looks
        first whether that one committed, so that nothing is appended twice."""
        new = [NewEvent(e, metadata) for e in events]
        tried = False

        async def attempt() -> AppendResult:
            nonlocal tried
            if tried:
                after = await self.store.read_stream(
                    stream_id, version + 1, limit=len(events), conn=conn
                )
                if [e.data for e in after] == events:
                    return landed(after)  # the lost answer's append: it committed
            tried = True
            if conn is None:
                return await self.store.append(stream_id, new, version, durable=durable)
            async with conn.transaction():
                return await self.store.append(stream_id, new, version, conn=conn)

        return await self.patience(stream_id, attempt)

    def after(
        self, state: S | None, version: int, events: Sequence[Event], appended: AppendResult
    ) -> S | None:
        """`state` (read at `version`) with `events`, just appended, folded on."""
        evolve = self.aggregate.evolve
        for n, (ev, at) in enumerate(zip(events, appended.recorded_at, strict=True), 1):
            state = evolve(state, ev, at, version + n)
        return state


def landed(recorded: Sequence[RecordedEvent]) -> AppendResult:
    """Where recorded events (one append's, in version order) landed."""
    last = recorded[-1]
    times = tuple(e.recorded_at for e in recorded)
    return AppendResult(last.stream_id, last.version, last.position, last.tx, times)


class UnitOfWork:
    """One command over several streams: each stream loaded through its repository, what was
    decided for each recorded, and all appended at the versions read, in one transaction.

    Made and committed by `execute_many`, which decides again on a clash.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._read: dict[str, int] = {}
        self._decided: dict[str, list[Event]] = {}

    async def load(self, repository: Repository[S], aggregate_id: str) -> S | None:
        """The aggregate as it stands (its initial state if it has no event yet)."""
        state, version = await repository.read(aggregate_id)
        self._read[repository.stream_id(aggregate_id)] = version
        return state if state is not None else repository.aggregate.initial

    def know(self, repository: Repository[S], aggregate_id: str, loaded: Loaded[S]) -> S | None:
        """Take a state the caller read (many at once, say) as this unit's read of the aggregate:
        what is recorded for it is appended at `loaded.version`."""
        self._read[repository.stream_id(aggregate_id)] = loaded.version
        return loaded.state if loaded.state is not None else repository.aggregate.initial

    def record(self, repository: Repository[S], aggregate_id: str, events: list[Event]) -> None:
        """Append `events` to an aggregate this unit loaded, at the version it was read at."""
        stream_id = repository.stream_id(aggregate_id)
        if stream_id not in self._read:
            raise ValueError(f"{stream_id} was not loaded in this unit of work")
        self._decided.setdefault(stream_id, []).extend(events)

    async def commit(self, metadata: Metadata) -> list[AppendResult]:
        """Append every decision in one transaction (in the order recorded); nothing if none."""
        appends = [
            StreamAppend(stream_id, [NewEvent(e, metadata) for e in events], self._read[stream_id])
            for stream_id, events in self._decided.items()
            if events
        ]
        return await self.store.append_many(appends) if appends else []


async def execute_many(
    store: EventStore,
    work: Callable[[UnitOfWork], Awaitable[T]],
    metadata: Metadata,
    *,
    tries: int = 10,
) -> T:
    """Run `work` (load, decide, record) on a fresh unit of work and commit it; on a clash,
    run it again on what the other writer left, up to `tries` times (then ChangingTooFast).

    A `DomainError` from `work` propagates and nothing is appended. Returns what `work` did.
    """
    for _ in range(tries):
        unit = UnitOfWork(store)
        result = await work(unit)
        try:
            await unit.commit(metadata)
        except ConcurrencyError:
            continue
        return result
    raise ChangingTooFast("<several streams>")


async def record_many(
    store: EventStore,
    appends: Sequence[StreamAppend],
    *,
    conn: asyncpg.Connection | None = None,
    durable: bool = True,
) -> list[AppendResult]:
    """Append several streams' parts in one transaction, all or nothing; nothing if none.

    A part without an expected version is a fact, appended where its stream ends. One with it is
    written by the one writer that holds that stream's version without reading it (a viewer
    session after what it wrote, a node's progress at the version it knows, a new stream at 0):
    a stream that moved refuses the whole batch with ConcurrencyError, and the caller, which
    knows what it holds, says what follows (no retry here: there is nothing to decide again).
    `durable=False` for facts re-sent every second (`EventStore.append_many`); `conn` appends in
    the caller's transaction.
    """
    if not appends:
        return []
    return await store.append_many(appends, conn=conn, durable=durable)
