"""The `usage_daily` table: per account and UTC day, job activity and the bytes moved.

Counters are of events, on the day each was recorded: `jobs_created` (JobCreated),
`jobs_completed` (JobCompleted), `jobs_failed` (JobFailed), `jobs_cancelled` (JobCancelled);
a job that fails, is retried and then completes counts once as failed and once as completed.
`bytes_downloaded` sums DownloadCompleted.bytes (every run's download, retries included),
`bytes_uploaded` sums JobCompleted.size (the media file), `bytes_deleted` the size of each
file whose FileDeleted was recorded. Storage held is `bytes_uploaded - bytes_deleted`.

Only JobCreated names the account, and only JobCompleted the size a FileDeleted frees; both are
read back from the log itself (the job stream's version 1, its last JobCompleted) rather than
from another projection, whose progress this one cannot rely on, least of all in a rebuild.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date

import asyncpg
import sqlalchemy as sa

from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import job
from spool.domain.events import RecordedEvent

# Per account and UTC day: job activity and bytes moved. Storage held is uploaded minus deleted.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_deleted", sa.BigInteger, nullable=False, server_default="0"),
)

log = logging.getLogger("spool.projections.usage")

COUNTERS = job.USAGE_COUNTERS

# Additive: the runner hands each event over exactly once, so adding is idempotent enough.
_UPSERT = f"""
INSERT INTO usage_daily (account_id, day, {", ".join(COUNTERS)})
SELECT * FROM unnest($1::text[], $2::date[], {
    ", ".join(f"${i}::bigint[]" for i in range(3, 3 + len(COUNTERS)))
})
ON CONFLICT (account_id, day) DO UPDATE SET {
    ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in COUNTERS)
}
"""

_ACCOUNTS = f"""
SELECT e.stream_id, e.data->>'account_id'
FROM unnest($1::text[]) AS t(stream_id)
JOIN events e ON e.stream_id = t.stream_id AND e.version = 1
    AND e.type = '{job.JobCreated.__name__}'
"""

# The size of the upload a FileDeleted removed: the stream's last JobCompleted before it.
_DELETED_SIZES = f"""
SELECT t.stream_id, t.version, (
    SELECT (c.data->>'size')::bigint FROM events c
    WHERE c.stream_id = t.stream_id AND c.version < t.version
      AND c.type = '{job.JobCompleted.__name__}'
    ORDER BY c.version DESC LIMIT 1
)
FROM unnest($1::text[], $2::int[]) AS t(stream_id, version)
"""

_TYPES = types_of(
    job.JobCreated,
    job.DownloadCompleted,
    job.JobCompleted,
    job.JobFailed,
    job.JobCancelled,
    job.FileDeleted,
)


class UsageProjection:
    name = "usage"
    tables: Sequence[sa.Table] = (usage_daily,)
    event_types: frozenset[str] = _TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        accounts: dict[str, str] = {}
        for e in events:
            if isinstance(e.data, job.JobCreated):
                accounts[e.stream_id] = e.data.account_id
        unknown = sorted({e.stream_id for e in events} - accounts.keys())
        if unknown:
            accounts.update({r[0]: r[1] for r in await conn.fetch(_ACCOUNTS, unknown)})
        deletions = [e for e in events if isinstance(e.data, job.FileDeleted)]
        freed: dict[tuple[str, int], int] = {}
        if deletions:
            rows = await conn.fetch(
                _DELETED_SIZES, [e.stream_id for e in deletions], [e.version for e in deletions]
            )
            freed = {(r[0], r[1]): int(r[2] or 0) for r in rows}

        totals: dict[tuple[str, date], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(COUNTERS, 0)
        )
        for e in events:
            account = accounts.get(e.stream_id)
            if account is None:
                # Cannot happen with a sound log (every job stream opens with JobCreated); skip
                # rather than stall the projection on one bad stream.
                log.warning(
                    "usage: %s has no %s; %s not counted",
                    e.stream_id,
                    job.JobCreated.__name__,
                    e.type,
                )
                continue
            row = totals[(account, e.recorded_at.astimezone(UTC).date())]
            ev = e.data
            if isinstance(ev, job.FileDeleted):
                row["bytes_deleted"] += freed.get((e.stream_id, e.version), 0)
            else:
                job.count(row, ev)
        if not totals:
            return
        keys = list(totals)
        await conn.execute(
            _UPSERT,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *([totals[k][c] for k in keys] for c in COUNTERS),
        )


# One pass over the account's days: all-time sums and, filtered, this month's.
_TOTALS = "SELECT {all_time}, {month} FROM usage_daily WHERE account_id = $1".format(
    all_time=", ".join(f"coalesce(sum({c}), 0)::bigint" for c in COUNTERS),
    month=", ".join(f"coalesce(sum({c}) FILTER (WHERE day >= $2), 0)::bigint" for c in COUNTERS),
)


async def totals(
    pool: asyncpg.Pool, account_id: str, since: date
) -> tuple[dict[str, int], dict[str, int]]:
    """An account's counters summed over all time, and over the days from `since`."""
    row = await pool.fetchrow(_TOTALS, account_id, since)
    n = len(COUNTERS)
    return (
        {c: int(row[i]) for i, c in enumerate(COUNTERS)},
        {c: int(row[n + i]) for i, c in enumerate(COUNTERS)},
    )


_STORED = """
SELECT coalesce(sum(bytes_uploaded), 0)::bigint - coalesce(sum(bytes_deleted), 0)::bigint
FROM usage_daily WHERE account_id = $1
"""


async def stored_bytes(db: asyncpg.Pool | asyncpg.Connection, account_id: str) -> int:
    """The bytes the account's files hold now: uploaded minus deleted, over all time."""
    return int(await db.fetchval(_STORED, account_id))


async def in_order(conn: asyncpg.Connection, page: int) -> AsyncIterator[list[asyncpg.Record]]:
    """Every `usage_daily` row by account and day, `page` rows at a time (inside the caller's
    transaction: a cursor)."""
    cursor = await conn.cursor("SELECT * FROM usage_daily ORDER BY account_id, day")
    while rows := await cursor.fetch(page):
        yield rows
