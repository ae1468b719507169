"""Live progress: each running unit's latest progress, outside the job's permanent history.

A node sends its running units' progress every heartbeat (`publish`); the job's stream keeps a
`StageProgressed` only at each milestone (`domain.job.progress_milestone`). Readers lay the row of
the job's current unit over its folded state (`shown`), and leave a row alone once it is older than
`settings.node_timeout` (`fresh_within`): past it the node counts as offline, and what it last
said is no longer live. The table (`adapters.tables.live_progress`) is unlogged: a server crash
empties it, and the next heartbeats fill it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import msgspec

from spool.adapters.settings import Settings
from spool.domain import job


class LiveProgress(msgspec.Struct, frozen=True, kw_only=True):
    """A unit's latest progress as its node last sent it."""

    run: int
    stage: job.Stage
    attempt: int
    progress: job.Progress


def fresh_within(settings: Settings) -> timedelta:
    """How old a row may be and still be shown: a node silent for longer is offline."""
    return timedelta(seconds=settings.node_timeout)


# Upserts the node's rows and deletes, in the same statement, its rows of units it no longer
# sends and anyone's rows past `$6` (their node died with them): one row per running unit at
# most. The rows just written are kept out of the delete, which sees the table as it was before.
_PUBLISH = """
WITH sent AS (
    INSERT INTO live_progress AS l (job_id, run, stage, attempt, node_id, progress, updated_at)
    SELECT u.job_id, u.run, u.stage, u.attempt, $1, u.progress, now()
    FROM unnest($2::text[], $3::int[], $4::text[], $5::int[], $7::jsonb[])
        AS u(job_id, run, stage, attempt, progress)
    ON CONFLICT (job_id, run, stage, attempt) DO UPDATE
        SET node_id = excluded.node_id, progress = excluded.progress,
            updated_at = excluded.updated_at
    RETURNING l.job_id, l.run, l.stage, l.attempt
)
DELETE FROM live_progress l
WHERE (l.node_id = $1 OR l.updated_at < now() - $6::interval)
  AND NOT EXISTS (
      SELECT 1 FROM sent s
      WHERE (s.job_id, s.run, s.stage, s.attempt) = (l.job_id, l.run, l.stage, l.attempt))
"""


class Sent(msgspec.Struct, frozen=True):
    """One unit's progress a node sends."""

    job_id: str
    run: int
    stage: job.Stage
    attempt: int
    progress: job.Progress


_encode = msgspec.json.Encoder().encode


async def publish(
    pool: asyncpg.Pool, node_id: str, units: Sequence[Sent], fresh: timedelta
) -> None:
    """Make `units` the node's rows: each upserted, the node's other rows deleted (with anyone's
    older than `fresh`). An unlogged table alone writes no WAL, so the commit waits on no flush."""
    await pool.execute(
        _PUBLISH,
        node_id,
        [u.job_id for u in units],
        [u.run for u in units],
        [u.stage for u in units],
        [u.attempt for u in units],
        fresh,
        [_encode(u.progress) for u in units],
    )


LIVE_OF_JOB = """
SELECT coalesce(jsonb_agg(jsonb_build_object(
    'run', l.run, 'stage', l.stage, 'attempt', l.attempt, 'progress', l.progress)), '[]')
FROM live_progress l
WHERE l.job_id = {job_id} AND l.updated_at > now() - {fresh}::interval
"""
"""The fresh rows of one job as a jsonb array (`decode` reads it), for queries that list jobs:
format in the SQL of the job's id and of the freshness bound."""

_decode = msgspec.json.Decoder(list[LiveProgress]).decode


def decode(raw: bytes) -> list[LiveProgress]:
    """The rows `LIVE_OF_JOB` gave."""
    return _decode(raw)


_OF_JOB = LIVE_OF_JOB.format(job_id="$1", fresh="$2")


async def of_job(
    db: asyncpg.Pool | asyncpg.Connection, job_id: str, fresh: timedelta
) -> list[LiveProgress]:
    """The job's rows sent within `fresh`: its current unit's, and perhaps one it moved off."""
    return decode(await db.fetchval(_OF_JOB, job_id, fresh))


def shown(state: job.JobState, live: Sequence[LiveProgress]) -> job.JobState:
    """The job with its current unit's live progress, if a row is the current unit's."""
    for row in live:
        state = job.with_live_progress(state, row.stage, row.run, row.attempt, row.progress)
    return state
