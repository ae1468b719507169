"""Loading a job's exact current state: the projection row as a snapshot, plus the stream's tail."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import msgspec

from adapters.event_store import EVENT_COLUMNS, EventStore
from adapters.history import AsOf, read_stream_as_of
from domain import job
from domain.errors import ConcurrencyError
from domain.events import Event, Metadata, NewEvent

_decode_state = msgspec.json.Decoder(job.JobState).decode

# The projection row and the stream's events after it in one round trip (every job read of the
# API and of the nodes makes it): at least one row, the state (or NULL) in the first column,
# each later event in the others.
_ROW_AND_TAIL = f"""
SELECT j.state, t.*
FROM (SELECT 1) AS one
LEFT JOIN jobs j ON j.job_id = $1
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events
    WHERE stream_id = $2 AND version > coalesce(j.version, 0)
    ORDER BY version
) AS t ON true
ORDER BY t.version
"""


async def load_job(store: EventStore, job_id: str) -> job.JobState | None:
    """The job folded up to its last event; None if it does not exist.

    The projection may lag, so it only saves folding from the start: every event after the
    row's version is folded on top, which makes the answer exact.
    """
    rows = await store.pool.fetch(_ROW_AND_TAIL, job_id, job.stream_id(job_id))
    state = _decode_state(rows[0][0]) if rows[0][0] is not None else None
    for row in rows:
        if row[1] is not None:
            e = store.decode(tuple(row)[1:])
            state = job.evolve(state, e.data, e.recorded_at, e.version)
    return state


async def load_job_as_of(store: EventStore, job_id: str, as_of: AsOf) -> job.JobState | None:
    """The job as it stood at `as_of`, folded from its first event; None if it did not exist."""
    events = await read_stream_as_of(store, job.stream_id(job_id), as_of)
    return job.fold([(e.data, e.recorded_at, e.version) for e in events])


class JobChangingTooFast(Exception):
    """Ten decisions in a row lost the race to other writers of the stream."""


async def decide_and_append(
    store: EventStore,
    job_id: str,
    decide: Callable[[job.JobState], list[Event]],
    meta: Metadata,
    *,
    conn: asyncpg.Connection | None = None,
) -> job.JobState | None:
    """Load the job, decide, append at the version read; on a clash, re-read and decide again.

    Returns the new state (None for a job that does not exist). InvalidTransition from
    `decide` propagates: the command does not apply. With `conn` (in a transaction), the append
    is made in it, each try under a savepoint so that a clash does not abort the transaction.
    """
    for _ in range(10):
        state = await load_job(store, job_id)
        if state is None:
            return None
        events = decide(state)
        if not events:
            return state
        new = [NewEvent(e, meta) for e in events]
        try:
            if conn is None:
                await store.append(job.stream_id(job_id), new, state.version)
            else:
                async with conn.transaction():
                    await store.append(job.stream_id(job_id), new, state.version, conn=conn)
        except ConcurrencyError:
            continue  # progress or a stage landed meanwhile: decide again on the new state
        for e in events:
            state = job.evolve(state, e, state.updated_at, state.version + 1)
        return state
    raise JobChangingTooFast(job_id)
