"""Loading a job's exact current state: the projection row as a snapshot, plus the stream's tail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from spool.adapters.event_store import EventStore
from spool.adapters.history import AsOf
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.repository import Executor, Loaded, Repository, folded_on
from spool.domain import job, pause


async def _load_row_and_tail(
    store: EventStore, job_id: str, executor: Executor
) -> Loaded[job.JobState]:
    """The projection row as a snapshot, every event after its version folded on top.

    The projection may lag, so it only saves folding from the start: every event after the
    row's version is folded on top, which makes the answer exact. A row of another snapshot
    version is not used: the whole stream is folded.
    """
    state = _folded(store, await job_rows.row_and_tail(executor, job_id))
    return Loaded(state, state.version if state is not None else 0)


def _folded(store: EventStore, found: job_rows.RowAndTail) -> job.JobState | None:
    """The row's state with its stream's tail folded on."""
    return folded_on(store, job.AGGREGATE, found.state, found.tail)


def jobs(store: EventStore) -> Repository[job.JobState]:
    """The jobs' repository: reads start from the `jobs` projection row."""
    return Repository(store, job.AGGREGATE, loader=_load_row_and_tail)


async def load_job(store: EventStore, job_id: str) -> job.JobState | None:
    """The job folded up to its last event; None if it does not exist."""
    return await jobs(store).load(job_id)


class GatedJob(NamedTuple):
    """A job as `load_job` gives it, its node's download gate and the paused scopes that could
    hold it back (None: unknown, as `job_rows.Gated` says)."""

    state: job.JobState | None
    gate: node_rows.Gate
    paused: set[pause.Scope] | None


async def load_job_gated(store: EventStore, job_id: str, node_id: str) -> GatedJob:
    """`load_job`, the node's download gate (`nodes.gate`) and the job's paused scopes, read in
    one query."""
    gated = await job_rows.gated_row_and_tail(store.pool, job_id, node_id)
    return GatedJob(_folded(store, gated.found), gated.gate, gated.paused)


async def load_jobs(store: EventStore, job_ids: Sequence[str]) -> dict[str, job.JobState]:
    """Each of `job_ids` that exists, folded up to its last event, read in one query (a row
    as a snapshot and its stream's tail each, as `load_job` reads one)."""
    found = await job_rows.rows_and_tails(store.pool, job_ids)
    states = {job_id: _folded(store, row) for job_id, row in found.items()}
    return {job_id: state for job_id, state in states.items() if state is not None}


async def load_job_as_of(store: EventStore, job_id: str, as_of: AsOf) -> job.JobState | None:
    """The job as it stood at `as_of`, folded from its first event; None if it did not exist."""
    return await jobs(store).load(job_id, as_of)
