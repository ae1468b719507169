"""The `events` table's partitions: heartbeat days, created ahead, detached and attached again.

`events` is partitioned by RANGE on `stream_id` (collation "C", so bounds compare byte-wise):
every stream but heartbeats lives in `events_before_heartbeats` and `events_after_heartbeats`,
and each UTC day of heartbeat streams (`heartbeat-<YYYY-MM-DD>-<node_id>`) in its own partition
`events_heartbeat_<YYYYMMDD>`. There is no default partition: a heartbeat for a day whose
partition is missing fails loudly instead of landing where it could never be archived from, and
partitions can be detached CONCURRENTLY (which a default partition forbids).

A day's partition is made as a plain table and then attached: ATTACH takes only a SHARE UPDATE
EXCLUSIVE lock on `events`, so readers and writers go on, where CREATE TABLE ... PARTITION OF
would queue every query behind a long reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta
from typing import NamedTuple

import asyncpg

from spool.domain import node

_TABLE = re.compile(r"^events_heartbeat_(\d{8})$")

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('spool:event-partitions', 0))"


class DayTable(NamedTuple):
    """A heartbeat day's table, attached to `events` or not (detached, not yet dropped)."""

    day: date
    table: str
    attached: bool
    detach_pending: bool


def table_name(day: date) -> str:
    """The table that holds one UTC day of heartbeats."""
    return f"events_heartbeat_{day:%Y%m%d}"


def bounds(day: date) -> tuple[str, str]:
    """The stream ids a day's partition takes: from its own prefix up to the next day's."""
    return node.heartbeat_stream_id("", day)[:-1], node.heartbeat_stream_id("", day + _DAY)[:-1]


_DAY = timedelta(days=1)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def day_tables(db: asyncpg.Pool | asyncpg.Connection) -> list[DayTable]:
    """Every heartbeat day table in the database, oldest day first."""
    rows = await db.fetch(
        """
        SELECT c.relname, i.inhrelid IS NOT NULL AS attached,
               coalesce(i.inhdetachpending, false) AS pending
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'events'::regclass
        WHERE c.relkind = 'r' AND c.relname ~ '^events_heartbeat_[0-9]{8}$'
        ORDER BY c.relname
        """
    )
    out = []
    for r in rows:
        m = _TABLE.match(r["relname"])
        assert m is not None
        digits = m.group(1)
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        out.append(DayTable(day, r["relname"], r["attached"], r["pending"]))
    return out


async def create_day_table(conn: asyncpg.Connection, day: date) -> str:
    """A plain table shaped like `events` for one day, its bounds checked; not yet attached.

    The CHECK matches the partition bound, so ATTACH need not scan the table to prove it.
    """
    name = table_name(day)
    low, high = bounds(day)
    await conn.execute(
        f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING STORAGE);"
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK "
        f"(stream_id >= {_literal(low)} AND stream_id < {_literal(high)})"
    )
    return name


async def attach_day_table(conn: asyncpg.Connection, day: date) -> None:
    """Attach a day's table to `events` (its indexes and the append-only triggers come along)."""
    name = table_name(day)
    low, high = bounds(day)
    await conn.execute(
        f"ALTER TABLE events ATTACH PARTITION {name} "
        f"FOR VALUES FROM ({_literal(low)}) TO ({_literal(high)})"
    )


async def ensure_days(pool: asyncpg.Pool, days: Iterable[date]) -> None:
    """Make sure each day has an attached heartbeat partition (idempotent, safe to race)."""
    wanted = sorted(set(days))
    if not wanted:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK)
        have = {t.day: t for t in await day_tables(conn)}
        for day in wanted:
            held = have.get(day)
            if held is not None and held.attached:
                continue
            if held is not None:
                raise RuntimeError(
                    f"heartbeats of {day} are being archived (table {held.table} is detached): "
                    "finish `spool events archive` or restore that day first"
                )
            await create_day_table(conn, day)
            await attach_day_table(conn, day)


async def ensure_ahead(pool: asyncpg.Pool, today: date) -> None:
    """Today's and tomorrow's heartbeat partitions, so the first beat after midnight waits on
    nothing."""
    await ensure_days(pool, [today, today + _DAY])


def heartbeat_days(stream_ids: Iterable[str]) -> set[date]:
    """The UTC days of the heartbeat streams among `stream_ids`."""
    return {d for s in stream_ids if (d := node.heartbeat_day(s)) is not None}
