"""The operation aggregate: a bulk action over the jobs a `JobQuery` matched (`POST
/jobs/actions`), each job it acted on, skipped or failed on, in its own stream.

The jobs are fixed when the operation is asked for: `OperationRequested.job_ids` holds them
(at most `MAX_JOBS`, oldest first), so a job created later is never swept in. The operation
handles them in that order, one event each at `index`: `next` in the state is the first job not
handled, which is what makes a resumed operation go on where it stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event, event
from spool.domain.job_query import JobQuery

Action = Literal["cancel", "retry", "pause", "resume", "delete_file"]
Outcome = Literal["done", "skipped", "failed"]
OperationStatus = Literal["running", "finished"]

MAX_JOBS = 10_000
"""Jobs one operation may act on; a filter matching more is refused (a dry run counts them)."""
MAX_RUNNING = 3
"""Operations of one account running at once."""


@event
class OperationRequested(Event, frozen=True, kw_only=True):
    """A user asked for `action` on the jobs `filter` matched, `job_ids` (oldest first).

    `accounts`: the accounts whose jobs it may touch (the requester's; None: every account,
    an admin's `all_accounts`). A dry run only counts: `matched` may then exceed `MAX_JOBS`,
    and `job_ids` is empty."""

    operation_id: str
    account_id: str
    accounts: list[str] | None
    action: Action
    filter: JobQuery
    dry_run: bool = False
    matched: int
    job_ids: list[str] = msgspec.field(default_factory=list)


@event
class OperationJobDone(Event, frozen=True, kw_only=True):
    """The action was taken on the job (its own events are caused by this operation)."""

    index: int
    job_id: str


@event
class OperationJobSkipped(Event, frozen=True, kw_only=True):
    """The job could not take the action (a retry of a completed job, a job gone): not a
    failure of the operation."""

    index: int
    job_id: str
    reason: str


@event
class OperationJobFailed(Event, frozen=True, kw_only=True):
    """The action was refused for a reason other than the job's state (a quota, a storage)."""

    index: int
    job_id: str
    reason: str


@event
class OperationFinished(Event, frozen=True, kw_only=True):
    """Every job was handled (or none was to be: a dry run, nothing matched)."""


class OperationState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An operation folded from its events: what `GET /operations/{id}` shows (without the
    job ids, which stay in the request's event)."""

    operation_id: str
    account_id: str
    accounts: list[str] | None
    action: Action
    filter: JobQuery
    dry_run: bool = False
    status: OperationStatus
    matched: int
    next: int = 0
    """The index of the first job not handled yet."""
    done: int = 0
    skipped: int = 0
    failed: int = 0
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    version: int = 0


def stream_id(operation_id: str) -> str:
    """The event stream that holds one operation."""
    return f"operation-{operation_id}"


# -- decide ----------------------------------------------------------------------------------


def request(
    *,
    operation_id: str,
    account_id: str,
    accounts: list[str] | None,
    action: Action,
    filter: JobQuery,
    dry_run: bool,
    matched: int,
    job_ids: list[str],
) -> list[Event]:
    """Ask for an operation; a dry run, or one that matched nothing, is finished at once."""
    requested = OperationRequested(
        operation_id=operation_id,
        account_id=account_id,
        accounts=accounts,
        action=action,
        filter=filter,
        dry_run=dry_run,
        matched=matched,
        job_ids=[] if dry_run else list(job_ids),
    )
    if dry_run or not job_ids:
        return [requested, OperationFinished()]
    return [requested]


def handle(
    state: OperationState, index: int, job_id: str, outcome: Outcome, reason: str | None
) -> list[Event]:
    """Record what came of the job at `index`: it must be the next one, so no job is handled
    twice; the last one finishes the operation."""
    if state.status == "finished" or index != state.next:
        raise InvalidTransition(
            f"operation {state.operation_id} is at job {state.next} ({state.status}), not {index}"
        )
    handled: Event
    if outcome == "done":
        handled = OperationJobDone(index=index, job_id=job_id)
    elif outcome == "skipped":
        handled = OperationJobSkipped(index=index, job_id=job_id, reason=reason or "")
    else:
        handled = OperationJobFailed(index=index, job_id=job_id, reason=reason or "")
    return [handled, OperationFinished()] if index + 1 >= state.matched else [handled]


# -- evolve ----------------------------------------------------------------------------------


def evolve(state: OperationState | None, ev: Event, at: datetime, version: int) -> OperationState:
    """Apply one recorded event to an operation's state."""
    if isinstance(ev, OperationRequested):
        if state is not None:
            raise InvalidTransition(f"operation {ev.operation_id} requested twice")
        return OperationState(
            operation_id=ev.operation_id,
            account_id=ev.account_id,
            accounts=ev.accounts,
            action=ev.action,
            filter=ev.filter,
            dry_run=ev.dry_run,
            status="running",
            matched=ev.matched,
            created_at=at,
            updated_at=at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before OperationRequested")
    replace = msgspec.structs.replace
    if isinstance(ev, OperationJobDone):
        return replace(
            state, next=ev.index + 1, done=state.done + 1, updated_at=at, version=version
        )
    if isinstance(ev, OperationJobSkipped):
        return replace(
            state, next=ev.index + 1, skipped=state.skipped + 1, updated_at=at, version=version
        )
    if isinstance(ev, OperationJobFailed):
        return replace(
            state, next=ev.index + 1, failed=state.failed + 1, updated_at=at, version=version
        )
    if isinstance(ev, OperationFinished):
        return replace(state, status="finished", finished_at=at, updated_at=at, version=version)
    return replace(state, updated_at=at, version=version)


AGGREGATE: Aggregate[OperationState] = Aggregate(
    name="operation",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(
        OperationRequested,
        OperationJobDone,
        OperationJobSkipped,
        OperationJobFailed,
        OperationFinished,
    ),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types
"""Every event type an operation stream holds."""

fold = AGGREGATE.fold
