"""The `usage_minutes` table: heartbeats' CPU and memory use summed per UTC minute."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import sqlalchemy as sa

from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import node
from spool.domain.events import RecordedEvent

# Per UTC minute: the sum of heartbeats' CPU and memory use, for utilisation over time windows.
usage_minutes = sa.Table(
    "usage_minutes",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cpu_percent_sum", sa.Float, nullable=False, server_default="0"),
    sa.Column("memory_percent_sum", sa.Float, nullable=False, server_default="0"),
)

_UPSERT = """
INSERT INTO usage_minutes (minute, samples, cpu_percent_sum, memory_percent_sum)
SELECT * FROM unnest($1::timestamptz[], $2::bigint[], $3::float8[], $4::float8[])
ON CONFLICT (minute) DO UPDATE SET
    samples = usage_minutes.samples + excluded.samples,
    cpu_percent_sum = usage_minutes.cpu_percent_sum + excluded.cpu_percent_sum,
    memory_percent_sum = usage_minutes.memory_percent_sum + excluded.memory_percent_sum
"""


class UsageMinutesProjection:
    name = "usage_minutes"
    tables: Sequence[sa.Table] = (usage_minutes,)
    event_types: frozenset[str] = types_of(node.NodeHeartbeat)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # A batch holds about a minute or two of beats: sum in Python, one upsert per batch.
        sums: dict[datetime, list[float]] = {}
        for e in events:
            ev = e.data
            if not isinstance(ev, node.NodeHeartbeat):
                continue
            minute = e.recorded_at.replace(second=0, microsecond=0)
            memory = (
                100.0 * ev.usage.memory_used / ev.usage.memory_total
                if ev.usage.memory_total
                else 0.0
            )
            s = sums.setdefault(minute, [0, 0.0, 0.0])
            s[0] += 1
            s[1] += ev.usage.cpu_percent
            s[2] += memory
        if sums:
            minutes = sorted(sums)
            await conn.execute(
                _UPSERT,
                minutes,
                [int(sums[m][0]) for m in minutes],
                [sums[m][1] for m in minutes],
                [sums[m][2] for m in minutes],
            )


# Whole minutes, the current one included: a 1 minute window reads this minute and the last.
_WINDOW = """
SELECT sum(samples)::bigint AS samples, sum(cpu_percent_sum) AS cpu,
       sum(memory_percent_sum) AS memory
FROM usage_minutes WHERE minute >= date_trunc('minute', now()) - $1::int * interval '1 minute'
"""


async def window(pool: asyncpg.Pool, minutes: int) -> asyncpg.Record:
    """Heartbeats in the last `minutes` (`samples`) and their CPU and memory percentages summed."""
    row: asyncpg.Record = await pool.fetchrow(_WINDOW, minutes)
    return row
