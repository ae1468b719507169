"""Loading viewers' current state for a decision, reading as few events as it can.

A live viewer's stream grows by one stats event every few seconds, so folding it from the start
costs more the longer it plays. The `viewers` projection row is the fold at the row's version:
it serves as a snapshot, and only the events after it (none, unless the projection lags) are
read. A disconnected viewer has no row: its first and last events say that it ended and with
which totals, which is all a decision needs of it (it takes no further events). A row of
another snapshot version than this code's is taken for no row.
"""

from __future__ import annotations

from collections.abc import Collection

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import viewers as viewer_rows
from spool.adapters.repository import Executor, Loaded, Repository
from spool.domain import viewer
from spool.domain.aggregate import steps


def viewers(store: EventStore) -> Repository[viewer.ViewerState]:
    """The viewers' repository: reads start from the `viewers` row (`load_viewers`)."""
    return Repository(store, viewer.AGGREGATE, loader=_load_one)


async def _load_one(
    store: EventStore, viewer_id: str, executor: Executor
) -> Loaded[viewer.ViewerState]:
    # The row and the stream are read through the pool: a viewer's events are never appended
    # in a caller's transaction.
    state = (await load_viewers(store, [viewer_id]))[viewer_id]
    return Loaded(state, state.version if state is not None else 0)


async def load_viewers(
    store: EventStore, viewer_ids: Collection[str]
) -> dict[str, viewer.ViewerState | None]:
    """Each viewer as its events fold it (None for one that never connected)."""
    ids = list(dict.fromkeys(viewer_ids))
    # Rows before heads: a head read later is never behind its row.
    rows = await viewer_rows.snapshots(store.pool, ids)
    heads = await store.stream_versions([viewer.stream_id(v) for v in ids])
    found: dict[str, viewer.ViewerState | None] = {}
    for viewer_id in ids:
        head, row = heads[viewer.stream_id(viewer_id)], rows.get(viewer_id)
        if head == 0:
            found[viewer_id] = None
        elif row is not None:
            state: viewer.ViewerState | None = row
            if head > row.version:  # the projection has not seen the newest events yet
                for e in await store.read_stream(viewer.stream_id(viewer_id), row.version + 1):
                    state = viewer.evolve(state, e.data, e.recorded_at, e.version)
            found[viewer_id] = state
        else:
            found[viewer_id] = await _without_row(store, viewer_id, head)
    return found


async def _without_row(store: EventStore, viewer_id: str, head: int) -> viewer.ViewerState | None:
    stream = viewer.stream_id(viewer_id)
    [last] = await store.read_stream(stream, head, limit=1)
    if not isinstance(last.data, viewer.ViewerDisconnected):
        # Connected but not projected yet: a young stream, folded whole.
        return viewer.fold(steps(await store.read_stream(stream)))
    first = await store.read_stream(stream, 1, limit=1)
    [opened] = first
    connected = viewer.evolve(None, opened.data, opened.recorded_at, opened.version)
    return viewer.evolve(connected, last.data, last.recorded_at, head)
