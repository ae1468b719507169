"""The `node_minutes` table: each node's heartbeats rolled up per UTC minute.

Sums are exact: CPU percentages enter as the decimal of their shortest repr and memory as
integer bytes, summed as `numeric`, so a rebuild that cuts the log into other batches gives the
same rows to the last digit. Maxima are of per-beat values, which no grouping changes. The table
is fed only by NodeHeartbeat events and keeps its rows when old heartbeats are archived.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.read_models.job_minutes import minute_of
from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import node
from spool.domain.events import RecordedEvent

# Per node and UTC minute: its heartbeats rolled up. Sums are exact (numeric), so a rebuild in
# other batches gives the same rows; the table outlives the heartbeat events it was made from.
node_minutes = sa.Table(
    "node_minutes",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("cpu_percent_sum", sa.Numeric, nullable=False),
    sa.Column("cpu_percent_max", sa.Float(precision=53), nullable=False),
    sa.Column("memory_used_sum", sa.Numeric, nullable=False),
    sa.Column("memory_total_sum", sa.Numeric, nullable=False),
    sa.Column("memory_percent_max", sa.Float(precision=53), nullable=False),
    sa.Column("downloading_max", sa.Integer, nullable=False),
    sa.Column("muxing_max", sa.Integer, nullable=False),
    sa.Column("uploading_max", sa.Integer, nullable=False),
    sa.Index("node_minutes_minute_idx", "minute"),
)


class NodeMinute(msgspec.Struct, kw_only=True):
    """One `node_minutes` row being summed."""

    samples: int = 0
    cpu_percent_sum: Decimal = Decimal(0)
    cpu_percent_max: float = 0.0
    memory_used_sum: int = 0
    memory_total_sum: int = 0
    memory_percent_max: float = 0.0
    downloading_max: int = 0
    muxing_max: int = 0
    uploading_max: int = 0


def add(
    rollup: dict[tuple[str, datetime], NodeMinute], beat: node.NodeHeartbeat, at: datetime
) -> None:
    """Add one heartbeat to its node's minute."""
    m = rollup.get((beat.node_id, minute_of(at)))
    if m is None:
        m = rollup[(beat.node_id, minute_of(at))] = NodeMinute()
    usage = beat.usage
    memory = 100.0 * usage.memory_used / usage.memory_total if usage.memory_total else 0.0
    m.samples += 1
    m.cpu_percent_sum += Decimal(repr(usage.cpu_percent))
    m.cpu_percent_max = max(m.cpu_percent_max, usage.cpu_percent)
    m.memory_used_sum += usage.memory_used
    m.memory_total_sum += usage.memory_total
    m.memory_percent_max = max(m.memory_percent_max, memory)
    m.downloading_max = max(m.downloading_max, beat.downloading)
    m.muxing_max = max(m.muxing_max, beat.muxing)
    m.uploading_max = max(m.uploading_max, beat.uploading)


_UPSERT = """
INSERT INTO node_minutes AS n (node_id, minute, samples, cpu_percent_sum, cpu_percent_max,
                               memory_used_sum, memory_total_sum, memory_percent_max,
                               downloading_max, muxing_max, uploading_max)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::numeric[], $5::float8[],
                     $6::numeric[], $7::numeric[], $8::float8[], $9::int[], $10::int[],
                     $11::int[])
ON CONFLICT (node_id, minute) DO UPDATE SET
    samples = n.samples + excluded.samples,
    cpu_percent_sum = n.cpu_percent_sum + excluded.cpu_percent_sum,
    cpu_percent_max = greatest(n.cpu_percent_max, excluded.cpu_percent_max),
    memory_used_sum = n.memory_used_sum + excluded.memory_used_sum,
    memory_total_sum = n.memory_total_sum + excluded.memory_total_sum,
    memory_percent_max = greatest(n.memory_percent_max, excluded.memory_percent_max),
    downloading_max = greatest(n.downloading_max, excluded.downloading_max),
    muxing_max = greatest(n.muxing_max, excluded.muxing_max),
    uploading_max = greatest(n.uploading_max, excluded.uploading_max)
"""


class NodeMinutesProjection:
    name = "node_minutes"
    tables: Sequence[sa.Table] = (node_minutes,)
    event_types: frozenset[str] = types_of(node.NodeHeartbeat)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # A batch holds a minute or so of every node's beats: summed here, one upsert a batch.
        rollup: dict[tuple[str, datetime], NodeMinute] = {}
        for e in events:
            if isinstance(e.data, node.NodeHeartbeat):
                add(rollup, e.data, e.recorded_at)
        if not rollup:
            return
        keys = sorted(rollup)
        rows = [rollup[k] for k in keys]
        await conn.execute(
            _UPSERT,
            [k[0] for k in keys],
            [k[1] for k in keys],
            *([getattr(r, f) for r in rows] for f in NodeMinute.__struct_fields__),
        )
