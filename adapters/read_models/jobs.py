"""The `jobs` read model: each job's folded state, as `GET /jobs` answers it; and, in the same
transaction, the `batches` rows.

Batches are kept here because what a batch shows depends on its jobs (`domain.batch.summarize`):
summed up in the transaction that writes the `jobs` rows, a batch's row always agrees with
them, in a live catch-up and in a rebuild alike (adapters/read_models/batches.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters import live_progress
from spool.adapters.event_store import EVENT_COLUMNS
from spool.adapters.read_models import batches as batch_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.read_models import pauses
from spool.adapters.read_models.state_projection import Field, StateProjection, StateRows
from spool.adapters.read_models.state_projection import RowAndTail as StateRowAndTail
from spool.adapters.tables import metadata
from spool.domain import batch, job, pause
from spool.domain.events import RecordedEvent
from spool.domain.job_query import JobQuery

HOST_OF_URL = (
    "lower(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\\[[^]]*\\]|[^:/?#]+)'))"
)
"""The host of a job's source URL, lower-cased (`JobQuery.host`): what follows the scheme and
any user info, up to a port, path, query or fragment."""

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("version", sa.Integer, nullable=False),
    # The whole folded JobState, so the row is exactly the fold of the stream.
    sa.Column("state", pg.JSONB, nullable=False),
    # The shape `state` was written in: the projection stamps every row it writes with
    # domain.job.AGGREGATE.snapshot_version, and a row stamped otherwise is not used as a
    # snapshot (`ROWS.load`, `row_and_tail`). The default stamps rows older than the column.
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(job.AGGREGATE.snapshot_version)),
    ),
    sa.Index("jobs_account_created_idx", "account_id", sa.text("created_at DESC"), "job_id"),
    sa.Index("jobs_batch_idx", "batch_id", postgresql_where=sa.text("batch_id IS NOT NULL")),
    # What `JobQuery` filters on beside the columns above (migration 0022): generated from the
    # row's own values, so every write, replay and rebuild keeps them without a line of code.
    sa.Column("host", sa.Text, sa.Computed(HOST_OF_URL, persisted=True)),
    sa.Column("labels", pg.JSONB, sa.Computed("state -> 'labels'", persisted=True)),
    sa.Index("jobs_account_host_idx", "account_id", "host"),
    sa.Index(
        "jobs_labels_idx",
        "labels",
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
    ),
    # The jobs of a subscription (migration 0031), by when they finished: its retention pass
    # (`past_retention`) and `JobQuery.subscription_id` read them without the account's others.
    sa.Index(
        "jobs_subscription_idx",
        sa.text("(state ->> 'subscription_id')"),
        "finished_at",
        postgresql_where=sa.text("(state ->> 'subscription_id') IS NOT NULL"),
    ),
    # A Failed job's failure group (domain/failure_groups.py): `failures` groups by it.
    sa.Column("failure_group", sa.Text),
    sa.Index(
        "jobs_account_failure_idx",
        "account_id",
        "failure_group",
        postgresql_where=sa.text("failure_group IS NOT NULL"),
    ),
)

ROWS = StateRows(
    jobs,
    Field("job_id", ("job_id",), fixed=True),
    [
        Field("account_id", ("account_id",), fixed=True),
        Field("batch_id", ("batch_id",)),
        Field("url", ("url",), fixed=True),
        Field("status", ("status",)),
        Field("step", ("step",)),
        Field("created_at", ("created_at",), "timestamptz", fixed=True),
        Field("updated_at", ("updated_at",), "timestamptz"),
        Field("finished_at", ("finished_at",), "timestamptz"),
        Field("version", ("version",), "int", default=0),
        Field("state", (), "jsonb"),
        Field("failure_group", ("failure_group",), computed=True),
    ],
    job.JobState,
    snapshot=job.AGGREGATE,
)

JOBS = StateProjection(
    name="jobs",
    stream=job.stream_id(""),
    event_types=job.EVENT_TYPES,
    evolve=job.evolve,
    rows=ROWS,
    watch=batch.facts_of,
)
"""The jobs' rows; what a batch counts of each job is watched, so its batch is summed again."""


class JobsProjection:
    name = "jobs"
    tables: Sequence[sa.Table] = (jobs, batch_rows.batches)
    event_types: frozenset[str] = job.EVENT_TYPES | batch.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        job_events = [e for e in events if e.stream_id.startswith(JOBS.stream)]
        batch_events = [e for e in events if e.stream_id.startswith(batch_rows.BATCHES.stream)]
        changed = await self._apply_jobs(conn, job_events) if job_events else set()
        if batch_events or changed:
            await batch_rows.apply(conn, batch_events, changed)

    async def _apply_jobs(
        self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]
    ) -> set[str]:
        """Write the jobs' rows; the batches whose jobs changed status, size or end."""
        applied = await JOBS.fold_onto(conn, events)
        if applied.changed:
            await ROWS.write(conn, applied.changed_states(), applied.stored)
        changed: set[str] = set()
        for k in applied.changed:
            state = applied.states[k].state
            if state.batch_id is not None and batch.facts_of(state) != applied.before[k]:
                changed.add(state.batch_id)
        return changed


# -- queries ---------------------------------------------------------------------------------

RowAndTail = StateRowAndTail[job.JobState]
"""A job's row as a snapshot and the events its stream holds after it."""


async def row_and_tail(executor: asyncpg.Pool | asyncpg.Connection, job_id: str) -> RowAndTail:
    """The job's row, if it has one of `job.AGGREGATE.snapshot_version`, and every event of its
    stream after the row's version (all of them without such a row), in version order: every
    job read of the API and of the nodes makes it."""
    return await ROWS.row_and_tail(executor, job_id)


# The same for many jobs in one round trip: the job id first, then as `row_and_tail` reads.
_ROWS_AND_TAILS = f"""
SELECT r.job_id, j.state, t.*
FROM unnest($1::text[]) AS r(job_id)
LEFT JOIN jobs j ON j.job_id = r.job_id AND j.snapshot_version = $2
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events
    WHERE stream_id = 'job-' || r.job_id AND version > coalesce(j.version, 0)
    ORDER BY version
) AS t ON true
ORDER BY r.job_id, t.version
"""


async def rows_and_tails(
    executor: asyncpg.Pool | asyncpg.Connection, job_ids: Sequence[str]
) -> dict[str, RowAndTail]:
    """`row_and_tail` of each of `job_ids`, in one query."""
    found: dict[str, RowAndTail] = {}
    for r in await executor.fetch(_ROWS_AND_TAILS, list(job_ids), job.AGGREGATE.snapshot_version):
        if r[0] not in found:
            state = ROWS.decode(r[1]) if r[1] is not None else None
            found[r[0]] = RowAndTail(state, [])
        if r[2] is not None:
            found[r[0]].tail.append(tuple(r)[2:])
    return found


# `row_and_tail`'s read with a node's download gate (`nodes.gate`, four columns first) and the
# paused scopes that could hold the job back (NULL without a row to name its account) in the same
# round trip: what a node reads before it starts a download (reactors/worker/stages_runner.py).
_PAUSED_OF_ROW = pauses.PAUSED_OF.format(account="j.account_id", batch="j.batch_id")
_GATED_ROW_AND_TAIL = f"""
SELECT g.*, CASE WHEN j.job_id IS NULL THEN NULL ELSE ({_PAUSED_OF_ROW}) END, j.state, t.*
FROM (SELECT 1) AS one
LEFT JOIN ({node_rows.GATE_OF.format("$4")}) AS g ON true
LEFT JOIN jobs j ON j.job_id = $1 AND j.snapshot_version = $3
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events
    WHERE stream_id = $2 AND version > coalesce(j.version, 0)
    ORDER BY version
) AS t ON true
ORDER BY t.version
"""


class Gated(NamedTuple):
    """A job's row and tail, its node's gate, and the paused scopes that could hold the job
    back (None: the job has no row to name its account and batch; ask `pauses`)."""

    found: RowAndTail
    gate: node_rows.Gate
    paused: set[pause.Scope] | None


async def gated_row_and_tail(
    executor: asyncpg.Pool | asyncpg.Connection, job_id: str, node_id: str
) -> Gated:
    """`row_and_tail` of the job, `nodes.gate` of the node and the job's paused scopes, in one
    query."""
    rows = await executor.fetch(
        _GATED_ROW_AND_TAIL, job_id, job.stream_id(job_id), job.AGGREGATE.snapshot_version, node_id
    )
    first = tuple(rows[0])
    state = ROWS.decode(first[5]) if first[5] is not None else None
    tail: list[Sequence[Any]] = [tuple(r)[6:] for r in rows if r[6] is not None]
    paused = None if first[4] is None else pauses.scopes_from(first[4])
    return Gated(RowAndTail(state, tail), node_rows.gate_of(first[:4]), paused)


class JobsFound(NamedTuple):
    """A page of an account's jobs, newest first (each with its current unit's live progress),
    and the key of its last row."""

    states: list[job.JobState]
    more: bool
    last: tuple[datetime, str] | None


_ESCAPE_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})


def like_anywhere(text: str) -> str:
    """An ILIKE pattern for `text` anywhere, its own `%`, `_` and `\\` taken literally."""
    return f"%{text.translate(_ESCAPE_LIKE)}%"


def where(query: JobQuery, accounts: Sequence[str] | None, args: list[Any]) -> str:
    """The SQL condition on `jobs` that `query` means, for jobs of `accounts` (None: every
    account's), its values appended to `args` as positional parameters: the one builder behind
    `page` and `matching`. `q` and `error` are ILIKE over the account's rows (no trigram index:
    the embedded server need not have pg_trgm)."""

    def arg(value: Any, cast: str = "") -> str:
        args.append(value)
        return f"${len(args)}{cast}"

    found: list[str] = []
    if accounts is not None:
        if len(accounts) == 1:
            found.append(f"account_id = {arg(accounts[0])}")
        else:
            found.append(f"account_id = ANY({arg(list(accounts), '::text[]')})")
    if query.status:
        found.append(f"status = ANY({arg(list(query.status), '::text[]')})")
    if query.batch_id is not None:
        found.append(f"batch_id = {arg(query.batch_id)}")
    if query.labels:
        found.append(f"labels @> {arg(_json(query.labels), '::jsonb')}")
    if query.host is not None:
        found.append(f"host = {arg(query.host)}")
    for column, after, before in (
        ("created_at", query.created_after, query.created_before),
        ("finished_at", query.finished_after, query.finished_before),
    ):
        if after is not None:
            found.append(f"{column} >= {arg(after, '::timestamptz')}")
        if before is not None:
            found.append(f"{column} < {arg(before, '::timestamptz')}")
    if query.error_type is not None:
        found.append(f"state->>'error_type' = {arg(query.error_type)}")
    if query.error is not None:
        found.append(f"state->>'error' ILIKE {arg(like_anywhere(query.error))}")
    if query.failure_group is not None:  # set on Failed jobs only (domain/failure_groups.py)
        found.append(f"failure_group = {arg(query.failure_group)}")
    if query.subscription_id is not None:
        found.append(f"state->>'subscription_id' = {arg(query.subscription_id)}")
    if query.q is not None:
        text = arg(like_anywhere(query.q))
        found.append(
            f"(url ILIKE {text} OR state->>'title' ILIKE {text}"
            f" OR state->'options'->>'filename' ILIKE {text} OR state->>'key' ILIKE {text})"
        )
    return " AND ".join(found) or "true"


_json = msgspec.json.Encoder().encode


async def page(
    pool: asyncpg.Pool,
    account_id: str,
    query: JobQuery,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
    live_within: timedelta,
) -> JobsFound:
    """An account's jobs that match `query`, newest first, `after` the (created_at, job_id) of
    a previous page's last row, each with the live progress of its current unit sent within
    `live_within` (adapters/live_progress.py); `more` says whether another page follows."""
    args: list[Any] = [live_within]
    condition = where(query, [account_id], args)
    if after is not None:
        condition += f" AND (created_at, job_id) < (${len(args) + 1}, ${len(args) + 2})"
        args += [after[0], after[1]]
    args.append(limit + 1)
    live = live_progress.LIVE_OF_JOB.format(job_id="jobs.job_id", fresh="$1")
    rows = await pool.fetch(
        f"SELECT state, created_at, job_id, ({live}) AS live FROM jobs WHERE {condition}"
        f" ORDER BY created_at DESC, job_id DESC LIMIT ${len(args)}",
        *args,
    )
    shown = rows[:limit]
    return JobsFound(
        [live_progress.shown(ROWS.decode(r[0]), live_progress.decode(r[3])) for r in shown],
        len(rows) > limit,
        (shown[-1][1], shown[-1][2]) if shown else None,
    )


async def completed(
    pool: asyncpg.Pool, account_id: str, query: JobQuery, *, limit: int
) -> list[job.JobState]:
    """Up to `limit` of an account's Completed jobs that match `query` and still have their
    file, the latest finished first: what a podcast feed lists (api/feeds.py)."""
    args: list[Any] = []
    condition = where(msgspec.structs.replace(query, status=["Completed"]), [account_id], args)
    args.append(limit)
    rows = await pool.fetch(
        f"SELECT state FROM jobs WHERE {condition} AND state->>'key' IS NOT NULL"
        " AND NOT coalesce((state->>'file_deleted')::boolean, false)"
        f" ORDER BY finished_at DESC NULLS LAST, job_id DESC LIMIT ${len(args)}",
        *args,
    )
    return [ROWS.decode(r[0]) for r in rows]


# A subscription's items that still have their file, newest finished first (`place` 1 is the
# newest), as a podcast feed lists them; and whether any item's row lags its stream.
_PAST_RETENTION = """
WITH items AS (
    SELECT job_id, finished_at, version,
           row_number() OVER (ORDER BY finished_at DESC NULLS LAST, job_id DESC) AS place
    FROM jobs
    WHERE account_id = $1 AND state->>'subscription_id' = $2 AND status = 'Completed'
      AND state->>'key' IS NOT NULL
      AND NOT coalesce((state->>'file_deleted')::boolean, false)
)
SELECT i.job_id, EXISTS (
    SELECT 1 FROM items l
    WHERE EXISTS (
        SELECT 1 FROM events e WHERE e.stream_id = 'job-' || l.job_id AND e.version > l.version
    )
) AS lagging
FROM items i
WHERE i.place > $3 OR i.finished_at < $4
ORDER BY i.finished_at NULLS FIRST, i.job_id
LIMIT $5
"""


class PastRetention(NamedTuple):
    """The items past a subscription's retention, oldest first; `settled`: no item's row lags
    its stream, so the places they were judged by are the log's."""

    job_ids: list[str]
    settled: bool


async def past_retention(
    pool: asyncpg.Pool,
    account_id: str,
    subscription_id: str,
    *,
    keep_last: int | None,
    cutoff: datetime | None,
    limit: int,
) -> PastRetention:
    """Up to `limit` of the subscription's items whose file goes, oldest finished first: an
    item is a Completed job of it whose file is still stored (jobs not completed, and files
    already deleted, are not items), placed newest finished first; it goes when it is not among
    the `keep_last` newest, or when it finished before `cutoff` (domain.subscription.Retention:
    either bound is enough)."""
    rows = await pool.fetch(_PAST_RETENTION, account_id, subscription_id, keep_last, cutoff, limit)
    return PastRetention([r[0] for r in rows], not any(r[1] for r in rows))


class Matched(NamedTuple):
    """The ids of jobs a query matched (oldest first), and how many matched in all."""

    job_ids: list[str]
    total: int


async def matching(
    db: asyncpg.Pool | asyncpg.Connection,
    accounts: Sequence[str] | None,
    query: JobQuery,
    *,
    limit: int,
) -> Matched:
    """The ids of up to `limit` jobs of `accounts` (None: all) that match `query`, oldest
    first, and the count of all that match: what a bulk action snapshots when it is asked."""
    args: list[Any] = []
    condition = where(query, accounts, args)
    args.append(limit)
    rows = await db.fetch(
        f"SELECT job_id, count(*) OVER () FROM jobs WHERE {condition}"
        f" ORDER BY created_at, job_id LIMIT ${len(args)}",
        *args,
    )
    return Matched([r[0] for r in rows], rows[0][1] if rows else 0)


async def count_by_status_step(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """How many jobs there are of each (status, step): rows of status, step, count."""
    return list(await pool.fetch("SELECT status, step, count(*) FROM jobs GROUP BY status, step"))


async def stage_times(pool: asyncpg.Pool, buckets: Sequence[float]) -> list[asyncpg.Record]:
    """Per stage, the finished stages' times (s) as a histogram: rows of stage, n, total, then
    one count per bucket (stages that took at most that long)."""
    return list(
        await pool.fetch(
            f"""
            SELECT t.key AS stage, count(*) AS n, sum(s) AS total,
                   {", ".join(f"count(*) FILTER (WHERE s <= {float(b)})" for b in buckets)}
            FROM jobs, jsonb_each(state->'timings') AS t,
                 LATERAL (SELECT (t.value->>'seconds')::float8 AS s) AS v
            WHERE t.value ? 'seconds'
            GROUP BY t.key
            """
        )
    )


# A unit waits from the event that made it current (the job's creation, release or retry, the
# previous stage's completion, a failed attempt's retry) until a node starts it: its job is
# neither finished nor held and shows no progress (`domain.job.evolve` sets `progress` on
# StageStarted and clears it on every hand-on). Defaults are omitted from `state`: a missing
# `stage` is download, a missing `held` is false.
_OLDEST_WAITING = """
SELECT coalesce(state->>'stage', 'download') AS stage,
       extract(epoch FROM now() - min(updated_at))::float8 AS age
FROM jobs
WHERE status <> ALL($1::text[]) AND NOT state ? 'progress'
  AND NOT coalesce((state->>'held')::boolean, false)
GROUP BY 1
"""


async def oldest_waiting(pool: asyncpg.Pool) -> dict[str, float]:
    """Per stage, how long (s) the oldest unit waiting for a node has waited; 0 for a stage
    with none waiting, so every stage is always reported."""
    waiting: dict[str, float] = {stage: 0.0 for stage in job.STEP_OF}
    for row in await pool.fetch(_OLDEST_WAITING, _TERMINAL):
        waiting[row["stage"]] = max(0.0, row["age"])
    return waiting


_BY_STATUS = """
SELECT status, count(*), count(*) FILTER (WHERE created_at >= $2)
FROM jobs WHERE account_id = $1 GROUP BY status
"""


async def count_by_status(
    pool: asyncpg.Pool, account_id: str, since: datetime
) -> list[asyncpg.Record]:
    """An account's jobs by status now: rows of status, how many, how many created `since`."""
    return list(await pool.fetch(_BY_STATUS, account_id, since))


_LONGEST = """
SELECT coalesce(max(ceil((state->>'duration')::float8)), 0)::bigint FROM jobs
WHERE account_id = $1 AND state ? 'duration'
"""


async def longest_media(pool: asyncpg.Pool, account_id: str) -> int:
    """The longest media (whole seconds) any of the account's jobs fetched; 0 for none."""
    return int(await pool.fetchval(_LONGEST, account_id))


# Events the projection has not applied yet (those after its checkpoint): each JobCreated is a
# job not finished (counted in today if recorded since `$2`), and each JobRetried of a job the
# rows still show finished ($3) is one running again.
_CREATED, _RETRIED = job.JobCreated.__name__, job.JobRetried.__name__
_UNPROJECTED = f"""
SELECT count(*) FILTER (WHERE e.type = '{_CREATED}') AS created,
       count(*) FILTER (WHERE e.type = '{_CREATED}' AND e.recorded_at >= $2) AS today,
       count(*) FILTER (WHERE e.type = '{_RETRIED}' AND EXISTS (
           SELECT 1 FROM jobs j WHERE j.job_id = substr(e.stream_id, 5)  -- after 'job-'
             AND j.account_id = $1 AND j.status = ANY($3::text[]))) AS retried
FROM events e
WHERE (e.type = '{_CREATED}' AND e.data->>'account_id' = $1 OR e.type = '{_RETRIED}')
  AND (e.tx, e.position) > (
      SELECT coalesce((SELECT tx::text FROM checkpoints WHERE name = 'jobs'), '0')::xid8,
             coalesce((SELECT position FROM checkpoints WHERE name = 'jobs'), 0))
"""

_PROJECTED = """
SELECT count(*) FILTER (WHERE status <> ALL($3::text[])) AS running,
       count(*) FILTER (WHERE created_at >= $2) AS today
FROM jobs WHERE account_id = $1
"""

_TERMINAL = sorted(job.TERMINAL)


class AccountJobs(NamedTuple):
    """An account's jobs not finished, and those created since a time."""

    running: int
    today: int


async def account_jobs(
    db: asyncpg.Pool | asyncpg.Connection, account_id: str, since: datetime
) -> AccountJobs:
    """The account's jobs not finished and those created `since`: the rows plus the JobCreated
    and JobRetried events the projection has not applied yet, so exact for jobs created and
    retried (a job that just finished may count as running a moment longer)."""
    projected = await db.fetchrow(_PROJECTED, account_id, since, _TERMINAL)
    pending = await db.fetchrow(_UNPROJECTED, account_id, since, _TERMINAL)
    return AccountJobs(
        running=projected["running"] + pending["created"] + pending["retried"],
        today=projected["today"] + pending["today"],
    )


_UNFINISHED = """
SELECT job_id, updated_at < now() - $2::interval AS quiet FROM jobs
WHERE status <> ALL($1::text[]) AND (status = 'Processing' OR updated_at < now() - $2::interval)
"""


async def unfinished(pool: asyncpg.Pool, quiet: timedelta) -> list[tuple[str, bool]]:
    """Jobs not finished (`domain.job.TERMINAL`) that are processing or whose row has not
    changed for `quiet`; each with whether it has been quiet that long."""
    rows = await pool.fetch(_UNFINISHED, sorted(job.TERMINAL), quiet)
    return [(r[0], bool(r[1])) for r in rows]


_decode_options = msgspec.json.Decoder(job.JobOptions).decode


async def options_of(conn: asyncpg.Connection, job_id: str) -> job.JobOptions:
    """The options a job was created with (the defaults for a job without a row yet)."""
    raw = await conn.fetchval("SELECT state->'options' FROM jobs WHERE job_id = $1", job_id)
    return _decode_options(raw) if raw else job.JobOptions()


class FailureGroup(NamedTuple):
    """Failed jobs that failed the same way (domain/failure_groups.py)."""

    group_id: str
    error_type: str
    message: str
    """One of the group's failure messages, as recorded (the caller normalises it)."""
    job_count: int
    first_failed_at: datetime
    last_failed_at: datetime
    job_ids: list[str]
    """The latest to fail first, at most `FAILURE_SAMPLE`."""


FAILURE_SAMPLE = 5
"""Job ids a failure group shows."""

_FAILURES = f"""
SELECT failure_group, min(coalesce(state->>'error_type', 'error')), min(state->>'error'),
       count(*), min(finished_at), max(finished_at),
       (array_agg(job_id ORDER BY finished_at DESC, job_id))[1:{FAILURE_SAMPLE}]
FROM jobs
WHERE failure_group IS NOT NULL AND status = 'Failed'
  AND ($1::text IS NULL OR account_id = $1)
  AND ($2::timestamptz IS NULL OR finished_at >= $2)
GROUP BY failure_group
ORDER BY count(*) DESC, max(finished_at) DESC, failure_group
LIMIT $3
"""


async def failures(
    pool: asyncpg.Pool, account_id: str | None, *, since: datetime | None, limit: int
) -> list[FailureGroup]:
    """The groups of the Failed jobs of `account_id` (None: every account's) that failed
    `since`, most jobs first, at most `limit`."""
    rows = await pool.fetch(_FAILURES, account_id, since, limit)
    return [FailureGroup(r[0], r[1], r[2], r[3], r[4], r[5], list(r[6])) for r in rows]


_WAITING = """
SELECT state FROM jobs
WHERE status = 'Pending' AND ($1::text IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR batch_id = $2) AND job_id > $3
ORDER BY job_id
LIMIT $4
"""


async def waiting(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    account_id: str | None = None,
    batch_id: str | None = None,
    after: str = "",
    limit: int = 500,
) -> list[job.JobState]:
    """Jobs whose run has not started (`Pending`), of an account or a batch or all, by job id
    after `after`: what a lifted pause dispatches (reactors/pipeline.py)."""
    rows = await db.fetch(_WAITING, account_id, batch_id, after, limit)
    return [ROWS.decode(r[0]) for r in rows]
