"""The `batches` read model: each batch's folded state (domain.batch) and what its jobs add up to.

A batch's shown status and counts depend on its jobs (`domain.batch.summarize`), so the table is
kept by the jobs projection (adapters/read_models/jobs.py): in the transaction that writes the
`jobs` rows, it folds the batch events and sums up each touched batch from those rows. The
`reporting.batches` view reads these columns as they are; it computes nothing of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.read_models.state_projection import Row, StateProjection, Stored
from spool.adapters.tables import metadata
from spool.domain import batch
from spool.domain.events import RecordedEvent

# One row per batch: its folded state and what its jobs add up to (`domain.batch.summarize`),
# kept by the jobs projection. `status` is the status shown, `stream_status` the batch stream's
# own.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("source_url", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("job_ids", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("stream_status", sa.Text, nullable=False),
    sa.Column("jobs_pending", sa.Integer, nullable=False),
    sa.Column("jobs_processing", sa.Integer, nullable=False),
    sa.Column("jobs_completed", sa.Integer, nullable=False),
    sa.Column("jobs_failed", sa.Integer, nullable=False),
    sa.Column("jobs_cancelled", sa.Integer, nullable=False),
    sa.Column("jobs_skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False),
    sa.Column("last_finished_at", sa.DateTime(timezone=True)),
    sa.Index("batches_account_created_idx", "account_id", sa.text("created_at DESC")),
)

OWN_COLUMNS = (
    "account_id",
    "kind",
    "stream_status",
    "source_url",
    "title",
    "job_ids",
    "created_at",
    "started_at",
    "updated_at",
    "version",
)
"""The columns the batch's own stream decides."""

SUMMARY_COLUMNS = (
    "status",
    "jobs_pending",
    "jobs_processing",
    "jobs_completed",
    "jobs_failed",
    "jobs_cancelled",
    "jobs_skipped",
    "bytes_uploaded",
    "last_finished_at",
)
"""The columns its jobs decide, through `domain.batch.summarize`."""

COLUMNS = OWN_COLUMNS + SUMMARY_COLUMNS


def own_row(state: batch.BatchState, updated_at: datetime) -> dict[str, Any]:
    """The columns of a `batches` row that the batch's own state gives."""
    return {
        "account_id": state.account_id,
        "kind": state.kind,
        "stream_status": state.status,
        "source_url": state.source_url,
        "title": state.title,
        "job_ids": list(state.job_ids),
        "created_at": state.created_at,
        "started_at": state.started_at,
        "updated_at": updated_at,
        "version": state.version,
    }


def summary_row(summary: batch.Summary) -> dict[str, Any]:
    """The columns of a `batches` row that its jobs give."""
    return {
        "status": summary.status,
        **{f"jobs_{s.lower()}": summary.counts[s] for s in batch.JOB_STATUSES},
        "bytes_uploaded": summary.bytes_uploaded,
        "last_finished_at": summary.last_finished_at,
    }


def _state(r: asyncpg.Record) -> batch.BatchState:
    return batch.BatchState(
        batch_id=r["batch_id"],
        account_id=r["account_id"],
        kind=r["kind"],
        job_ids=list(r["job_ids"]),
        status=r["stream_status"],
        source_url=r["source_url"],
        title=r["title"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        version=r["version"],
    )


_JOB_FACTS = """
SELECT batch_id, job_id, status, (state->>'file_size')::bigint, finished_at
FROM jobs WHERE batch_id = ANY($1::text[])
"""


async def jobs_of(
    conn: asyncpg.Connection, batch_ids: Collection[str]
) -> dict[str, dict[str, batch.JobFacts]]:
    """What each batch counts of its jobs, by job id, from the `jobs` rows that carry its id
    (every batch named, with none for a batch without such rows)."""
    found: dict[str, dict[str, batch.JobFacts]] = {b: {} for b in batch_ids}
    for r in await conn.fetch(_JOB_FACTS, list(found)):
        found[r[0]][r[1]] = batch.JobFacts(r[2], r[3], r[4])
    return found


_UPSERT = f"""
INSERT INTO batches (batch_id, {", ".join(COLUMNS)})
SELECT b, a, k, ss, u, t, string_to_array(j, chr(31)), c, st, up, v, s, jp, jr, jc, jf, jx, js,
       by, lf
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::int[], $12::text[],
            $13::int[], $14::int[], $15::int[], $16::int[], $17::int[], $18::int[],
            $19::bigint[], $20::timestamptz[])
     AS r(b, a, k, ss, u, t, j, c, st, up, v, s, jp, jr, jc, jf, jx, js, by, lf)
ON CONFLICT (batch_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in COLUMNS)}
WHERE batches.version <= excluded.version
"""
# job_ids travel joined by the unit separator: unnest cannot take ragged arrays of arrays, and
# a uuid never holds that character. `<=`: a job's change rewrites the row at the same version.


class BatchRows:
    """The `batches` rows: the batch's own columns and its jobs' summary, from the `jobs` rows
    written in the same transaction."""

    table = batches
    key = "batch_id"
    columns: tuple[str, ...] = OWN_COLUMNS
    json_columns: frozenset[str] = frozenset()

    def row(self, state: batch.BatchState, at: datetime) -> Row:
        """The columns the batch's own stream decides (`at`: when its last event was recorded)."""
        return own_row(state, at)

    async def load(
        self, conn: asyncpg.Connection, keys: list[str]
    ) -> dict[str, Stored[batch.BatchState]]:
        rows = await conn.fetch(
            "SELECT b.* FROM unnest($1::text[]) AS t(batch_id) JOIN batches b USING (batch_id)",
            keys,
        )
        return {r["batch_id"]: Stored(_state(r), r["updated_at"]) for r in rows}

    async def write(
        self,
        conn: asyncpg.Connection,
        changed: dict[str, Stored[batch.BatchState]],
        stored: Collection[str],
    ) -> None:
        facts = await jobs_of(conn, changed)
        rows = [
            (b, own_row(s.state, s.at) | summary_row(batch.summarize(s.state, facts[b].values())))
            for b, s in changed.items()
        ]
        await conn.execute(
            _UPSERT,
            [b for b, _ in rows],
            *([chr(31).join(r[c]) if c == "job_ids" else r[c] for _, r in rows] for c in COLUMNS),
        )


BATCHES = StateProjection(
    name="batches",
    stream=batch.stream_id(""),
    event_types=batch.EVENT_TYPES,
    evolve=batch.evolve,
    rows=BatchRows(),
)


async def apply(
    conn: asyncpg.Connection, events: Sequence[RecordedEvent], by_jobs: Collection[str]
) -> None:
    """Fold `events` (batch events) into their rows, then sum up every batch they or a job
    change (`by_jobs`: batch ids) touched, from the `jobs` rows already written."""
    applied = await BATCHES.fold_onto(conn, events, also=by_jobs)
    if applied.states:
        # Every batch loaded is written: a job's change moves its summary.
        await BATCHES.rows.write(conn, applied.states, applied.stored)


async def summaries(conn: asyncpg.Connection, batch_ids: Sequence[str]) -> dict[str, Row]:
    """The stored summary columns (`SUMMARY_COLUMNS`) of these batches, by batch id."""
    rows = await conn.fetch(
        f"SELECT batch_id, {', '.join(SUMMARY_COLUMNS)} FROM batches "
        "WHERE batch_id = ANY($1::text[])",
        list(batch_ids),
    )
    return {r[0]: dict(r.items()) for r in rows}
