"""Loading viewers for a decision (the events API): exactly the fold of each stream, yet reading
only the events the projection has not seen (none when it is current) and, for a disconnected
viewer, only its first and last events."""

from __future__ import annotations

from typing import Any

from spool.adapters.event_store import EventStore
from spool.adapters.viewer_store import load_viewers, viewers
from spool.domain import viewer
from spool.domain.aggregate import steps
from spool.domain.events import RecordedEvent
from spool.reactors.projection import ProjectionRunner
from tests.test_viewers_projection import append, connected, stats, unique


class CountingStore(EventStore):
    """The real store over the same pool; it also counts the events its stream reads return."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store.pool)
        self.read = 0

    async def read_stream(self, stream_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        events = await super().read_stream(stream_id, *args, **kw)
        self.read += len(events)
        return events


async def load_one(store: EventStore, viewer_id: str) -> tuple[viewer.ViewerState | None, int]:
    """The viewer as `load_viewers` gives it, and how many events it read for that."""
    counting = CountingStore(store)
    state = (await load_viewers(counting, [viewer_id]))[viewer_id]
    return state, counting.read


async def folded(store: EventStore, viewer_id: str) -> viewer.ViewerState | None:
    return viewer.fold(steps(await store.read_stream(viewer.stream_id(viewer_id))))


async def playing(store: EventStore, viewer_id: str, reports: int) -> None:
    """A viewer connected, then `reports` stats, as a long session leaves its stream."""
    await append(store, viewer_id, connected(viewer_id, unique(), bitrate=800_000))
    await append(store, viewer_id, *[stats(viewer_id, 100_000, n * 1000) for n in range(reports)])


async def test_a_projected_viewer_is_its_row_and_no_event_is_read(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
    await playing(store, vid, 300)
    await append(store, vid, viewer.ViewerStateChanged(viewer_id=vid, state="PAUSED"))
    await runner.settle("viewers")
    assert await load_one(store, vid) == (await folded(store, vid), 0)


async def test_events_the_projection_has_not_seen_are_folded_onto_the_row(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
    await playing(store, vid, 300)
    await runner.settle("viewers")
    await append(store, vid, stats(vid, 50_000, 400_000, bitrate=1_000_000))
    await append(store, vid, viewer.ViewerStateChanged(viewer_id=vid, state="PAUSED"))
    # The runner is not running: the row lags by two events.
    state, read = await load_one(store, vid)
    assert (state, read) == (await folded(store, vid), 2)
    assert state is not None and (state.version, state.bitrate) == (303, 1_000_000)


async def test_a_disconnected_viewer_is_read_from_its_first_and_last_events(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
    await playing(store, vid, 300)
    goodbye = viewer.ViewerDisconnected(
        viewer_id=vid, reason="closed", in_total_bytes=0, out_total_bytes=500_000
    )
    await append(store, vid, goodbye)
    await runner.settle("viewers")  # its row is gone
    state, read = await load_one(store, vid)
    assert state is not None and read == 2
    assert (state.closed, state.version, state.out_total_bytes) == (True, 302, 500_000)
    # What the events API decides on it is what the full fold decides.
    full = await folded(store, vid)
    assert full is not None and (full.closed, full.version) == (state.closed, state.version)


async def test_a_viewer_not_projected_yet_and_an_unknown_one(store: EventStore) -> None:
    young, unknown = f"v_{unique()}", f"v_{unique()}"
    await playing(store, young, 2)
    loaded = await load_viewers(store, [young, unknown, young])
    assert loaded == {young: await folded(store, young), unknown: None}


async def test_the_viewers_repository_reads_through_the_row_and_folds_as_of(
    store: EventStore, runner: ProjectionRunner
) -> None:
    vid = f"v_{unique()}"
    await playing(store, vid, 3)
    await runner.settle("viewers")
    [first, *_] = await store.read_stream(viewer.stream_id(vid))

    assert await viewers(store).load(vid) == await folded(store, vid)
    then = await viewers(store).load(vid, as_of=first.position)
    assert then is not None and (then.version, then.measured) == (1, False)
