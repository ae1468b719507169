"""Replay verification: fold streams from the log again and compare them with projection rows.

A projection trails the log, so each is compared only up to its own checkpoint, inside one
read-only repeatable-read snapshot in which a checkpoint and the rows it produced agree (they
commit together). Streams are listed through a server-side cursor and read a page at a time,
so memory stays flat however long the log is.

Checked: `jobs` (every column, and the folded state key by key), `tasks` (likewise), batches
(the job ids each batch stream names against the `jobs` rows that carry its batch id, and the
`batches` rows, their status and counts summed up from those `jobs` rows), `usage_daily`
(each account's counters per day, summed from the job streams), `job_stages` (each job's
stage attempts) and `job_minutes` (counters per minute).

Not checked: `node_minutes`, a rollup of heartbeats that keeps its figures after the heartbeat
events are archived, so the log is not its measure; nor `nodes`, `usage_minutes` and `viewers`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, NamedTuple

import asyncpg
import msgspec

from spool.adapters.event_store import Checkpoint, EventStore
from spool.adapters.read_models import batches as batch_rows
from spool.adapters.read_models import job_minutes, job_stages
from spool.adapters.read_models import usage as usage_rows
from spool.adapters.read_models.jobs import JOBS as JOBS_MODEL
from spool.adapters.read_models.state_projection import StateProjection
from spool.adapters.read_models.tasks import TASKS as TASKS_MODEL
from spool.adapters.read_models.usage import COUNTERS, UsageProjection
from spool.domain import batch, job, task
from spool.domain.errors import InvalidTransition
from spool.domain.events import RecordedEvent
from spool.reactors.projection import ProjectionRunner

PAGE = 500
"""Streams read and compared at a time."""


class Difference(NamedTuple):
    """One value the projection holds that the fold of the stream does not give."""

    stream_id: str
    column: str
    projected: Any
    folded: Any


MISSING = "<no row>"
"""What a side shows for a row that does not exist."""


class Verified(NamedTuple):
    """How many streams (or rows) each check compared, and how many differed."""

    checked: dict[str, int]
    differences: int


Found = Callable[[Difference], None]


def _diff(stream_id: str, column: str, projected: Any, folded: Any) -> Iterator[Difference]:
    """Every leaf that differs, named by its path (`state.status`)."""
    if isinstance(projected, dict) and isinstance(folded, dict):
        for key in sorted(projected.keys() | folded.keys(), key=str):
            yield from _diff(
                stream_id,
                f"{column}.{key}",
                projected.get(key, MISSING),
                folded.get(key, MISSING),
            )
    elif projected != folded:
        yield Difference(stream_id, column, projected, folded)


# -- what each row should be -----------------------------------------------------------------


@dataclass(frozen=True)
class RowCheck:
    """A read model with one row per stream, each row the fold of its stream (`model.fold`, the
    read model's own `row`)."""

    projection: str
    """The checkpoint its rows are written under."""
    first_type: str
    """The type of a stream's first event."""
    model: StateProjection[Any]

    @property
    def prefix(self) -> str:
        return self.model.stream


JOBS = RowCheck(JOBS_MODEL.name, job.JobCreated.__name__, JOBS_MODEL)
BATCHES = RowCheck(
    JOBS_MODEL.name,  # the jobs projection keeps the batches table
    batch.BatchCreated.__name__,
    batch_rows.BATCHES,
)
TASKS = RowCheck(TASKS_MODEL.name, task.TaskSubmitted.__name__, TASKS_MODEL)


# -- reading ---------------------------------------------------------------------------------

# Every stream that had begun by the checkpoint: its first event is of the opening type.
_STREAMS = """
SELECT stream_id FROM events
WHERE version = 1 AND type = $1 AND (tx, position) <= ($2::text::xid8, $3::bigint)
ORDER BY stream_id
"""


async def _checkpoint(conn: asyncpg.Connection, name: str) -> Checkpoint:
    row = await conn.fetchrow("SELECT tx, position FROM checkpoints WHERE name = $1", name)
    return Checkpoint(row["tx"], row["position"]) if row else Checkpoint()


async def _stream_pages(
    conn: asyncpg.Connection, first_type: str, at: Checkpoint
) -> AsyncIterator[list[str]]:
    cursor = await conn.cursor(_STREAMS, first_type, str(at.tx), at.position)
    while page := [r[0] for r in await cursor.fetch(PAGE)]:
        yield page


def _by_stream(events: Sequence[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    out: dict[str, list[RecordedEvent]] = defaultdict(list)
    for e in events:
        out[e.stream_id].append(e)
    return out


# -- checks ----------------------------------------------------------------------------------


async def _check_rows(
    conn: asyncpg.Connection, store: EventStore, check: RowCheck, found: Found
) -> tuple[int, int]:
    """Compare every stream of `check` with its row, and every row with its stream."""
    at = await _checkpoint(conn, check.projection)
    checked = differences = 0
    async for page in _stream_pages(conn, check.first_type, at):
        streams = _by_stream(await store.read_streams(page, at, conn=conn))
        keys = [s.removeprefix(check.prefix) for s in page]
        # Only the columns the fold gives: a column added for reporting is not this check's.
        rows = await check.model.stored(conn, keys)
        for stream_id, key in zip(page, keys, strict=True):
            checked += 1
            projected = rows.get(key)
            try:
                folded = check.model.fold(streams[stream_id])
            except InvalidTransition as exc:
                found(
                    Difference(
                        stream_id, "events", _presence(projected), f"cannot be folded: {exc}"
                    )
                )
                differences += 1
                continue
            if projected is None or folded is None:
                if projected != folded:
                    found(Difference(stream_id, "row", _presence(projected), _presence(folded)))
                    differences += 1
                continue
            if projected == folded:
                continue  # the common case: no walk through every key of the state
            for column in check.model.rows.columns:
                for d in _diff(stream_id, column, projected[column], folded[column]):
                    found(d)
                    differences += 1
    # Rows whose stream had not begun by the checkpoint (or never did).
    async for extra in check.model.without_stream(conn, at, PAGE):
        for key in extra:
            checked += 1
            differences += 1
            found(Difference(check.prefix + key, "row", "present", MISSING))
    return checked, differences


def _presence(row: object | None) -> str:
    return MISSING if row is None else "present"


async def _check_batches(
    conn: asyncpg.Connection, store: EventStore, found: Found
) -> tuple[int, int]:
    """Each batch stream's job ids against the `jobs` rows that carry its batch id, and the
    `batches` row's status and counts against `domain.batch.summarize` of those rows (checked
    against their own streams by the `jobs` check).

    A batch is created in the same transaction as its jobs, and the jobs projection writes both
    tables, so the jobs checkpoint cuts both.
    """
    at = await _checkpoint(conn, "jobs")
    checked = differences = 0
    async for page in _stream_pages(conn, BATCHES.first_type, at):
        streams = _by_stream(await store.read_streams(page, at, conn=conn))
        ids = [s.removeprefix("batch-") for s in page]
        members = await batch_rows.jobs_of(conn, ids)
        rows = await batch_rows.summaries(conn, ids)
        for stream_id, batch_id in zip(page, ids, strict=True):
            checked += 1
            state = batch.fold([(e.data, e.recorded_at, e.version) for e in streams[stream_id]])
            folded = sorted(state.job_ids) if state else []
            projected = sorted(members[batch_id])
            if projected != folded:
                found(Difference(stream_id, "jobs.batch_id", projected, folded))
                differences += 1
            row = rows.get(batch_id)
            if state is None or row is None:
                continue  # the row check reports a missing row
            expected = batch_rows.summary_row(batch.summarize(state, members[batch_id].values()))
            for column, value in expected.items():
                if row[column] != value:
                    found(Difference(stream_id, column, row[column], value))
                    differences += 1
    return checked, differences


def add_usage(
    totals: dict[tuple[str, date], dict[str, int]], events: Sequence[RecordedEvent]
) -> None:
    """Add one job stream's events to the per account and UTC day counters of `usage_daily`."""
    if not events or not isinstance(events[0].data, job.JobCreated):
        return
    account = events[0].data.account_id
    uploaded = 0  # the last upload's size: what a FileDeleted frees
    for e in events:
        ev = e.data
        if e.type not in UsageProjection.event_types:
            continue
        row = totals.setdefault(
            (account, e.recorded_at.astimezone(UTC).date()), dict.fromkeys(COUNTERS, 0)
        )
        if isinstance(ev, job.FileDeleted):
            row["bytes_deleted"] += uploaded
            continue
        if isinstance(ev, job.JobCompleted):
            uploaded = ev.size
        job.count(row, ev)


def _upto(events: Sequence[RecordedEvent], at: Checkpoint) -> Sequence[RecordedEvent]:
    """The events a projection at checkpoint `at` has applied."""
    if not events or (events[-1].tx, events[-1].position) <= at:
        return events
    return [e for e in events if (e.tx, e.position) <= at]


class _JobFolds:
    """What one pass over every job stream gathers for the checks that fold job streams.

    `usage_daily`, `job_stages` and `job_minutes` each compare up to their own checkpoint; the
    streams are read once, up to the furthest, and each check sees only its part of them.
    """

    def __init__(self, usage_at: Checkpoint, stages_at: Checkpoint, minutes_at: Checkpoint):
        self.usage_at, self.stages_at, self.minutes_at = usage_at, stages_at, minutes_at
        self.usage: dict[tuple[str, date], dict[str, int]] = {}
        self.minutes: dict[datetime, dict[str, int]] = {}
        self.stages_checked = self.stages_differences = 0


async def _fold_job_streams(conn: asyncpg.Connection, store: EventStore, found: Found) -> _JobFolds:
    """Read every job stream once: sum the usage and minute counters, compare stage rows."""
    folds = _JobFolds(
        await _checkpoint(conn, "usage"),
        await _checkpoint(conn, "job_stages"),
        await _checkpoint(conn, "job_minutes"),
    )
    at = max(folds.usage_at, folds.stages_at, folds.minutes_at)
    async for page in _stream_pages(conn, JOBS.first_type, at):
        streams = _by_stream(await store.read_streams(page, at, conn=conn))
        keys = [s.removeprefix("job-") for s in page]
        projected: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for k, row in (await job_stages.rows_of(conn, keys)).items():
            projected[k[0]][_stage_name(k[1], k[2], k[3])] = msgspec.structs.asdict(row)
        for stream_id, key in zip(page, keys, strict=True):
            events = streams[stream_id]
            add_usage(folds.usage, _upto(events, folds.usage_at))
            job_minutes.add(folds.minutes, _upto(events, folds.minutes_at))
            staged = _upto(events, folds.stages_at)
            if not staged:
                continue  # begun after the stage projection's checkpoint: its orphan check
            folds.stages_checked += 1
            folded = {
                _stage_name(k[1], k[2], k[3]): msgspec.structs.asdict(row)
                for k, row in job_stages.fold(staged).items()
            }
            rows = projected.get(key, {})
            if rows == folded:
                continue
            for d in _diff(stream_id, "job_stages", rows, folded):
                found(d)
                folds.stages_differences += 1
    return folds


def _stage_name(run: int, stage: str, attempt: int) -> str:
    """A stage attempt's name in a difference: `<run>.<stage>.<attempt>`."""
    return f"{run}.{stage}.{attempt}"


async def _check_usage(conn: asyncpg.Connection, folds: _JobFolds, found: Found) -> tuple[int, int]:
    """`usage_daily` against counters summed again from every job stream."""
    totals = folds.usage
    checked = differences = 0
    seen: set[tuple[str, date]] = set()
    async for page_rows in usage_rows.in_order(conn, PAGE):
        for r in page_rows:
            key = (r["account_id"], r["day"])
            seen.add(key)
            checked += 1
            folded = totals.get(key, dict.fromkeys(COUNTERS, 0))
            for column in COUNTERS:
                if r[column] != folded[column]:
                    found(Difference(f"usage {key[0]} {key[1]}", column, r[column], folded[column]))
                    differences += 1
    for key in sorted(totals.keys() - seen):
        if any(totals[key].values()):
            checked += 1
            differences += 1
            found(Difference(f"usage {key[0]} {key[1]}", "row", MISSING, "present"))
    return checked, differences


async def _check_job_stages(
    conn: asyncpg.Connection, folds: _JobFolds, found: Found
) -> tuple[int, int]:
    """The stage rows compared in the pass, plus rows of jobs whose stream had not begun."""
    checked, differences = folds.stages_checked, folds.stages_differences
    for job_id in await job_stages.without_stream(conn, folds.stages_at):
        checked += 1
        differences += 1
        found(Difference(f"job-{job_id}", "job_stages", "present", MISSING))
    return checked, differences


async def _check_job_minutes(
    conn: asyncpg.Connection, folds: _JobFolds, found: Found
) -> tuple[int, int]:
    """`job_minutes` against counters summed again from every job stream."""
    totals = folds.minutes
    checked = differences = 0
    seen: set[datetime] = set()
    async for page_rows in job_minutes.in_order(conn, PAGE):
        for r in page_rows:
            minute = r["minute"]
            seen.add(minute)
            checked += 1
            folded = totals.get(minute, dict.fromkeys(job_minutes.COUNTERS, 0))
            for column in job_minutes.COUNTERS:
                if r[column] != folded[column]:
                    name = f"job_minutes {minute.astimezone(UTC).isoformat()}"
                    found(Difference(name, column, r[column], folded[column]))
                    differences += 1
    for minute in sorted(totals.keys() - seen):
        if any(totals[minute].values()):
            checked += 1
            differences += 1
            found(Difference(f"job_minutes {minute.isoformat()}", "row", MISSING, "present"))
    return checked, differences


async def verify(store: EventStore, runner: ProjectionRunner, found: Found) -> Verified:
    """Catch the projections up, then fold every stream and report each difference to `found`."""
    await runner.catch_up()
    checked: dict[str, int] = {}
    total = 0
    async with (
        store.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        checks: list[tuple[str, Callable[[], Awaitable[tuple[int, int]]]]] = [
            ("jobs", partial(_check_rows, conn, store, JOBS, found)),
            ("tasks", partial(_check_rows, conn, store, TASKS, found)),
            ("batches", partial(_check_batches, conn, store, found)),
            ("batch_rows", partial(_check_rows, conn, store, BATCHES, found)),
        ]
        for name, check in checks:
            checked[name], differences = await check()
            total += differences
        folds = await _fold_job_streams(conn, store, found)
        for name, compare in (
            ("usage_daily", _check_usage),
            ("job_stages", _check_job_stages),
            ("job_minutes", _check_job_minutes),
        ):
            checked[name], differences = await compare(conn, folds, found)
            total += differences
    return Verified(checked, total)
