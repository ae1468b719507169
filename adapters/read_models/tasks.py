"""The `tasks` read model: each task's folded state, as the task API lists it and the scheduler
plans."""

from __future__ import annotations

from typing import NamedTuple

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.read_models.state_projection import Field, StateProjection, StateRows
from spool.adapters.tables import metadata
from spool.domain import task

# Scheduled tasks (domain.task): one row per task, its folded state plus the columns that
# lists, the scheduler and `/metrics` filter and aggregate on.
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("task_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("priority_rank", sa.Integer, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("requirements", pg.JSONB, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("device_id", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("timeout_seconds", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("result", pg.JSONB),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("assigned_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("execution_time_seconds", sa.Float(precision=53)),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", pg.JSONB, nullable=False),
    # The shape `state` was written in (migration 0018): a row of another is folded again.
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(task.AGGREGATE.snapshot_version)),
    ),
    sa.Index("tasks_status_rank_idx", "status", sa.text("priority_rank DESC"), "created_at"),
    sa.Index("tasks_account_created_idx", "account_id", sa.text("created_at DESC"), "task_id"),
    sa.Index("tasks_device_status_idx", "device_id", "status"),
)

ROWS = StateRows(
    tasks,
    Field("task_id", ("task_id",), fixed=True),
    [
        Field("account_id", ("account_id",), fixed=True),
        Field("task_type", ("task_type",), fixed=True),
        Field("status", ("status",)),
        Field("priority", ("priority",)),
        Field("priority_rank", ("priority_rank",), "int", computed=True),
        Field("payload", ("payload",), "jsonb", fixed=True),
        Field("requirements", ("requirements",), "jsonb", fixed=True),
        Field("metadata", ("metadata",), "jsonb", fixed=True),
        Field("device_id", ("device_id",)),
        Field("attempt", ("attempt",), "int", default=0),
        Field("retry_count", ("retry_count",), "int", default=0),
        Field("max_retries", ("requirements", "max_retries"), "int", default=0, fixed=True),
        Field("timeout_seconds", ("requirements", "timeout_seconds"), "int", default=0, fixed=True),
        Field("reason", ("reason",)),
        Field("result", ("result_data",), "jsonb"),
        Field("error", ("error",)),
        Field("created_at", ("created_at",), "timestamptz", fixed=True),
        Field("updated_at", ("updated_at",), "timestamptz"),
        Field("assigned_at", ("assigned_at",), "timestamptz"),
        Field("started_at", ("started_at",), "timestamptz"),
        Field("completed_at", ("completed_at",), "timestamptz"),
        Field("execution_time_seconds", ("execution_time_seconds",), "float8"),
        Field("version", ("version",), "int", default=0),
        Field("state", (), "jsonb"),
    ],
    task.TaskState,
    snapshot=task.AGGREGATE,
)

TASKS = StateProjection(
    name="tasks",
    stream=task.stream_id(""),
    event_types=task.EVENT_TYPES,
    evolve=task.evolve,
    rows=ROWS,
)


def decode_state(raw: bytes) -> task.TaskState:
    """A row's `state` column as a TaskState."""
    return ROWS.decode(raw)


# -- queries ---------------------------------------------------------------------------------

_LIST = """
SELECT state, count(*) OVER () AS total FROM tasks
WHERE ($1::text IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR task_type = $3)
  AND ($4::text IS NULL OR priority = $4)
  AND ($5::text IS NULL OR device_id = $5)
ORDER BY created_at DESC, task_id DESC
LIMIT $6 OFFSET $7
"""

_COUNT = """
SELECT count(*) FROM tasks
WHERE ($1::text IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR task_type = $3)
  AND ($4::text IS NULL OR priority = $4)
  AND ($5::text IS NULL OR device_id = $5)
"""


class TaskFilter(NamedTuple):
    """Which tasks a list shows; None matches any."""

    account_id: str | None
    status: str | None
    task_type: str | None
    priority: str | None
    device_id: str | None


async def page(
    pool: asyncpg.Pool, where: TaskFilter, limit: int, offset: int
) -> tuple[list[task.TaskState], int]:
    """Tasks newest first, and how many match in all."""
    rows = await pool.fetch(_LIST, *where, limit, offset)
    if rows:
        total: int = rows[0]["total"]
    else:  # past the last page: the count still answers how many there are
        total = await pool.fetchval(_COUNT, *where)
    return [decode_state(r["state"]) for r in rows], total


_BY_STATUS = """
SELECT status, count(*) FROM tasks WHERE ($1::text IS NULL OR account_id = $1) GROUP BY status
"""

_BY_TYPE = """
SELECT task_type, count(*) AS total,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'timeout') AS timeout,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       avg(execution_time_seconds) FILTER (WHERE status = 'success') AS mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY execution_time_seconds)
           FILTER (WHERE status = 'success') AS p95
FROM tasks WHERE ($1::text IS NULL OR account_id = $1)
GROUP BY task_type ORDER BY task_type
"""

_OVERALL_TIMES = """
SELECT avg(execution_time_seconds) AS mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY execution_time_seconds) AS p95
FROM tasks WHERE status = 'success' AND ($1::text IS NULL OR account_id = $1)
"""


class TaskStatistics(NamedTuple):
    """Counts by status, success times (`mean`, `p95`) overall, and per type its counts by
    status and success times (rows of task_type, total, success, failed, timeout, cancelled,
    mean, p95)."""

    by_status: dict[str, int]
    overall: asyncpg.Record
    by_type: list[asyncpg.Record]


async def statistics(pool: asyncpg.Pool, account_id: str | None) -> TaskStatistics:
    """The statistics of an account's tasks (None: every account's)."""
    counts: dict[str, int] = dict.fromkeys(task.STATUSES, 0)
    counts.update({r[0]: r[1] for r in await pool.fetch(_BY_STATUS, account_id)})
    overall = await pool.fetchrow(_OVERALL_TIMES, account_id)
    return TaskStatistics(counts, overall, list(await pool.fetch(_BY_TYPE, account_id)))


_QUEUED = """
SELECT task_id, task_type, priority, created_at, requirements, reason, version
FROM tasks WHERE status = 'queued'
ORDER BY priority_rank DESC, created_at, task_id
LIMIT $1
"""

_ACTIVE = """
SELECT task_id, status, device_id, attempt, assigned_at, version,
       coalesce(started_at, assigned_at) + timeout_seconds * interval '1 second' <= now()
           AS overdue
FROM tasks WHERE status IN ('assigned', 'running')
"""


async def queued(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """The queued tasks in the order they are planned: priority, then age."""
    return list(await pool.fetch(_QUEUED, limit))


async def active(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Assigned and running tasks, with whether their attempt is overdue."""
    return list(await pool.fetch(_ACTIVE))


async def count_by_status_type(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Tasks per (status, type): rows of status, task_type, count, seconds summed, and how many
    have a time."""
    return list(
        await pool.fetch(
            """
            SELECT status, task_type, count(*), coalesce(sum(execution_time_seconds), 0),
                   count(execution_time_seconds)
            FROM tasks GROUP BY status, task_type
            """
        )
    )


_WINDOW = """
SELECT count(*) FILTER (WHERE status = 'success') AS completed,
       count(*) FILTER (WHERE status IN ('failed', 'timeout')) AS failed,
       avg(execution_time_seconds) FILTER (WHERE status = 'success') AS avg_seconds
FROM tasks WHERE completed_at > now() - $1::int * interval '1 minute'
"""


async def window(pool: asyncpg.Pool, minutes: int) -> asyncpg.Record:
    """Tasks that ended in the last `minutes`: succeeded, failed (or timed out), and the mean
    time of those that succeeded."""
    row: asyncpg.Record = await pool.fetchrow(_WINDOW, minutes)
    return row
