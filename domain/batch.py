"""Batches: jobs created together (bulk, or the entries of a playlist or feed), maybe paused."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, NamedTuple, get_args

import msgspec

from spool.domain import job
from spool.domain.aggregate import Aggregate
from spool.domain.errors import Conflict, InvalidTransition
from spool.domain.events import Event, event

BatchKind = Literal["bulk", "playlist"]
BatchStatus = Literal["paused", "processing", "cancelled"]
"""Where the batch's own stream stands: what its commands (start, cancel, rename) look at."""
ShownStatus = Literal["paused", "processing", "completed", "cancelled"]
"""The status every read shows (`status_of`): a started batch whose jobs all ended is completed."""
JOB_STATUSES: tuple[job.JobStatus, ...] = get_args(job.JobStatus)


@event
class BatchCreated(Event, frozen=True, kw_only=True):
    batch_id: str
    account_id: str
    kind: BatchKind
    job_ids: list[str]
    paused: bool = False
    source_url: str | None = None
    title: str | None = None


@event
class BatchStarted(Event, frozen=True, kw_only=True):
    started_jobs: int


@event
class BatchCancelled(Event, frozen=True, kw_only=True):
    cancelled_jobs: int


@event
class BatchPaused(Event, frozen=True, kw_only=True):
    """The started batch was paused: its jobs that have not started wait (domain/pause.py)."""


@event
class BatchResumed(Event, frozen=True, kw_only=True):
    """The batch's pause was lifted: its waiting jobs are dispatched."""


class BatchState(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    account_id: str
    kind: BatchKind
    job_ids: list[str]
    status: BatchStatus
    source_url: str | None = None
    title: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    version: int = 0
    paused: bool = False
    """Paused after its start (`BatchPaused`); one created paused has status `paused` instead."""


def stream_id(batch_id: str) -> str:
    """The event stream that holds one batch."""
    return f"batch-{batch_id}"


def start(state: BatchState, held_jobs: int) -> list[Event]:
    """Start a paused batch; its held jobs are released by the caller."""
    if state.status != "paused":
        raise InvalidTransition(f"Batch is {state.status}. Only paused batches can be started.")
    return [BatchStarted(started_jobs=held_jobs)]


def require_paused_for_rename(state: BatchState) -> None:
    """Renames are only for a batch that has not started."""
    if state.status != "paused":
        raise InvalidTransition("Batch is not paused. Only paused batches can be renamed.")


def cancel(state: BatchState, cancelled_jobs: int) -> list[Event]:
    """Cancel a batch that is not cancelled yet; its jobs are cancelled by the caller."""
    if state.status == "cancelled":
        raise InvalidTransition("Batch is already cancelled")
    return [BatchCancelled(cancelled_jobs=cancelled_jobs)]


def pause(state: BatchState) -> list[Event]:
    """Pause a started batch: its jobs that have not started do not start. A batch not yet
    started is held already, and one paused already needs nothing; a cancelled one cannot be."""
    if state.status == "cancelled":
        raise Conflict("Batch is cancelled and cannot be paused")
    return [] if state.status == "paused" or state.paused else [BatchPaused()]


def resume(state: BatchState) -> list[Event]:
    """Lift a started batch's pause; a batch not yet started is started, not resumed."""
    if state.status == "paused":
        raise InvalidTransition("Batch has not started. Start it with POST /batch/{id}/start.")
    return [BatchResumed()] if state.paused else []


def evolve(state: BatchState | None, ev: Event, at: datetime, version: int) -> BatchState:
    """Apply one recorded event to a batch's state."""
    if isinstance(ev, BatchCreated):
        return BatchState(
            batch_id=ev.batch_id,
            account_id=ev.account_id,
            kind=ev.kind,
            job_ids=list(ev.job_ids),
            status="paused" if ev.paused else "processing",
            source_url=ev.source_url,
            title=ev.title,
            created_at=at,
            started_at=None if ev.paused else at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before BatchCreated")
    if isinstance(ev, BatchStarted):
        return msgspec.structs.replace(state, status="processing", started_at=at, version=version)
    if isinstance(ev, BatchCancelled):
        return msgspec.structs.replace(state, status="cancelled", version=version)
    if isinstance(ev, BatchPaused | BatchResumed):
        return msgspec.structs.replace(state, paused=isinstance(ev, BatchPaused), version=version)
    return msgspec.structs.replace(state, version=version)


AGGREGATE: Aggregate[BatchState] = Aggregate(
    name="batch",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(BatchCreated, BatchStarted, BatchCancelled, BatchPaused, BatchResumed),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types

fold = AGGREGATE.fold
"""A batch's own events, in stream order, folded into its state."""


# -- what every read shows -------------------------------------------------------------------
# A batch's status and counts depend on its jobs, which live in streams of their own. These
# functions are the one definition: `GET /batch/{id}` applies them to the jobs folded exactly,
# `spool replay batch` to the jobs' streams, and the jobs projection to the `jobs` rows it
# writes in the same transaction, storing the result in the `batches` row that
# `reporting.batches` reads.


class JobFacts(NamedTuple):
    """What a batch reads of one of its jobs."""

    status: job.JobStatus
    file_size: int | None
    finished_at: datetime | None


def facts_of(state: job.JobState) -> JobFacts:
    """The facts of a folded job that its batch counts."""
    return JobFacts(state.status, state.file_size, state.finished_at)


class Summary(NamedTuple):
    """A batch as every surface shows it."""

    status: ShownStatus
    counts: dict[str, int]
    """Its jobs by status, every status named (zero included)."""
    progress: float
    """Percent of its jobs that ended (completed, failed or cancelled), one decimal."""
    bytes_uploaded: int
    """The total size of its completed jobs' files."""
    last_finished_at: datetime | None


def status_of(state: BatchState, counts: dict[str, int]) -> ShownStatus:
    """The status shown: the batch's own, except that a started batch whose jobs all ended
    (completed, failed or cancelled) is `completed`. A retried job makes it `processing` again."""
    total = sum(counts.values())
    unfinished = total - sum(counts.get(s, 0) for s in job.TERMINAL)
    if state.status == "processing" and total and not unfinished:
        return "completed"
    return state.status


def summarize(state: BatchState, jobs: Iterable[JobFacts]) -> Summary:
    """The batch's shown status, job counts, progress and bytes, from its jobs' facts."""
    facts = list(jobs)
    counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
    for f in facts:
        counts[f.status] += 1
    finished = sum(counts[s] for s in job.TERMINAL)
    ended = [f.finished_at for f in facts if f.finished_at is not None]
    return Summary(
        status=status_of(state, counts),
        counts=counts,
        progress=round(100.0 * finished / len(facts), 1) if facts else 0.0,
        bytes_uploaded=sum(f.file_size or 0 for f in facts if f.status == "Completed"),
        last_finished_at=max(ended, default=None),
    )
