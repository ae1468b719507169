"""Loading an operation (a bulk action over jobs) from its stream, and deciding on it."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import operations as operation_rows
from spool.adapters.repository import Executor, Loaded, Repository, folded_on
from spool.domain import operation


async def _load_row_and_tail(
    store: EventStore, operation_id: str, executor: Executor
) -> Loaded[operation.OperationState]:
    """The `operations` row as a snapshot, every event after its version folded on top: exact,
    and one row (plus the few events the projection has not applied yet) however many jobs."""
    found = await operation_rows.ROWS.row_and_tail(executor, operation_id)
    state = folded_on(store, operation.AGGREGATE, found.state, found.tail)
    return Loaded(state, state.version if state is not None else 0)


def operations(store: EventStore) -> Repository[operation.OperationState]:
    """The operations' repository. A stream holds one event per job handled (at most
    `operation.MAX_JOBS` + 2); reads start from the `operations` projection row. The runner
    reads it once per pass and decides on the state it holds (`known`)."""
    return Repository(store, operation.AGGREGATE, loader=_load_row_and_tail)


async def job_ids_of(store: EventStore, operation_id: str) -> list[str]:
    """The jobs an operation was asked for, in the order it handles them (its first event)."""
    [requested] = await store.read_stream(operation.stream_id(operation_id), 1, limit=1)
    assert isinstance(requested.data, operation.OperationRequested)
    return requested.data.job_ids
