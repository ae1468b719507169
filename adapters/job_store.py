"""Loading a job's exact current state: the projection row as a snapshot, plus the stream's tail."""

from __future__ import annotations

import msgspec

from spool.adapters.event_store import EVENT_COLUMNS, EventStore
from spool.adapters.history import AsOf
from spool.adapters.repository import Executor, Loaded, Repository
from spool.domain import job

_decode_state = msgspec.json.Decoder(job.JobState).decode

# The projection row and the stream's events after it in one round trip (every job read of the
# API and of the nodes makes it): at least one row, the state (or NULL) in the first column,
# each later event in the others. A row of another snapshot version than this code's (written
# before an upgrade changed JobState) is not used: the whole stream is folded instead.
_ROW_AND_TAIL = f"""
SELECT j.state, t.*
FROM (SELECT 1) AS one
LEFT JOIN jobs j ON j.job_id = $1 AND j.snapshot_version = $3
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events
    WHERE stream_id = $2 AND version > coalesce(j.version, 0)
    ORDER BY version
) AS t ON true
ORDER BY t.version
"""


async def _load_row_and_tail(
    store: EventStore, job_id: str, executor: Executor
) -> Loaded[job.JobState]:
    """The projection row as a snapshot, every event after its version folded on top.

    The projection may lag, so it only saves folding from the start: every event after the
    row's version is folded on top, which makes the answer exact.
    """
    rows = await executor.fetch(
        _ROW_AND_TAIL, job_id, job.stream_id(job_id), job.AGGREGATE.snapshot_version
    )
    state = _decode_state(rows[0][0]) if rows[0][0] is not None else None
    for row in rows:
        if row[1] is not None:
            e = store.decode(tuple(row)[1:])
            state = job.evolve(state, e.data, e.recorded_at, e.version)
    return Loaded(state, state.version if state is not None else 0)


def jobs(store: EventStore) -> Repository[job.JobState]:
    """The jobs' repository: reads start from the `jobs` projection row."""
    return Repository(store, job.AGGREGATE, loader=_load_row_and_tail)


async def load_job(store: EventStore, job_id: str) -> job.JobState | None:
    """The job folded up to its last event; None if it does not exist."""
    return await jobs(store).load(job_id)


async def load_job_as_of(store: EventStore, job_id: str, as_of: AsOf) -> job.JobState | None:
    """The job as it stood at `as_of`, folded from its first event; None if it did not exist."""
    return await jobs(store).load(job_id, as_of)
