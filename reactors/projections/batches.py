"""The `batches` table: each batch's folded state (domain.batch) and what its jobs add up to.

A batch's shown status and counts depend on its jobs (`domain.batch.summarize`), so the table is
kept by the jobs projection (reactors/projections/jobs.py): in the transaction that writes the
`jobs` rows, it folds the batch events and sums up each touched batch from those rows. The
`reporting.batches` view reads these columns as they are; it computes nothing of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from spool.domain import batch
from spool.domain.events import RecordedEvent

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


def fold_own(events: Sequence[RecordedEvent]) -> dict[str, Any] | None:
    """The own columns one batch stream folds to (None for no events)."""
    state = batch.fold([(e.data, e.recorded_at, e.version) for e in events])
    return None if state is None else own_row(state, events[-1].recorded_at)


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
SELECT batch_id, status, (state->>'file_size')::bigint, finished_at
FROM jobs WHERE batch_id = ANY($1::text[])
"""

_UPSERT = f"""
INSERT INTO batches (batch_id, {", ".join(COLUMNS)})
SELECT b, a, k, ss, u, t, string_to_array(j, chr(31)), c, st, up, v, s, jp, jr, jc, jf, jx, by, lf
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::int[], $12::text[],
            $13::int[], $14::int[], $15::int[], $16::int[], $17::int[], $18::bigint[],
            $19::timestamptz[])
     AS r(b, a, k, ss, u, t, j, c, st, up, v, s, jp, jr, jc, jf, jx, by, lf)
ON CONFLICT (batch_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in COLUMNS)}
WHERE batches.version <= excluded.version
"""
# job_ids travel joined by the unit separator: unnest cannot take ragged arrays of arrays, and
# a uuid never holds that character. `<=`: a job's change rewrites the row at the same version.


async def apply(
    conn: asyncpg.Connection, events: Sequence[RecordedEvent], by_jobs: Collection[str]
) -> None:
    """Fold `events` (batch events) into their rows, then sum up every batch they or a job
    change (`by_jobs`: batch ids) touched, from the `jobs` rows already written."""
    first: dict[str, int] = {}
    for e in events:
        first.setdefault(e.stream_id.removeprefix("batch-"), e.version)
    load = [b for b, version in first.items() if version > 1]
    load += [b for b in by_jobs if b not in first]
    states: dict[str, batch.BatchState | None] = {}
    updated: dict[str, datetime] = {}
    if load:
        for r in await conn.fetch(
            "SELECT b.* FROM unnest($1::text[]) AS t(batch_id) JOIN batches b USING (batch_id)",
            load,
        ):
            states[r["batch_id"]] = _state(r)
            updated[r["batch_id"]] = r["updated_at"]
    for e in events:
        batch_id = e.stream_id.removeprefix("batch-")
        current = states.get(batch_id)
        if current is not None and e.version <= current.version:
            continue  # already applied (a rebuild overlapping the live runner)
        states[batch_id] = batch.evolve(current, e.data, e.recorded_at, e.version)
        updated[batch_id] = e.recorded_at
    known = {b: s for b, s in states.items() if s is not None}
    if not known:
        return
    facts: dict[str, list[batch.JobFacts]] = {b: [] for b in known}
    for r in await conn.fetch(_JOB_FACTS, list(known)):
        facts[r[0]].append(batch.JobFacts(r[1], r[2], r[3]))
    rows = [
        (b, own_row(s, updated[b]) | summary_row(batch.summarize(s, facts[b])))
        for b, s in known.items()
    ]
    await conn.execute(
        _UPSERT,
        [b for b, _ in rows],
        *([chr(31).join(r[c]) if c == "job_ids" else r[c] for _, r in rows] for c in COLUMNS),
    )
