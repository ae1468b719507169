"""The `job_stages` table: one row per attempt of a stage (job, run, stage, attempt).

A row opens at StageStarted (its node and start; the last StageStarted of an attempt wins, as
in the job's own timings) and closes at the attempt's end: DownloadCompleted, MuxCompleted or
JobCompleted (`completed`, with the worker's measured time and the bytes it moved), StageFailed
(`failed`, with the reason), StageInterrupted (`interrupted`: its node was stopped; the stage
runs again), MediaNotReady (`not_ready`: the media is not out yet, the download runs again
later) or JobCancelled while it ran (`cancelled`). An attempt that failed
before any node started it (a timeout) has a row with no start. A failed attempt the
reconciler handed on because its node's lease expired (domain/lease.py) has `lease_expired`
set: `/metrics` counts them (`spool_lease_expiries_total`, api/metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.event_store import Checkpoint
from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import job
from spool.domain.events import Event, RecordedEvent

# One row per attempt of a stage: (job, run, stage, attempt), when and where it ran, how it ended.
job_stages = sa.Table(
    "job_stages",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.Text),  # completed | failed | interrupted | not_ready | cancelled
    sa.Column("work_ms", sa.BigInteger),  # the worker's own measure of a completed attempt
    sa.Column("bytes", sa.BigInteger),
    sa.Column("reason", sa.Text),
    sa.Column("lease_expired", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("job_stages_finished_idx", "finished_at"),
    # The few attempts handed on for an expired lease, counted at each scrape (migration 0020).
    sa.Index("job_stages_lease_expired_idx", "stage", postgresql_where=sa.text("lease_expired")),
)

StageKey = tuple[str, int, str, int]
"""job_id, run, stage, attempt"""


class StageRow(msgspec.Struct, kw_only=True):
    """One `job_stages` row."""

    job_id: str
    run: int
    stage: str
    attempt: int
    node_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None
    work_ms: int | None = None
    bytes: int | None = None
    reason: str | None = None
    lease_expired: bool = False


COLUMNS: tuple[str, ...] = StageRow.__struct_fields__

EVENT_TYPES: frozenset[str] = types_of(
    job.StageStarted,
    job.DownloadCompleted,
    job.MuxCompleted,
    job.JobCompleted,
    job.StageFailed,
    job.StageInterrupted,
    job.MediaNotReady,
    job.JobCancelled,
)


def _row(rows: dict[StageKey, StageRow], key: StageKey) -> StageRow:
    row = rows.get(key)
    if row is None:
        row = rows[key] = StageRow(job_id=key[0], run=key[1], stage=key[2], attempt=key[3])
    return row


def _complete(row: StageRow, at: datetime, node_id: str, seconds: float, size: int) -> None:
    row.finished_at, row.outcome, row.node_id = at, "completed", node_id
    row.work_ms, row.bytes = int(seconds * 1000), size  # as GET /jobs reports a stage's time


def evolve(rows: dict[StageKey, StageRow], job_id: str, ev: Event, at: datetime) -> None:
    """Apply one job event to the stage rows of that job (rows of other jobs are untouched)."""
    if isinstance(ev, job.StageStarted):
        row = _row(rows, (job_id, ev.run, ev.stage, ev.attempt))
        row.node_id, row.started_at = ev.node_id, at
    elif isinstance(ev, job.DownloadCompleted):
        row = _row(rows, (job_id, ev.run, "download", ev.attempt))
        _complete(row, at, ev.node_id, ev.seconds, ev.bytes)
    elif isinstance(ev, job.MuxCompleted):
        row = _row(rows, (job_id, ev.run, "mux", ev.attempt))
        _complete(row, at, ev.node_id, ev.seconds, ev.output.size)
    elif isinstance(ev, job.JobCompleted):
        row = _row(rows, (job_id, ev.run, "upload", ev.attempt))
        _complete(row, at, ev.node_id, ev.seconds, ev.size)
    elif isinstance(ev, job.StageFailed):
        row = _row(rows, (job_id, ev.run, ev.stage, ev.attempt))
        row.finished_at, row.outcome, row.reason = at, "failed", ev.reason
        row.node_id = ev.node_id or row.node_id
        row.lease_expired = ev.lease_expired
    elif isinstance(ev, job.StageInterrupted):
        row = _row(rows, (job_id, ev.run, ev.stage, ev.attempt))
        row.finished_at, row.outcome, row.node_id = at, "interrupted", ev.node_id
        row.reason = f"interrupted by the {ev.reason} of node {ev.node_id}"
    elif isinstance(ev, job.MediaNotReady):
        row = _row(rows, (job_id, ev.run, "download", ev.attempt))
        row.finished_at, row.outcome, row.node_id = at, "not_ready", ev.node_id
        row.reason = ev.reason
    elif isinstance(ev, job.JobCancelled) and ev.stage is not None:
        for key, row in rows.items():
            if key[:3] == (job_id, ev.run, ev.stage) and row.outcome is None:
                row.finished_at, row.outcome, row.reason = at, "cancelled", ev.reason


def fold(events: Sequence[RecordedEvent]) -> dict[StageKey, StageRow]:
    """Every stage row of one job stream, folded from its events."""
    rows: dict[StageKey, StageRow] = {}
    for e in events:
        evolve(rows, e.stream_id.removeprefix("job-"), e.data, e.recorded_at)
    return rows


_LOAD = f"""
SELECT {", ".join("s." + c for c in COLUMNS)}
FROM unnest($1::text[]) AS t(job_id) JOIN job_stages s USING (job_id)
"""


async def rows_of(conn: asyncpg.Connection, job_ids: Sequence[str]) -> dict[StageKey, StageRow]:
    """Every stored stage row of these jobs."""
    return {
        (r[0], r[1], r[2], r[3]): StageRow(**dict(r.items()))
        for r in await conn.fetch(_LOAD, list(job_ids))
    }


_WITHOUT_STREAM = """
SELECT DISTINCT job_id FROM job_stages s WHERE NOT EXISTS (
    SELECT 1 FROM events e WHERE e.stream_id = 'job-' || s.job_id AND e.version = 1
    AND (e.tx, e.position) <= ($1::text::xid8, $2::bigint))
"""


async def without_stream(conn: asyncpg.Connection, at: Checkpoint) -> list[str]:
    """The jobs with stage rows whose stream had not begun by `at` (for `verify`)."""
    return [r[0] for r in await conn.fetch(_WITHOUT_STREAM, str(at.tx), at.position)]


_UPSERT = """
INSERT INTO job_stages (job_id, run, stage, attempt, node_id, started_at, finished_at, outcome,
                        work_ms, bytes, reason, lease_expired)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[], $9::int8[], $10::int8[],
                     $11::text[], $12::bool[])
ON CONFLICT (job_id, run, stage, attempt) DO UPDATE SET
    node_id = excluded.node_id, started_at = excluded.started_at,
    finished_at = excluded.finished_at, outcome = excluded.outcome, work_ms = excluded.work_ms,
    bytes = excluded.bytes, reason = excluded.reason, lease_expired = excluded.lease_expired
"""


class JobStagesProjection:
    name = "job_stages"
    tables: Sequence[sa.Table] = (job_stages,)
    event_types: frozenset[str] = EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # A cancel closes whichever attempt is open, so each touched job's rows are loaded whole
        # (a handful per job) and folded on in Python with the same code verify uses.
        job_ids = sorted({e.stream_id.removeprefix("job-") for e in events})
        rows = await rows_of(conn, job_ids)
        before = {k: msgspec.structs.astuple(v) for k, v in rows.items()}
        for e in events:
            evolve(rows, e.stream_id.removeprefix("job-"), e.data, e.recorded_at)
        changed = [
            msgspec.structs.astuple(v)
            for k, v in rows.items()
            if before.get(k) != msgspec.structs.astuple(v)
        ]
        if changed:
            await conn.execute(_UPSERT, *(list(c) for c in zip(*changed, strict=True)))


_LEASE_EXPIRIES = (
    "SELECT stage, count(*) FROM job_stages WHERE lease_expired GROUP BY stage ORDER BY stage"
)


async def lease_expiries(pool: asyncpg.Pool) -> list[tuple[str, int]]:
    """How many attempts of each stage were handed on because their lease expired."""
    return [(r[0], int(r[1])) for r in await pool.fetch(_LEASE_EXPIRIES)]
