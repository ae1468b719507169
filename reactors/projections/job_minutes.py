"""The `job_minutes` table: per UTC minute, cluster-wide, the job events of that minute.

Counted as `usage_daily` counts them (see reactors/projections/usage.py), by the minute each
event was recorded: a job that fails, is retried and completes counts once as failed and once
as completed. `bytes_uploaded` sums JobCompleted.size, `bytes_downloaded` DownloadCompleted.bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import sqlalchemy as sa

from spool.adapters.tables import job_minutes
from spool.domain import job
from spool.domain.events import RecordedEvent

COUNTERS = job.COUNTERS

EVENT_TYPES: frozenset[str] = frozenset(
    {"JobCreated", "DownloadCompleted", "JobCompleted", "JobFailed", "JobCancelled"}
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
