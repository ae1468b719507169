"""Batches through the repository: loaded from their stream (short: folded whole, exact), and
started with their held jobs in one unit of work."""

from __future__ import annotations

from dataclasses import replace

from spool.adapters.event_store import EventStore
from spool.adapters.history import AsOf
from spool.adapters.job_store import jobs
from spool.adapters.repository import Repository, UnitOfWork, execute_many
from spool.domain import batch, job
from spool.domain.events import Metadata


def batches(store: EventStore) -> Repository[batch.BatchState]:
    """The batches' repository: a batch stream holds a few events, folded whole."""
    return Repository(store, batch.AGGREGATE)


async def load_batch(
    store: EventStore, batch_id: str, as_of: AsOf | None = None
) -> batch.BatchState | None:
    """The batch as it stands (or stood at `as_of`); None if it did not exist."""
    return await batches(store).load(batch_id, as_of)


async def start_batch(
    store: EventStore, batch_id: str, meta: Metadata, *, tries: int = 1
) -> list[job.JobState]:
    """Start a paused batch: `BatchStarted` and each held job's `JobReleased`, appended together
    at the versions read. The jobs it released, as they were before.

    InvalidTransition when the batch is not paused; ChangingTooFast when the batch or one of its
    held jobs changed meanwhile on every try (one by default: the caller answers the clash).
    """
    job_repository, batch_repository = jobs(store), batches(store)

    async def work(unit: UnitOfWork) -> list[job.JobState]:
        state = await unit.load(batch_repository, batch_id)
        if state is None:
            return []
        held = []
        for job_id in state.job_ids:
            found = await unit.load(job_repository, job_id)
            if found is not None and found.held and not found.terminal:
                held.append(found)
        started = batch.start(state, len(held))
        for j in held:
            unit.record(job_repository, j.job_id, job.release(j))
        unit.record(batch_repository, batch_id, started)
        return held

    return await execute_many(store, work, meta, tries=tries)


async def cancel_batch(
    store: EventStore, batch_id: str, cancelled_jobs: int, meta: Metadata, *, tries: int = 1
) -> batch.BatchState | None:
    """Record that the batch was cancelled (its jobs are cancelled by the caller, one by one);
    the batch after it. InvalidTransition when it already was; ChangingTooFast as above."""
    repository = replace(batches(store), tries=tries)
    decided = await repository.execute(batch_id, lambda s: batch.cancel(s, cancelled_jobs), meta)
    return decided.state
