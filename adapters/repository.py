"""One repository for every aggregate: load a stream's state, and decide on it with a retry.

The unit-of-work rule of docs/architecture.md in one place: load the state, decide, append at
the version read; when another writer got there first, re-read and decide again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeAlias, TypeVar

import asyncpg

from spool.adapters.event_store import AppendResult, EventStore
from spool.adapters.history import AsOf, read_stream_as_of
from spool.domain.aggregate import Aggregate, steps
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, Metadata, NewEvent, RecordedEvent

S = TypeVar("S")

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
"""Reads one aggregate's current state: `(store, aggregate id, executor)`."""


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
    ) -> Executed[S]:
        """Load, decide, append at the version read; on a clash, re-read and decide again.

        Returns the state after the decision (its events folded onto the state read, with the
        times the store recorded them) and where they landed. A missing aggregate (initial state
        None) is not decided on: `Executed(None, None)`. An error raised by `decide` propagates
        and nothing is appended; an empty decision appends nothing and returns the state read.
        With `conn` (in a transaction) the reads and the append run in it, each append under a
        savepoint so that a clash does not abort the caller's transaction. ChangingTooFast
        after `tries` lost races.
        """
        stream_id = self.stream_id(aggregate_id)
        for _ in range(self.tries):
            state, version = await self.read(aggregate_id, conn)
            if state is None:
                state = self.aggregate.initial
            if state is None:
                return Executed(None, None)
            events = decide(state)
            if not events:
                return Executed(state, None)
            new = [NewEvent(e, metadata) for e in events]
            try:
                if conn is None:
                    appended = await self.store.append(stream_id, new, version)
                else:
                    async with conn.transaction():
                        appended = await self.store.append(stream_id, new, version, conn=conn)
            except ConcurrencyError:
                continue  # another writer landed meanwhile: decide again on what it left
            return Executed(self.after(state, version, events, appended), appended)
        raise ChangingTooFast(stream_id)

    def after(
        self, state: S | None, version: int, events: Sequence[Event], appended: AppendResult
    ) -> S | None:
        """`state` (read at `version`) with `events`, just appended, folded on."""
        evolve = self.aggregate.evolve
        for n, (ev, at) in enumerate(zip(events, appended.recorded_at, strict=True), 1):
            state = evolve(state, ev, at, version + n)
        return state
