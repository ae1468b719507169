"""The PostgreSQL event store: one append-only table, optimistic concurrency, commit-ordered reads.

Subscribers read in `(tx, position)` order and only below the oldest transaction still running
(`pg_snapshot_xmin`), so an event whose transaction commits late is never skipped: a plain
`position >` read would step past it while it was still invisible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from spool.adapters import event_partitions

# Importing the aggregates registers every event type this store decodes.
from spool.domain import (  # noqa: F401
    account,
    archive,
    batch,
    cluster_config,
    feed,
    idempotency,
    job,
    node,
    operation,
    storage_config,
    subscription,
    task,
    viewer,
)
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, EventRegistry, Metadata, NewEvent, RecordedEvent, registry

log = logging.getLogger("spool.events")

NOTIFY_CHANNEL = "spool_events"

_encode = msgspec.json.Encoder().encode
_decode_metadata = msgspec.json.Decoder(Metadata).decode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


class Checkpoint(NamedTuple):
    """A place in the global order: the last `(tx, position)` a reader has seen."""

    tx: int = 0
    position: int = 0


ORIGIN = Checkpoint()
"""Before the first event."""


class StreamAppend(NamedTuple):
    """One stream's share of a batched append."""

    stream_id: str
    events: Sequence[NewEvent]
    expected_version: int | None = None


class Batch(NamedTuple):
    """Events read in commit order, and how far the reader has now seen the log."""

    events: list[RecordedEvent]
    horizon: Checkpoint
    """Every event of the asked types up to here is in `events` or before the read's start."""


class AppendResult(NamedTuple):
    """Where an append's last event landed; `checkpoint` is where a reader is once past it."""

    stream_id: str
    version: int
    position: int
    tx: int
    recorded_at: tuple[datetime, ...] = ()
    """When each event of the stream in this append was recorded, in version order (so a
    writer folds what it appended onto the state it decided on, without reading it back)."""

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tx, self.position)


# The NOTIFY's payload: `<tx>:<types>`, the appending transaction's id and the distinct event
# types appended, comma-separated (`wake_payload`, `parse_wake`). A follower wakes only the
# readers of those types (a heartbeat wakes the `nodes` projection, not all of them), and knows
# from the id whether its reads could see them yet (adapters/subscription.py).
_TYPES_OF = "array_to_string(ARRAY(SELECT DISTINCT t FROM unnest({}::text[]) AS t), ',')"

_WAKE_CTE = (
    f", wake AS (SELECT pg_notify('{NOTIFY_CHANNEL}', "
    f"pg_current_xact_id()::text || ':' || {_TYPES_OF}))"
)


def wake_payload(tx: int, types: Iterable[str]) -> str:
    """The NOTIFY payload for events of `types` appended by transaction `tx`."""
    return f"{tx}:{','.join(sorted(set(types)))}"


def parse_wake(payload: str) -> tuple[int | None, frozenset[str]]:
    """(transaction id, event types) of a NOTIFY payload; an empty payload names neither (a
    wake-up for every type), one without an id (`JobCreated,StageStarted`) only types."""
    tx, sep, types = payload.rpartition(":")
    named = frozenset(t for t in types.split(",") if t)
    return (int(tx) if sep and tx.isdigit() else None), named


def _append_one(*, notify: bool, durable: bool = True) -> str:
    wake = _WAKE_CTE.format("$2") if notify else ""
    # As `_append_many`'s `commit_mode`: this transaction alone commits without the flush.
    fleeting = (
        ""
        if durable
        else (", commit_mode AS (SELECT set_config('synchronous_commit', 'off', true))")
    )
    return f"""
WITH head AS (
    SELECT coalesce(max(version), 0) AS v FROM events WHERE stream_id = $1
){wake}{fleeting}
INSERT INTO events (stream_id, version, type, schema_version, data, metadata)
SELECT $1, head.v + e.n, e.type, e.sv, e.data, e.meta
FROM head{", wake" if notify else ""}{"" if durable else ", commit_mode"},
     unnest($2::text[], $3::int2[], $4::jsonb[], $5::jsonb[])
         WITH ORDINALITY AS e(type, sv, data, meta, n)
WHERE $6::int IS NULL OR head.v = $6::int
RETURNING version, position, tx::text::bigint AS tx, recorded_at
"""


# An append in a caller's transaction NOTIFYs in it (delivered at its commit); one of the
# store's own NOTIFYs after its commit, in a statement of its own. A NOTIFY in a committing
# transaction takes a lock for the whole server until the commit is flushed, which made every
# appender on the server wait in line for the others' fsyncs.
_APPEND_ONE = _append_one(notify=True)
_APPEND_ONE_QUIET = _append_one(notify=False)
# Without the wait for its flush, so its NOTIFY's lock is held for no fsync: sent within it.
_APPEND_ONE_FLEETING = _append_one(notify=True, durable=False)
_WAKE = "SELECT pg_notify($1, $2)"

_HEADS = """
SELECT s.stream_id, coalesce((SELECT max(version) FROM events e WHERE e.stream_id = s.stream_id), 0)
FROM unnest($1::text[]) AS s(stream_id)
"""


# One statement, hence one round trip and (outside a caller's transaction) its own transaction:
# the heads are read, every expected version checked (`before`: events of the same stream
# earlier in the batch), and the rows inserted at head + n, in the order given (ORDINALITY:
# positions follow versions), or none at all. `commit_mode` may turn off the wait for the WAL
# flush for this transaction alone (set_config's is_local), for `durable=False`.
def _append_many(*, notify: bool) -> str:
    wake = _WAKE_CTE.format("$7") if notify else ""
    return f"""
WITH heads AS (
    SELECT s.stream_id,
           coalesce((SELECT max(version) FROM events e WHERE e.stream_id = s.stream_id), 0) AS v
    FROM unnest($1::text[]) AS s(stream_id)
), checked AS (
    SELECT coalesce(bool_and(c.expected IS NULL OR c.expected = h.v + c.before), true) AS ok
    FROM unnest($2::text[], $3::int4[], $4::int4[]) AS c(stream_id, expected, before)
    JOIN heads h ON h.stream_id = c.stream_id
), commit_mode AS (
    SELECT set_config(
        'synchronous_commit',
        CASE WHEN $11::bool THEN current_setting('synchronous_commit') ELSE 'off' END,
        true
    )
){wake}
INSERT INTO events (stream_id, version, type, schema_version, data, metadata)
SELECT e.stream_id, h.v + e.n, e.type, e.sv, e.data, e.meta
FROM checked, commit_mode{", wake" if notify else ""},
     unnest($5::text[], $6::int4[], $7::text[], $8::int2[], $9::jsonb[], $10::jsonb[])
         WITH ORDINALITY AS e(stream_id, n, type, sv, data, meta, ord)
     JOIN heads h ON h.stream_id = e.stream_id
WHERE checked.ok
ORDER BY e.ord
RETURNING stream_id, version, position, tx::text::bigint AS tx, recorded_at
"""


_APPEND_MANY = _append_many(notify=True)
_APPEND_MANY_QUIET = _append_many(notify=False)

_COLUMNS = (
    "position, tx::text::bigint, stream_id, version, type, schema_version, data, metadata, "
    "recorded_at"
)

EVENT_COLUMNS = _COLUMNS
"""The columns `EventStore.decode` takes, in its order, for queries joined to other tables."""

_READ_STREAM = f"""
SELECT {_COLUMNS} FROM events
WHERE stream_id = $1 AND version >= $2 AND ($3::bigint IS NULL OR position <= $3::bigint)
ORDER BY version LIMIT $4
"""

_READ_FIRSTS = f"""
SELECT {_COLUMNS} FROM events WHERE stream_id = ANY($1::text[]) AND version = 1
"""

_READ_STREAMS = f"""
SELECT {_COLUMNS} FROM events
WHERE stream_id = ANY($1::text[]) AND (tx, position) <= ($2::text::xid8, $3::bigint)
ORDER BY stream_id, version
"""

_READ_ALL = f"""
SELECT {_COLUMNS} FROM events
WHERE (tx, position) > ($1::text::xid8, $2::bigint)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
  AND ($4::text[] IS NULL OR type = ANY($4::text[]))
ORDER BY events.tx, events.position  -- the table's columns (and index), not the bigint alias
LIMIT $3
"""

# The same read, plus one marker row (stream_id NULL): the last readable event of any type. In
# one statement both halves see one snapshot, so a reader that got fewer rows than it asked for
# has seen every event of its types up to that marker, and may move its checkpoint there.
_READ_BATCH = f"""
(SELECT {_COLUMNS} FROM events
 WHERE (tx, position) > ($1::text::xid8, $2::bigint)
   AND tx < pg_snapshot_xmin(pg_current_snapshot())
   AND ($4::text[] IS NULL OR type = ANY($4::text[]))
 ORDER BY events.tx, events.position
 LIMIT $3)
UNION ALL
(SELECT position, tx::text::bigint, NULL::text, NULL::int, NULL::text, NULL::int2, NULL::jsonb,
        NULL::jsonb, NULL::timestamptz
 FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.tx DESC, events.position DESC
 LIMIT 1)
"""

# The hits come from `events_correlation_idx` (partial: the predicate repeats its condition)
# as an array first, then each row by its key: as one join the planner, unable to tell how rare
# a correlation id is, may walk the whole log in position order instead.
_OWNER = """(CASE WHEN starts_with(events.stream_id, 'account-')
    THEN substr(events.stream_id, 9)
    ELSE (SELECT origin.data->>'account_id' FROM events AS origin
          WHERE origin.stream_id = events.stream_id AND origin.version = 1) END)"""
"""The account a stream belongs to: an account's own stream, or what the stream's first event
names (a job's, batch's, task's or idempotency record's `account_id`); NULL for the cluster's
own streams (nodes, viewers, config)."""

_READ_CORRELATED = f"""
SELECT {_COLUMNS} FROM events
WHERE position = ANY(ARRAY(
    SELECT position FROM events
    WHERE (metadata->>'correlation_id') = ANY($1::text[])
      AND (metadata->>'correlation_id') IS NOT NULL
      AND position > $2
))
  AND ($4::text IS NULL OR stream_id = $5::text OR NOT starts_with(stream_id, $4::text))
  AND ($6::text IS NULL OR stream_id = $5::text OR {_OWNER} = $6::text
       OR ($7::bool AND {_OWNER} IS NULL))
ORDER BY position
LIMIT $3
"""

_LOCK_STREAM = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

_UNVERSIONED_TRIES = 10

_READABLE_HEAD = """
SELECT tx::text::bigint AS tx, position FROM events
WHERE tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.tx DESC, events.position DESC LIMIT 1
"""

_STREAM_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1"


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pass jsonb through as raw bytes: msgspec encodes and decodes it, not the driver."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda b: b"\x01" + b,
        decoder=lambda b: b[1:],
        format="binary",
    )


class EventDecoder:
    """Recorded events from rows of `EVENT_COLUMNS`, each upcast to its type's current schema."""

    def __init__(self, types: EventRegistry = registry) -> None:
        self.types = types
        # A Decoder made once per type decodes faster than msgspec.json.decode(type=...).
        self._decoders: dict[str, tuple[type[Event], msgspec.json.Decoder[Any]]] = {}

    def decode(self, row: Sequence[Any]) -> RecordedEvent:
        """A recorded event from a row of `EVENT_COLUMNS`."""
        name: str = row[4]
        stored_version: int = row[5]
        known = self._decoders.get(name)
        if known is None:
            cls = self.types.cls(name)
            known = self._decoders[name] = (cls, msgspec.json.Decoder(cls))
        cls, decoder = known
        if stored_version == cls.schema_version:
            data: Event = decoder.decode(row[6])
        else:
            upcast = self.types.upcast(name, stored_version, _decode_dict(row[6]))
            data = msgspec.convert(upcast, cls)
        return RecordedEvent(
            position=row[0],
            tx=row[1],
            stream_id=row[2],
            version=row[3],
            type=name,
            schema_version=cls.schema_version,
            data=data,
            metadata=_decode_metadata(row[7]),
            recorded_at=row[8],
        )


DECODER = EventDecoder()
"""The decoder of every registered event type: a store's, and that of a reader without one."""

# Each stream's events up to a version of its own, for a reader that holds a connection but no
# store: a projection folding a stream again under a stale snapshot row
# (adapters/read_models/state_projection.py).
_READ_PREFIXES = f"""
SELECT e.* FROM unnest($1::text[], $2::int[]) AS h(stream_id, version)
CROSS JOIN LATERAL (
    SELECT {_COLUMNS} FROM events
    WHERE events.stream_id = h.stream_id AND events.version <= h.version
) AS e
ORDER BY e.stream_id, e.version
"""


async def read_prefixes(
    conn: asyncpg.Connection, versions: Mapping[str, int]
) -> dict[str, list[RecordedEvent]]:
    """Each stream's events up to its version in `versions`, in version order (streams without
    such events left out)."""
    streams = list(versions)
    found: dict[str, list[RecordedEvent]] = {}
    for row in await conn.fetch(_READ_PREFIXES, streams, [versions[s] for s in streams]):
        e = DECODER.decode(row)
        found.setdefault(e.stream_id, []).append(e)
    return found


class EventStore:
    """Append to and read from the `events` table through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, types: EventRegistry = registry) -> None:
        self.pool = pool
        self.types = types
        self._decoder = DECODER if types is registry else EventDecoder(types)
        self._heartbeat_days: set[date] = set()
        """Days whose heartbeat partition this store has seen attached."""
        self._waker = Waker(pool)

    async def _partitions_for(self, stream_ids: Iterable[str]) -> None:
        """Attach the partition of any heartbeat day not seen yet, before rows go to it."""
        days = event_partitions.heartbeat_days(stream_ids) - self._heartbeat_days
        if days:
            await event_partitions.ensure_days(self.pool, days)
            self._heartbeat_days |= days

    # -- writing -------------------------------------------------------------------------

    def _columns(
        self, events: Sequence[NewEvent]
    ) -> tuple[list[str], list[int], list[bytes], list[bytes]]:
        names, versions, data, meta = [], [], [], []
        for e in events:
            cls = type(e.event)
            names.append(cls.__name__)
            versions.append(cls.schema_version)
            data.append(_encode(e.event))
            meta.append(_encode(e.metadata))
        return names, versions, data, meta

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        conn: asyncpg.Connection | None = None,
        durable: bool = True,
    ) -> AppendResult:
        """Append `events` atomically after `expected_version` (None: wherever the stream ends).

        A stream that moved on raises ConcurrencyError; the caller re-reads and decides again.
        `durable=False` (with an expected version, outside a caller's transaction) commits
        without waiting for the WAL flush, as `append_many` does.
        """
        if not events:
            raise ValueError("append needs at least one event")
        columns = self._columns(events)
        await self._partitions_for([stream_id])
        if not durable and conn is None and expected_version is not None:
            async with self.pool.acquire() as own:
                return await self._insert(
                    own, stream_id, columns, expected_version, _APPEND_ONE_FLEETING
                )
        if conn is not None:
            return await self._insert(conn, stream_id, columns, expected_version, _APPEND_ONE)
        if expected_version is None:
            # "Wherever it ends": queue behind other such writers of this stream instead of
            # racing. A writer with an expected version takes no lock and may still take the
            # head first; then the head is read again, since the caller asked for no version.
            for _ in range(_UNVERSIONED_TRIES - 1):
                try:
                    return await self._append_at_end(stream_id, columns)
                except ConcurrencyError:
                    continue
            return await self._append_at_end(stream_id, columns)
        async with self.pool.acquire() as own:
            result = await self._insert(
                own, stream_id, columns, expected_version, _APPEND_ONE_QUIET
            )
        self._waker.wake(columns[0], result.tx)
        return result

    async def _append_at_end(
        self, stream_id: str, columns: tuple[list[str], list[int], list[bytes], list[bytes]]
    ) -> AppendResult:
        async with self.pool.acquire() as own, own.transaction():
            await own.execute(_LOCK_STREAM, stream_id)
            result = await self._insert(own, stream_id, columns, None, _APPEND_ONE_QUIET)
        self._waker.wake(columns[0], result.tx)
        return result

    async def _insert(
        self,
        db: asyncpg.Connection,
        stream_id: str,
        columns: tuple[list[str], list[int], list[bytes], list[bytes]],
        expected_version: int | None,
        sql: str,
    ) -> AppendResult:
        try:
            rows = await db.fetch(sql, stream_id, *columns, expected_version)
        except asyncpg.UniqueViolationError:
            # Another writer took the same version between our read of the head and insert.
            raise ConcurrencyError(stream_id, expected_version) from None
        if not rows:
            actual = await db.fetchval(_STREAM_VERSION, stream_id)
            raise ConcurrencyError(stream_id, expected_version, actual)
        rows.sort(key=lambda r: r["version"])
        last = rows[-1]
        times = tuple(r["recorded_at"] for r in rows)
        return AppendResult(stream_id, last["version"], last["position"], last["tx"], times)

    async def append_many(
        self,
        appends: Sequence[StreamAppend],
        *,
        conn: asyncpg.Connection | None = None,
        durable: bool = True,
    ) -> list[AppendResult]:
        """Append to many streams in one transaction and one insert: the path for high volume.

        All or nothing: one stream whose head is not its expected version fails the batch.
        `durable=False` commits without waiting for the WAL flush: for facts re-sent every
        second (heartbeats, progress), where a server crash may lose the last fraction of a
        second of them and nothing else. A later durable commit makes them durable too (the WAL
        is flushed in order), so no stream is ever left with a gap.
        """
        await self._partitions_for(a.stream_id for a in appends)
        streams: list[str] = []
        offsets: list[int] = []
        names: list[str] = []
        schema_versions: list[int] = []
        data: list[bytes] = []
        meta: list[bytes] = []
        checks: tuple[list[str], list[int | None], list[int]] = ([], [], [])
        seen: dict[str, int] = {}
        for a in appends:
            before = seen.get(a.stream_id, 0)
            checks[0].append(a.stream_id)
            checks[1].append(a.expected_version)
            checks[2].append(before)
            n, sv, d, m = self._columns(a.events)
            streams.extend([a.stream_id] * len(n))
            offsets.extend(range(before + 1, before + 1 + len(n)))
            seen[a.stream_id] = before + len(n)
            names.extend(n)
            schema_versions.extend(sv)
            data.extend(d)
            meta.extend(m)
        if not names:
            return []
        if conn is None:
            # A commit that waits for no flush holds the NOTIFY's server-wide lock for no fsync:
            # its NOTIFY goes within the statement, one round trip fewer.
            sql = _APPEND_MANY_QUIET if durable else _APPEND_MANY
            async with self.pool.acquire() as own:
                results = await self._insert_many(
                    own, sql, seen, checks, streams, offsets, names, schema_versions, data,
                    meta, durable,
                )  # fmt: skip
            if durable:
                self._waker.wake(names, max(r.tx for r in results))
            return results
        return await self._insert_many(
            conn, _APPEND_MANY, seen, checks, streams, offsets, names, schema_versions, data,
            meta, True,  # in a caller's transaction the caller decides how it commits
        )  # fmt: skip

    async def _insert_many(
        self,
        db: asyncpg.Connection,
        sql: str,
        seen: dict[str, int],
        checks: tuple[list[str], list[int | None], list[int]],
        streams: list[str],
        offsets: list[int],
        names: list[str],
        schema_versions: list[int],
        data: list[bytes],
        meta: list[bytes],
        durable: bool,
    ) -> list[AppendResult]:
        try:
            rows = await db.fetch(
                sql,
                list(seen),
                *checks,
                streams,
                offsets,
                names,
                schema_versions,
                data,
                meta,
                durable,
            )
        except asyncpg.UniqueViolationError as exc:
            # Another writer took a version between our read of a head and our insert.
            raise ConcurrencyError("<batch>", None) from exc
        if not rows:
            heads = dict(await db.fetch(_HEADS, list(seen)))
            for stream_id, expected, before in zip(*checks, strict=True):
                if expected is not None and expected != heads[stream_id] + before:
                    raise ConcurrencyError(stream_id, expected, heads[stream_id] + before)
            raise ConcurrencyError("<batch>", None)  # the heads moved back in line since
        last: dict[str, Any] = {}
        times: dict[str, list[datetime]] = {}
        for r in rows:
            last[r["stream_id"]] = r
            times.setdefault(r["stream_id"], []).append(r["recorded_at"])
        return [
            AppendResult(stream_id, r["version"], r["position"], r["tx"], tuple(times[stream_id]))
            for stream_id, r in last.items()
        ]

    # -- reading -------------------------------------------------------------------------

    def decode(self, row: Sequence[Any]) -> RecordedEvent:
        """A recorded event from a row of `EVENT_COLUMNS` (for reads joined to other tables)."""
        return self._record(row)

    def _record(self, row: Sequence[Any]) -> RecordedEvent:
        return self._decoder.decode(row)

    async def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        up_to_position: int | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """A stream's events from `from_version` on, in version order."""
        rows = await (conn or self.pool).fetch(
            _READ_STREAM, stream_id, from_version, up_to_position, limit
        )
        return [self._record(r) for r in rows]

    async def read_firsts(
        self, stream_ids: Sequence[str], *, conn: asyncpg.Connection | None = None
    ) -> dict[str, RecordedEvent]:
        """The first event of each of `stream_ids` that has one, by stream."""
        rows = await (conn or self.pool).fetch(_READ_FIRSTS, list(stream_ids))
        return {e.stream_id: e for e in map(self._record, rows)}

    async def read_streams(
        self,
        stream_ids: Sequence[str],
        up_to: Checkpoint,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Many streams' events up to `up_to` in the global order, stream by stream by version."""
        rows = await (conn or self.pool).fetch(
            _READ_STREAMS, list(stream_ids), str(up_to.tx), up_to.position
        )
        return [self._record(r) for r in rows]

    async def read_all(
        self,
        after: Checkpoint = ORIGIN,
        limit: int = 1000,
        *,
        types: Collection[str] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events after `after` in commit order, never past a transaction still in flight."""
        rows = await (conn or self.pool).fetch(
            _READ_ALL, str(after.tx), after.position, limit, list(types) if types else None
        )
        return [self._record(r) for r in rows]

    async def read_batch(
        self,
        after: Checkpoint,
        limit: int,
        *,
        types: Collection[str] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> Batch:
        """Like `read_all`, and also how far the read got past events of other types.

        A reader of a few rare types can move its checkpoint over the events it does not
        follow instead of scanning them again at every wake-up.
        """
        rows = await (conn or self.pool).fetch(
            _READ_BATCH, str(after.tx), after.position, limit, list(types) if types else None
        )
        events = [self._record(r) for r in rows if r[2] is not None]
        horizon = checkpoint_of(events[-1]) if events else after
        if len(events) < limit:
            last = next((Checkpoint(r[1], r[0]) for r in rows if r[2] is None), None)
            if last is not None and last > horizon:
                horizon = last
        return Batch(events, horizon)

    async def read_correlated(
        self,
        correlation_ids: Sequence[str],
        *,
        after: int = 0,
        limit: int = 1000,
        leave_out_prefix: str | None = None,
        keep_stream: str | None = None,
        owner: str | None = None,
        unowned_too: bool = False,
    ) -> list[RecordedEvent]:
        """Events of any stream that carry one of `correlation_ids`, in position order.

        Streams starting with `leave_out_prefix` are left out, except `keep_stream` (a job's
        trace keeps its own stream and leaves out the other jobs of the same request). With
        `owner`, only `keep_stream` and the streams of that account are read, and the cluster's
        own streams (no account's) too when `unowned_too`: a correlation id is the client's to
        choose, so another account's requests may carry the same one.
        """
        rows = await self.pool.fetch(
            _READ_CORRELATED,
            list(correlation_ids),
            after,
            limit,
            leave_out_prefix,
            keep_stream,
            owner,
            unowned_too,
        )
        return [self._record(r) for r in rows]

    async def wait_readable(self, at: Checkpoint, within: float = 30.0) -> None:
        """Wait until subscribers can read up to `at`: every older transaction has ended."""
        async with asyncio.timeout(within):
            while not await self.pool.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8", str(at.tx)
            ):
                await asyncio.sleep(0.01)

    async def readable_below(self) -> int:
        """The transaction id below which every transaction has ended: what a read made from
        now on can see (`read_batch` reads below it). No table is read."""
        xmin: int = await self.pool.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        return xmin

    async def readable_head(self) -> Checkpoint:
        """The last event a read made now can see: where a follower that keeps no checkpoint
        starts, to see what is appended from then on."""
        row = await self.pool.fetchrow(_READABLE_HEAD)
        return Checkpoint(row["tx"], row["position"]) if row else Checkpoint()

    async def has_unreadable(self) -> bool:
        """Whether committed events wait behind an older transaction still in flight."""
        found: bool = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events "
            "WHERE tx >= pg_snapshot_xmin(pg_current_snapshot()))"
        )
        return found

    async def stream_version(self, stream_id: str) -> int:
        """The version of a stream's last event; 0 for a stream with none."""
        version: int = await self.pool.fetchval(_STREAM_VERSION, stream_id)
        return version

    async def stream_versions(self, stream_ids: Sequence[str]) -> dict[str, int]:
        """The version of each stream's last event; 0 for a stream with none."""
        return dict(await self.pool.fetch(_HEADS, list(stream_ids)))


class Waker:
    """Sends the NOTIFYs of the store's own appends after their commits (see `_APPEND_ONE`).

    One at a time, off the append's path: the append returns once committed, and the types
    appended while a NOTIFY is on its way go together in the next, so a busy process sends far
    fewer than one per append and an idle one sends each at once. A NOTIFY lost (the database
    went away, the process ended first) costs the followers one poll, never an event.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.pending: set[str] = set()
        self.tx = 0
        """The newest appending transaction among the pending types'."""
        self.sending: asyncio.Task[None] | None = None

    def wake(self, types: Iterable[str], tx: int) -> None:
        """NOTIFY the followers of `types`, appended by transaction `tx`, as soon as the
        previous NOTIFY has gone."""
        self.pending.update(types)
        self.tx = max(self.tx, tx)
        if self.sending is None or self.sending.done():
            self.sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while self.pending:
            types, self.pending, tx, self.tx = self.pending, set(), self.tx, 0
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute(_WAKE, NOTIFY_CHANNEL, wake_payload(tx, types))
            except Exception as exc:  # the pool closing, the database gone: followers poll
                log.debug("NOTIFY of %s not sent: %s", ",".join(sorted(types)), exc)
                self.pending.clear()
                return


def checkpoint_of(event: RecordedEvent) -> Checkpoint:
    """The checkpoint that stands just after `event`."""
    return Checkpoint(event.tx, event.position)


_REFUSED_VALUES = (
    asyncpg.DataError,  # class 22: a value the server cannot take (NUL in jsonb, out of range)
    asyncpg.IntegrityConstraintViolationError,  # class 23: a check the value fails
    asyncpg.ProgramLimitExceededError,  # class 54: a value past a size the server allows
    msgspec.EncodeError,  # a value the JSON encoder cannot write
    ValueError,  # a lone surrogate (UnicodeEncodeError), asyncpg's own argument checks
    TypeError,
    OverflowError,
)


def refused_for_good(exc: BaseException) -> bool:
    """True when an append failed for what it carries, so the same append would fail again.

    The events' content is the cause (the encoder or the server refused a value), not the
    server's state: trying again, or doing the work again to record the same result, cannot
    help. A stream that moved on (ConcurrencyError) is not such a refusal: it is translated
    before this, and means "read and decide again".
    """
    return isinstance(exc, _REFUSED_VALUES)


def refusal_reason(exc: BaseException) -> str:
    """What a refused append says to a user: the server's code and message, never the row.

    The server's DETAIL may quote the whole row (a failed check's "Failing row contains ..."),
    so it stays in the log only.
    """
    if isinstance(exc, asyncpg.PostgresError):
        return f"the database refused it ({exc.sqlstate}: {exc.args[0] if exc.args else exc})"
    return f"it could not be encoded ({type(exc).__name__}: {exc})"
