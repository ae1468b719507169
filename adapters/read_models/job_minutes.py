"""The `job_minutes` table: per UTC minute, cluster-wide, the job events of that minute.

Counted as `usage_daily` counts them (see adapters/read_models/usage.py), by the minute each
event was recorded: a job that fails, is retried and completes counts once as failed and once
as completed. `bytes_uploaded` sums JobCompleted.size, `bytes_downloaded` DownloadCompleted.bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import sqlalchemy as sa

from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import job
from spool.domain.events import RecordedEvent

# Per UTC minute, cluster-wide: job events counted on the minute each was recorded.
job_minutes = sa.Table(
    "job_minutes",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
)

COUNTERS = job.COUNTERS

EVENT_TYPES: frozenset[str] = types_of(
    job.JobCreated, job.DownloadCompleted, job.JobCompleted, job.JobFailed, job.JobCancelled
)

_UPSERT = f"""
INSERT INTO job_minutes (minute, {", ".join(COUNTERS)})
SELECT * FROM unnest($1::timestamptz[], {
    ", ".join(f"${i}::bigint[]" for i in range(2, 2 + len(COUNTERS)))
})
ON CONFLICT (minute) DO UPDATE SET {
    ", ".join(f"{c} = job_minutes.{c} + excluded.{c}" for c in COUNTERS)
}
"""


def minute_of(at: datetime) -> datetime:
    """The UTC minute an instant falls in."""
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def add(totals: dict[datetime, dict[str, int]], events: Sequence[RecordedEvent]) -> None:
    """Add job events to per-minute counters."""
    for e in events:
        ev = e.data
        if e.type not in EVENT_TYPES:
            continue
        job.count(totals.setdefault(minute_of(e.recorded_at), dict.fromkeys(COUNTERS, 0)), ev)


class JobMinutesProjection:
    name = "job_minutes"
    tables: Sequence[sa.Table] = (job_minutes,)
    event_types: frozenset[str] = EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        totals: dict[datetime, dict[str, int]] = {}
        add(totals, events)
        if totals:
            minutes = sorted(totals)
            await conn.execute(
                _UPSERT, minutes, *([totals[m][c] for m in minutes] for c in COUNTERS)
            )


# Whole minutes, as `usage_minutes.window`; from the documented `reporting.job_minutes` view,
# which a rebuild keeps pointing at live rows.
_WINDOW = """
SELECT coalesce(sum(completed), 0)::bigint AS completed,
       coalesce(sum(failed), 0)::bigint AS failed,
       coalesce(sum(cancelled), 0)::bigint AS cancelled
FROM reporting.job_minutes
WHERE minute >= date_trunc('minute', now()) - $1::int * interval '1 minute'
"""


async def window(pool: asyncpg.Pool, minutes: int) -> asyncpg.Record:
    """Jobs that completed, failed or were cancelled in the last `minutes`, counted when it
    happened (`domain.job.count`): what the dashboard's chart shows for the same minutes."""
    row: asyncpg.Record = await pool.fetchrow(_WINDOW, minutes)
    return row


_THROUGHPUT = """
WITH w AS (
    SELECT date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute' AS first,
           date_trunc('minute', now()) AS last
)
SELECT m.minute, coalesce(j.completed, 0), coalesce(j.failed, 0), coalesce(j.bytes, 0)
FROM w, generate_series(w.first, w.last, interval '1 minute') AS m(minute)
LEFT JOIN (
    SELECT minute, completed, failed, bytes FROM reporting.job_minutes, w WHERE minute >= w.first
) AS j USING (minute)
ORDER BY m.minute
"""


async def throughput(pool: asyncpg.Pool, minutes: int) -> list[asyncpg.Record]:
    """Jobs finished and bytes stored per minute, every minute of the last `minutes` (zeros
    included): rows of minute, completed, failed, bytes."""
    return list(await pool.fetch(_THROUGHPUT, minutes))


async def in_order(conn: asyncpg.Connection, page: int) -> AsyncIterator[list[asyncpg.Record]]:
    """Every `job_minutes` row by minute, `page` rows at a time (inside the caller's
    transaction: a cursor)."""
    cursor = await conn.cursor("SELECT * FROM job_minutes ORDER BY minute")
    while rows := await cursor.fetch(page):
        yield rows
