"""Batch commands: create a bulk batch, start a paused batch, cancel one, rename its jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from spool.adapters import batch_store
from spool.adapters.batch_store import batches
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs, load_job
from spool.adapters.repository import ChangingTooFast
from spool.application.idempotency import Idempotent, append_once
from spool.application.jobs import Created, NewJob, plan_batch
from spool.application.ownership import decide_owned, load_owned
from spool.domain import batch, job
from spool.domain.errors import ConcurrencyError, Conflict, InvalidTransition
from spool.domain.events import Event, Metadata


class BulkAnswer(msgspec.Struct):
    batch_id: str
    total_jobs: int
    job_ids: list[str]


class JobRename(msgspec.Struct, frozen=True):
    """One job to rename; `refused` says why its filename was found invalid (None: valid)."""

    job_id: str
    filename: str
    refused: str | None = None


class RenameError(msgspec.Struct):
    job_id: str
    error: str


class RenameAnswer(msgspec.Struct):
    updated: int
    errors: list[RenameError]


class BatchChanged(NamedTuple):
    """The batch a command changed, and how many of its jobs it changed with it."""

    batch_id: str
    jobs: int


async def create_bulk(
    store: EventStore,
    account_id: str,
    new_jobs: list[NewJob],
    *,
    paused: bool,
    idem: Idempotent | None,
    meta: Metadata,
) -> Created[BulkAnswer]:
    """A batch of all the jobs, or none: one over the quotas refuses them all."""
    plan = plan_batch(meta, account_id, new_jobs, kind="bulk", paused=paused)
    answer = BulkAnswer(batch_id=plan.batch_id, total_jobs=len(plan.job_ids), job_ids=plan.job_ids)
    earlier = await append_once(store, plan.appends, answer, idem, meta, quota_account=account_id)
    return Created(answer, earlier)


async def owned_batch(store: EventStore, account_id: str, raw_id: str) -> batch.BatchState:
    """A batch of the account's; NotFound for anyone else's."""
    return await load_owned(batches(store), account_id, raw_id, "Batch")


async def batch_jobs(store: EventStore, state: batch.BatchState) -> list[job.JobState]:
    """The batch's jobs, each exact to its last event."""
    found = [await load_job(store, job_id) for job_id in state.job_ids]
    return [j for j in found if j is not None]


async def start_batch(
    store: EventStore, account_id: str, batch_id: str, meta: Metadata
) -> BatchChanged:
    """Start a paused batch and release its held jobs, in one transaction."""
    state = await owned_batch(store, account_id, batch_id)
    try:
        held = await batch_store.start_batch(store, state.batch_id, meta)
    except ConcurrencyError:
        raise Conflict("The batch changed meanwhile; try again") from None
    return BatchChanged(state.batch_id, len(held))


async def cancel_batch(
    store: EventStore, account_id: str, batch_id: str, meta: Metadata
) -> BatchChanged:
    """Cancel every unfinished job of a batch, then the batch."""
    state = await owned_batch(store, account_id, batch_id)
    cancelled = 0
    for job_id in state.job_ids:
        if await _recorded(store, meta, job_id, job.cancel):
            cancelled += 1
    try:
        await batch_store.cancel_batch(store, state.batch_id, cancelled, meta)
    except ConcurrencyError:
        raise Conflict("The batch changed meanwhile; try again") from None
    return BatchChanged(state.batch_id, cancelled)


async def rename_jobs(
    store: EventStore, account_id: str, batch_id: str, renames: list[JobRename], meta: Metadata
) -> RenameAnswer:
    """Rename jobs of a paused batch; each rename that cannot be made is reported, not raised."""
    state = await owned_batch(store, account_id, batch_id)
    batch.require_paused_for_rename(state)
    errors: list[RenameError] = []
    updated = 0
    members = set(state.job_ids)
    for r in renames:
        if r.job_id not in members:
            errors.append(RenameError(r.job_id, "Job is not in this batch"))
        elif r.refused is not None:
            errors.append(RenameError(r.job_id, r.refused))
        elif await _recorded(store, meta, r.job_id, _renaming(r.filename)):
            updated += 1
        else:
            errors.append(RenameError(r.job_id, "Job is no longer waiting in the batch"))
    return RenameAnswer(updated=updated, errors=errors)


def _renaming(filename: str) -> Callable[[job.JobState], list[Event]]:
    return lambda state: job.rename(state, filename)


async def _recorded(
    store: EventStore,
    meta: Metadata,
    job_id: str,
    decide: Callable[[job.JobState], list[Event]],
) -> bool:
    """Whether the command (cancel, rename: they refuse rather than do nothing) was recorded."""
    try:
        done = await jobs(store).execute(job_id, decide, meta)
    except (InvalidTransition, ChangingTooFast):
        return False
    return done.state is not None


async def _decide_batch(
    store: EventStore,
    account_id: str,
    batch_id: str,
    decision: Callable[[batch.BatchState], list[Event]],
    meta: Metadata,
) -> batch.BatchState:
    return await decide_owned(batches(store), account_id, batch_id, "Batch", decision, meta)


async def pause_batch(
    store: EventStore, account_id: str, batch_id: str, meta: Metadata
) -> batch.BatchState:
    """Pause a started batch: its jobs that have not started wait; running ones go on."""
    return await _decide_batch(store, account_id, batch_id, batch.pause, meta)


async def resume_batch(
    store: EventStore, account_id: str, batch_id: str, meta: Metadata
) -> batch.BatchState:
    """Lift a batch's pause; the pipeline dispatches its waiting jobs."""
    return await _decide_batch(store, account_id, batch_id, batch.resume, meta)
