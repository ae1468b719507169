"""The facts a unit's lease is judged on (domain/lease.py), read from the log itself.

The grant is the job's StageStarted of the unit; the renewal that counts is the latest heartbeat
of the lease's node that lists the unit (heartbeats are in one stream per node and UTC day,
`domain.node.heartbeat_stream_id`). Both are read from `events`, not from a projection, so a
projection that trails the log never makes a live node's lease look expired; and the time they
are judged at is the database's clock, the one that stamped them (`recorded_at`).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from spool.adapters.event_store import EVENT_COLUMNS, EventStore
from spool.domain import job, lease, node

# The job's last StageStarted, if it began the job's current unit and no event since has ended
# that attempt (`lease.ATTEMPT_ENDERS`: a unit id comes back after a restart from download).
_STARTED = f"""
SELECT {EVENT_COLUMNS} FROM (
    SELECT * FROM events WHERE stream_id = $1 AND type = '{job.StageStarted.__name__}'
    ORDER BY version DESC LIMIT 1
) AS started
WHERE data->>'stage' = $2 AND (data->>'run')::int = $3 AND (data->>'attempt')::int = $4
  AND NOT EXISTS (
    SELECT 1 FROM events later
    WHERE later.stream_id = $1 AND later.version > started.version AND later.type = ANY($5::text[])
  )
"""
_ENDERS = [cls.__name__ for cls in lease.ATTEMPT_ENDERS]

_ENDED = """
SELECT recorded_at FROM events WHERE stream_id = $1 AND type = ANY($2::text[])
ORDER BY version DESC LIMIT 1
"""

# Read backwards from the stream's end: the latest beat listing the unit is found at once while
# the node runs it, and when the node died with it.
_RENEWAL = f"""
SELECT {EVENT_COLUMNS} FROM events
WHERE stream_id = $1 AND type = '{node.NodeHeartbeat.__name__}'
  AND data->'running' ? $2 AND recorded_at >= $3
ORDER BY version DESC LIMIT 1
"""

_LAST_BEAT = "SELECT recorded_at FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1"


async def database_now(store: EventStore) -> datetime:
    """The database's clock now: the one every `recorded_at` was read from."""
    now: datetime = await store.pool.fetchval("SELECT clock_timestamp()")
    return now


async def granted(store: EventStore, state: job.JobState, ttl: timedelta) -> lease.Lease | None:
    """The lease of the job's current unit as its StageStarted granted it; None if no node
    has started that unit."""
    row = await store.pool.fetchrow(
        _STARTED, job.stream_id(state.job_id), state.stage, state.run, state.attempt, _ENDERS
    )
    if row is None:
        return None
    started = store.decode(row)
    assert isinstance(started.data, job.StageStarted)
    return lease.granted(state.job_id, started.data, started.recorded_at, ttl)


async def current_since(store: EventStore, job_id: str) -> datetime | None:
    """When the job's current unit became current: the last event that ended an attempt
    (`lease.ATTEMPT_ENDERS`); None for the first unit of the job's first run."""
    at: datetime | None = await store.pool.fetchval(_ENDED, job.stream_id(job_id), _ENDERS)
    return at


def _days(since: datetime, now: datetime) -> list[date]:
    """The UTC days from `now`'s back to `since`'s, newest first."""
    days, day = [], now.date()
    while day >= since.date():
        days.append(day)
        day -= timedelta(days=1)
    return days


async def renewed(store: EventStore, held: lease.Lease, now: datetime) -> lease.Lease:
    """The lease renewed by the latest heartbeat of its node that lists its unit.

    Only beats that could still keep it alive at `now` are looked for (recorded within its ttl
    before `now`, and after its grant): an older one leaves it as expired as none does."""
    since = max(held.granted_at, now - held.ttl)
    for day in _days(since, now):
        stream = node.heartbeat_stream_id(held.node_id, day)
        row = await store.pool.fetchrow(_RENEWAL, stream, held.unit, since)
        if row is not None:
            beat = store.decode(row)
            assert isinstance(beat.data, node.NodeHeartbeat)
            return lease.renewed(held, beat.data, beat.recorded_at)
    return held


async def heard_since(store: EventStore, node_id: str, since: datetime, now: datetime) -> bool:
    """Whether the node has sent any heartbeat since `since` (listing what it may)."""
    for day in _days(since, now):
        last = await store.pool.fetchval(_LAST_BEAT, node.heartbeat_stream_id(node_id, day))
        if last is not None:
            return bool(last >= since)
    return False
