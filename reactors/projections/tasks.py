"""The `tasks` table: each task's folded state, as the task API lists it and the scheduler plans."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.tables import tasks
from spool.domain import task
from spool.domain.events import RecordedEvent

_encode = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(task.TaskState).decode

# One jsonb array in, columns extracted in SQL (as the jobs projection does).
_UPSERT = """
INSERT INTO tasks (task_id, account_id, task_type, status, priority, priority_rank, payload,
                   requirements, metadata, device_id, attempt, retry_count, max_retries,
                   timeout_seconds, reason, result, error, created_at, updated_at, assigned_at,
                   started_at, completed_at, execution_time_seconds, version, state)
SELECT s->>'task_id', s->>'account_id', s->>'task_type', s->>'status', s->>'priority',
       (t.rank)::int, s->'payload', s->'requirements', s->'metadata', s->>'device_id',
       coalesce((s->>'attempt')::int, 0), coalesce((s->>'retry_count')::int, 0),
       coalesce((s->'requirements'->>'max_retries')::int, 0),
       coalesce((s->'requirements'->>'timeout_seconds')::int, 0), s->>'reason',
       s->'result_data', s->>'error', (s->>'created_at')::timestamptz,
       (s->>'updated_at')::timestamptz, (s->>'assigned_at')::timestamptz,
       (s->>'started_at')::timestamptz, (s->>'completed_at')::timestamptz,
       (s->>'execution_time_seconds')::double precision, coalesce((s->>'version')::int, 0), s
FROM unnest($1::jsonb[], $2::int[]) AS t(s, rank)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status, priority = excluded.priority,
    priority_rank = excluded.priority_rank, device_id = excluded.device_id,
    attempt = excluded.attempt, retry_count = excluded.retry_count, reason = excluded.reason,
    result = excluded.result, error = excluded.error, updated_at = excluded.updated_at,
    assigned_at = excluded.assigned_at, started_at = excluded.started_at,
    completed_at = excluded.completed_at,
    execution_time_seconds = excluded.execution_time_seconds, version = excluded.version,
    state = excluded.state
WHERE tasks.version < excluded.version
"""


class TasksProjection:
    name = "tasks"
    tables: Sequence[sa.Table] = (tasks,)
    event_types: frozenset[str] = task.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        first: dict[str, int] = {}
        for e in events:
            first.setdefault(e.stream_id.removeprefix("task-"), e.version)
        touched = [task_id for task_id, version in first.items() if version > 1]
        rows = (
            await conn.fetch(
                "SELECT t.task_id, t.state FROM unnest($1::text[]) AS u(task_id) "
                "JOIN tasks t USING (task_id)",
                touched,
            )
            if touched
            else []
        )
        states: dict[str, task.TaskState | None] = {r[0]: _decode_state(r[1]) for r in rows}
        for e in events:
            task_id = e.stream_id.removeprefix("task-")
            current = states.get(task_id)
            if current is not None and e.version <= current.version:
                continue  # already applied (a rebuild overlapping the live runner)
            states[task_id] = task.evolve(current, e.data, e.recorded_at, e.version)
        done = [s for s in states.values() if s is not None]
        if done:
            await conn.execute(_UPSERT, [_encode(s) for s in done], [s.priority_rank for s in done])


def decode_state(raw: bytes) -> task.TaskState:
    """A row's `state` column as a TaskState."""
    return _decode_state(raw)
