"""Loading an operation (a bulk action over jobs) from its stream, and deciding on it."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import operation


def operations(store: EventStore) -> Repository[operation.OperationState]:
    """The operations' repository. A stream holds one event per job handled (at most
    `operation.MAX_JOBS` + 2): folded whole, so its answer is exact; the runner folds it once
    per pass and decides on the state it holds (`known`)."""
    return Repository(store, operation.AGGREGATE)


async def job_ids_of(store: EventStore, operation_id: str) -> list[str]:
    """The jobs an operation was asked for, in the order it handles them (its first event)."""
    [requested] = await store.read_stream(operation.stream_id(operation_id), 1, limit=1)
    assert isinstance(requested.data, operation.OperationRequested)
    return requested.data.job_ids
