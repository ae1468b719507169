"""Loading a job's exact current state: the projection row as a snapshot, plus the stream's tail."""

from __future__ import annotations

import msgspec

from adapters.event_store import EventStore
from domain import job

_decode_state = msgspec.json.Decoder(job.JobState).decode


async def load_job(store: EventStore, job_id: str) -> job.JobState | None:
    """The job folded up to its last event; None if it does not exist.

    The projection may lag, so it only saves folding from the start: every event after the
    row's version is folded on top, which makes the answer exact.
    """
    row = await store.pool.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
    state = _decode_state(row) if row is not None else None
    tail = await store.read_stream(job.stream_id(job_id), state.version + 1 if state else 1)
    for e in tail:
        state = job.evolve(state, e.data, e.recorded_at, e.version)
    return state
