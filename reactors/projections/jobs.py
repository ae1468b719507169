"""The `jobs` table: each job's folded state, as `GET /jobs` answers it; and the `batches` table.

Batches are kept here because what a batch shows depends on its jobs (`domain.batch.summarize`):
summed up in the transaction that writes the `jobs` rows, a batch's row always agrees with
them, in a live catch-up and in a rebuild alike (reactors/projections/batches.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.tables import batches, jobs
from spool.domain import batch, job
from spool.domain.events import RecordedEvent
from spool.reactors.projections import batches as batch_rows

_encode = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(job.JobState).decode

# One jsonb array in, columns extracted in SQL: asyncpg encodes one array element by element
# in Python, so eleven parallel arrays cost eleven times that.
_INSERT = """
INSERT INTO jobs (job_id, account_id, batch_id, url, status, step, created_at, updated_at,
                  finished_at, version, state)
SELECT s->>'job_id', s->>'account_id', s->>'batch_id', s->>'url', s->>'status', s->>'step',
       (s->>'created_at')::timestamptz, (s->>'updated_at')::timestamptz,
       (s->>'finished_at')::timestamptz, coalesce((s->>'version')::int, 0), s
FROM unnest($1::jsonb[]) AS t(s)
"""

_UPSERT = (
    _INSERT
    + """ON CONFLICT (job_id) DO UPDATE SET
    batch_id = excluded.batch_id, status = excluded.status, step = excluded.step,
    updated_at = excluded.updated_at, finished_at = excluded.finished_at,
    version = excluded.version, state = excluded.state
WHERE jobs.version < excluded.version
"""
)


class JobsProjection:
    name = "jobs"
    tables: Sequence[sa.Table] = (jobs, batches)
    event_types: frozenset[str] = job.EVENT_TYPES | batch.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        job_events = [e for e in events if e.stream_id.startswith("job-")]
        batch_events = [e for e in events if e.stream_id.startswith("batch-")]
        changed = await self._apply_jobs(conn, job_events) if job_events else set()
        if batch_events or changed:
            await batch_rows.apply(conn, batch_events, changed)

    async def _apply_jobs(
        self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]
    ) -> set[str]:
        """Write the jobs' rows; the batches whose jobs changed status, size or end."""
        # A stream whose first event here is its version 1 is a new job: nothing to load.
        first: dict[str, int] = {}
        for e in events:
            first.setdefault(e.stream_id.removeprefix("job-"), e.version)
        touched = [job_id for job_id, version in first.items() if version > 1]
        rows = (
            await conn.fetch(
                # A join on unnest keeps the index plan even when a cached generic plan was made
                # while the table was empty (a rebuild's shadow table, a fresh install).
                "SELECT j.job_id, j.state FROM unnest($1::text[]) AS t(job_id) "
                "JOIN jobs j USING (job_id)",
                touched,
            )
            if touched
            else []
        )
        states: dict[str, job.JobState | None] = {r[0]: _decode_state(r[1]) for r in rows}
        stored = set(states)
        changed: set[str] = set()
        for e in events:
            job_id = e.stream_id.removeprefix("job-")
            current = states.get(job_id)
            if current is not None and e.version <= current.version:
                continue  # already applied (a rebuild overlapping the live runner)
            before = None if current is None else batch.facts_of(current)
            state = states[job_id] = job.evolve(current, e.data, e.recorded_at, e.version)
            if state.batch_id is not None and batch.facts_of(state) != before:
                changed.add(state.batch_id)
        new = [_encode(s) for job_id, s in states.items() if s is not None and job_id not in stored]
        known = [_encode(s) for job_id, s in states.items() if s is not None and job_id in stored]
        if new:
            # Jobs without a row are plain inserts: ON CONFLICT's speculative insertion cost a
            # fifth of catch-up time. Should a row exist after all (a rebuild overlapping the
            # live runner), the savepoint falls back to the upsert, whose version guard keeps
            # the newer row.
            try:
                async with conn.transaction():
                    await conn.execute(_INSERT, new)
            except asyncpg.UniqueViolationError:
                known += new
        if known:
            await conn.execute(_UPSERT, known)
        return changed
