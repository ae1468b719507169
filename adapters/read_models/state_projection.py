"""One row per stream, each the fold of its stream: the algorithm the jobs, tasks and batches
read models share (`StateProjection`), and the row shape jobs and tasks share (`StateRows`:
the whole folded state as jsonb plus columns taken from it).

A batch of events is applied by loading the stored state of every stream it continues, folding
the new events onto those states with the aggregate's `evolve`, and writing the rows that
changed. `row(state, at)` is what a state's row holds: `reactors/verify.py` folds a stream from
the log and compares that with the stored row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.event_store import EVENT_COLUMNS, Checkpoint, read_prefixes
from spool.domain.aggregate import Aggregate, steps
from spool.domain.events import Event, RecordedEvent


class Versioned(Protocol):
    """A folded state: it knows the version of the last event it applied."""

    @property
    def version(self) -> int: ...


S = TypeVar("S", bound=Versioned)

Row = dict[str, Any]
"""A row's columns by name (its key column left out)."""

Evolve = Callable[[S | None, Event, datetime, int], S]
"""An aggregate's `evolve(state, event, recorded_at, version)`."""

_json = msgspec.json.Encoder()


def plain(value: Any) -> Any:
    """A value as JSON carries it, so a fold and a jsonb column compare like for like."""
    return msgspec.json.decode(_json.encode(value))


class Stored(NamedTuple, Generic[S]):
    """A stream's state and when its last event was recorded."""

    state: S
    at: datetime


class Rows(Protocol[S]):
    """How a state projection's rows are read, written and shown."""

    table: sa.Table
    key: str
    """The table's key column: the stream id without its prefix."""
    columns: tuple[str, ...]
    """The columns `row` gives, in table order."""
    json_columns: frozenset[str]

    async def load(self, conn: asyncpg.Connection, keys: list[str]) -> dict[str, Stored[S]]:
        """The stored rows of `keys` (those that have one)."""

    async def write(
        self, conn: asyncpg.Connection, changed: dict[str, Stored[S]], stored: Collection[str]
    ) -> None:
        """Write the rows of `changed`; `stored` are the keys that already had a row."""

    def row(self, state: S, at: datetime) -> Row:
        """The row a state gives, `at` being when its stream's last event was recorded."""


class Applied(NamedTuple, Generic[S]):
    """What applying a batch did: every state it loaded or changed, which it changed, which
    had a row, and what `watch` said of each changed stream before the batch."""

    states: dict[str, Stored[S]]
    changed: set[str]
    stored: set[str]
    before: dict[str, object]

    def changed_states(self) -> dict[str, Stored[S]]:
        return {k: self.states[k] for k in self.changed}


class StateProjection(Generic[S]):
    """A read model with one row per stream of one aggregate, each the fold of its stream."""

    def __init__(
        self,
        *,
        name: str,
        stream: str,
        event_types: frozenset[str],
        evolve: Evolve[S],
        rows: Rows[S],
        watch: Callable[[S], object] | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        """The prefix of the aggregate's stream ids (`job-`)."""
        self.event_types = event_types
        self.evolve = evolve
        self.rows = rows
        self.tables: Sequence[sa.Table] = (rows.table,)
        self.watch = watch
        """What a caller wants compared before and after a batch (`Applied.before`)."""

    def key(self, stream_id: str) -> str:
        return stream_id.removeprefix(self.stream)

    def fold(self, events: Sequence[RecordedEvent]) -> Row | None:
        """The row one whole stream folds to (None for no events)."""
        state: S | None = None
        for e in events:
            state = self.evolve(state, e.data, e.recorded_at, e.version)
        return None if state is None else self.rows.row(state, events[-1].recorded_at)

    async def fold_onto(
        self,
        conn: asyncpg.Connection,
        events: Sequence[RecordedEvent],
        also: Collection[str] = (),
    ) -> Applied[S]:
        """Fold `events` (of this aggregate's streams) onto the stored states; `also`: keys to
        load even without events of theirs."""
        # A stream whose first event here is its version 1 is new: nothing to load.
        first: dict[str, int] = {}
        for e in events:
            first.setdefault(self.key(e.stream_id), e.version)
        load = [k for k, version in first.items() if version > 1]
        load += [k for k in also if k not in first]
        states = await self.rows.load(conn, load) if load else {}
        stored = set(states)
        changed: set[str] = set()
        before: dict[str, object] = {}
        watch, evolve = self.watch, self.evolve
        for e in events:
            key = self.key(e.stream_id)
            current = states.get(key)
            if current is not None and e.version <= current.state.version:
                continue  # already applied (a rebuild overlapping the live runner)
            if key not in changed:
                changed.add(key)
                if watch is not None:
                    # Taken now: an aggregate may evolve its state in place.
                    before[key] = None if current is None else watch(current.state)
            state = evolve(
                None if current is None else current.state, e.data, e.recorded_at, e.version
            )
            states[key] = Stored(state, e.recorded_at)
        return Applied(states, changed, stored, before)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        applied = await self.fold_onto(conn, events)
        if applied.changed:
            await self.rows.write(conn, applied.changed_states(), applied.stored)

    # -- what `reactors/verify.py` compares with the fold ------------------------------------

    async def stored(self, conn: asyncpg.Connection, keys: list[str]) -> dict[str, Row]:
        """The stored rows of `keys` as `fold` gives a row (its columns, jsonb decoded), by key;
        columns a row has beyond those (for reporting) are left out."""
        rows, json_columns = self.rows, self.rows.json_columns
        found = await conn.fetch(
            f"SELECT {rows.key}, {', '.join(rows.columns)} FROM {rows.table.name} "
            f"WHERE {rows.key} = ANY($1::text[])",
            keys,
        )
        return {
            r[0]: {
                c: msgspec.json.decode(v) if c in json_columns and v is not None else v
                for c, v in list(r.items())[1:]
            }
            for r in found
        }

    async def without_stream(
        self, conn: asyncpg.Connection, at: Checkpoint, page: int
    ) -> AsyncIterator[list[str]]:
        """The keys of rows whose stream had not begun by `at` (or never did), `page` at a time
        (in the caller's transaction: a cursor)."""
        rows = self.rows
        cursor = await conn.cursor(
            f"SELECT {rows.key} FROM {rows.table.name} t WHERE NOT EXISTS ("
            f"SELECT 1 FROM events e WHERE e.stream_id = $1 || t.{rows.key} AND e.version = 1 "
            "AND (e.tx, e.position) <= ($2::text::xid8, $3::bigint))",
            self.stream,
            str(at.tx),
            at.position,
        )
        while found := await cursor.fetch(page):
            yield [r[0] for r in found]


@dataclass(frozen=True)
class Field:
    """One column of a `StateRows` table: where in the folded state its value is."""

    column: str
    path: tuple[str, ...]
    """Attributes from the state to the value (the same names as its JSON keys); () for the
    whole state."""
    sql_type: str = "text"
    """`text`, `int`, `float8`, `timestamptz` or `jsonb`."""
    default: int | None = None
    """Written when the state has no value (msgspec leaves out a default)."""
    fixed: bool = False
    """Set when the stream begins: an update leaves it."""
    computed: bool = False
    """Not in the state's JSON (a property): sent beside it as a column of its own."""

    def value(self, state: object) -> Any:
        value = state
        for name in self.path:
            if value is None:
                break
            value = getattr(value, name)
        if value is None:
            return self.default
        return plain(value) if self.sql_type == "jsonb" else value


class RowAndTail(NamedTuple, Generic[S]):
    """A stream's row as a snapshot and the events its stream holds after it."""

    state: S | None
    """The row's state; None without a row of this code's snapshot version."""
    tail: list[Sequence[Any]]
    """The later events as rows of `EVENT_COLUMNS` (`EventStore.decode` reads them)."""


class StateRows(Generic[S]):
    """Rows that keep the whole folded state (jsonb `state`) and columns taken from it.

    One jsonb array goes in and SQL extracts the columns: asyncpg encodes an array element by
    element in Python, so one array per column would cost that many times more.

    With `snapshot` (the aggregate, for a table with a `snapshot_version` column) every row
    written is stamped with the aggregate's `snapshot_version`, and a row stamped otherwise
    (written by a release whose state had another shape) is not loaded: its stream is folded
    again up to the row's version instead, and the next write replaces it.
    """

    def __init__(
        self,
        table: sa.Table,
        key: Field,
        fields: Sequence[Field],
        state: type[S],
        snapshot: Aggregate[S] | None = None,
    ):
        self.table = table
        self.snapshot = snapshot
        self.key = key.column
        self.fields = tuple(fields)
        self.columns = tuple(f.column for f in self.fields)
        self.json_columns = frozenset(f.column for f in self.fields if f.sql_type == "jsonb")
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(state).decode
        self._computed = [f for f in (key, *self.fields) if f.computed]
        every = (key, *self.fields)
        names = [f.column for f in every]
        values = [self._expression(f) for f in every]
        updated = [f.column for f in self.fields if not f.fixed]
        if snapshot is not None:
            # Written by this code, not left to the column's default: a migration moves the
            # default while an older release may still be writing rows of its own shape.
            names.append("snapshot_version")
            values.append(str(int(snapshot.snapshot_version)))
            updated.append("snapshot_version")
            current = f"r.snapshot_version = {int(snapshot.snapshot_version)}"
        else:
            current = "true"
        computed = "".join(f", ${i}::{f.sql_type}[]" for i, f in enumerate(self._computed, 2))
        aliases = "".join(f", c{i}" for i in range(len(self._computed)))
        self.insert_sql = (
            f"INSERT INTO {table.name} ({', '.join(names)})\n"
            f"SELECT {', '.join(values)}\n"
            f"FROM unnest($1::jsonb[]{computed}) AS t(s{aliases})\n"
        )
        self.upsert_sql = (
            f"{self.insert_sql}ON CONFLICT ({key.column}) DO UPDATE SET "
            f"{', '.join(f'{c} = excluded.{c}' for c in updated)}\n"
            f"WHERE {table.name}.version < excluded.version\n"
        )
        # The row and its stream's events after it in one round trip, for a repository's exact
        # read (adapters/job_store.py, adapters/operation_store.py): at least one row, the state
        # (or NULL) first, each later event in the other columns. A row of another snapshot
        # version is not used: the whole stream comes back instead.
        self._row_and_tail_sql = (
            f"SELECT r.state, t.* FROM (SELECT 1) AS one "
            f"LEFT JOIN {table.name} r ON r.{key.column} = $1 AND {current} "
            f"LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events "
            f"WHERE stream_id = $2 AND version > coalesce(r.version, 0) ORDER BY version) AS t "
            f"ON true ORDER BY t.version"
        )
        self._load_sql = (
            # A join on unnest keeps the index plan even when a cached generic plan was made
            # while the table was empty (a rebuild's shadow table, a fresh install).
            f"SELECT r.{key.column}, r.state, r.updated_at, {current}, r.version "
            f"FROM unnest($1::text[]) AS t({key.column}) JOIN {table.name} r USING ({key.column})"
        )

    def _expression(self, f: Field) -> str:
        if f.computed:
            return f"t.c{self._computed.index(f)}"
        if not f.path:
            return "s"
        inner = "".join(f"->'{p}'" for p in f.path[:-1])
        arrow = "->" if f.sql_type == "jsonb" else "->>"
        sql = f"s{inner}{arrow}'{f.path[-1]}'"
        if f.sql_type not in ("text", "jsonb"):
            sql = f"({sql})::{f.sql_type}"
        return sql if f.default is None else f"coalesce({sql}, {f.default})"

    async def row_and_tail(
        self, executor: asyncpg.Pool | asyncpg.Connection, key: str
    ) -> RowAndTail[S]:
        """The row of `key` as a snapshot (one of this code's snapshot version) and every event
        of its stream after the row's version (all of them without such a row), in order."""
        assert self.snapshot is not None  # a snapshot needs its stream: the aggregate's
        rows = await executor.fetch(self._row_and_tail_sql, key, self.snapshot.stream_id(key))
        state = self._decode(rows[0][0]) if rows[0][0] is not None else None
        return RowAndTail(state, [tuple(r)[1:] for r in rows if r[1] is not None])

    def decode(self, raw: bytes) -> S:
        """A row's `state` column as the state."""
        return self._decode(raw)

    def row(self, state: S, at: datetime) -> Row:
        return {f.column: f.value(state) for f in self.fields}

    async def load(self, conn: asyncpg.Connection, keys: list[str]) -> dict[str, Stored[S]]:
        found: dict[str, Stored[S]] = {}
        stale: dict[str, int] = {}
        for key, state, at, current, version in await conn.fetch(self._load_sql, keys):
            if current:
                found[key] = Stored(self._decode(state), at)
            else:
                stale[key] = version
        if stale:
            found.update(await self._refold(conn, stale))
        return found

    async def _refold(
        self, conn: asyncpg.Connection, stale: dict[str, int]
    ) -> dict[str, Stored[S]]:
        """The states stale rows stand for, folded from their streams up to each row's version
        (the events after it are the caller's to fold)."""
        aggregate = self.snapshot
        assert aggregate is not None  # rows are only stale against a snapshot version
        streams = {aggregate.stream_id(k): k for k in stale}
        folded: dict[str, Stored[S]] = {}
        prefixes = await read_prefixes(conn, {s: stale[k] for s, k in streams.items()})
        for stream, events in prefixes.items():
            state = aggregate.fold(steps(events))
            if state is not None:
                folded[streams[stream]] = Stored(state, events[-1].recorded_at)
        return folded

    def _arguments(self, states: list[S]) -> list[list[Any]]:
        return [[self._encode(s) for s in states]] + [
            [f.value(s) for s in states] for f in self._computed
        ]

    async def write(
        self, conn: asyncpg.Connection, changed: dict[str, Stored[S]], stored: Collection[str]
    ) -> None:
        new = [s.state for k, s in changed.items() if k not in stored]
        known = [s.state for k, s in changed.items() if k in stored]
        if new:
            # Streams without a row are plain inserts: ON CONFLICT's speculative insertion cost
            # a fifth of the jobs' catch-up time. Should a row exist after all (a rebuild
            # overlapping the live runner), the savepoint falls back to the upsert, whose
            # version guard keeps the newer row.
            try:
                async with conn.transaction():
                    await conn.execute(self.insert_sql, *self._arguments(new))
            except asyncpg.UniqueViolationError:
                known += new
        if known:
            await conn.execute(self.upsert_sql, *self._arguments(known))
