"""Viewer commands: record the sessions an external media server reports, all or nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from spool.adapters.event_store import EventStore
from spool.adapters.repository import ChangingTooFast, Loaded, UnitOfWork, execute_many
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.adapters.viewer_store import load_viewers, viewers
from spool.domain import viewer
from spool.domain.errors import Conflict, InvalidCommand, NotFound
from spool.domain.events import Event, Metadata

_REFUSED: dict[type[Exception], Callable[[str], Exception]] = {
    viewer.InvalidViewer: InvalidCommand,
    viewer.ViewerNotFound: NotFound,
    viewer.ViewerClosed: Conflict,
    viewer.ViewerExists: Conflict,
}
"""How a refused item refuses the whole report."""


class _Item(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass


class ConnectItem(_Item, tag="connect", tag_field="type"):
    """A session began. `id` may be left out: one is made. Client facts given here win over
    what the User-Agent and the address tell."""

    harness_type: str
    state: str
    id: str | None = None
    application_id: str = ""
    stream_key: str = ""
    remote_address: str = ""
    user_agent: str = ""
    device_type: str = ""
    os_name: str = ""
    browser_name: str = ""
    country_code: str = ""
    country_name: str = ""
    start_time: int | None = None
    bitrate: int = 0
    node_id: str = ""


class StatsItem(_Item, tag="stats", tag_field="type"):
    id: str
    in_bandwidth: int
    out_bandwidth: int
    in_total_bytes: int
    out_total_bytes: int
    bitrate: int | None = None


class StateItem(_Item, tag="state", tag_field="type"):
    id: str
    state: str


class DisconnectItem(_Item, tag="disconnect", tag_field="type"):
    """A goodbye; totals left out stay at the last ones reported."""

    id: str
    in_total_bytes: int | None = None
    out_total_bytes: int | None = None


Item = ConnectItem | StatsItem | StateItem | DisconnectItem


def _decide(
    item: Item,
    viewer_id: str,
    existing: viewer.ViewerState | None,
    recorder: ViewerRecorder,
    node_id: str,
    now: float,
) -> list[Event]:
    """The events an item asks for, decided on the viewer as it stands."""
    if isinstance(item, ConnectItem):
        facts = recorder.describe(item.user_agent, item.remote_address)
        explicit_country = bool(item.country_code or item.country_name)
        connected = viewer.ViewerConnected(
            viewer_id=viewer_id,
            harness_type=item.harness_type,
            state=item.state,
            application_id=item.application_id,
            stream_key=item.stream_key,
            remote_address=item.remote_address,
            user_agent=item.user_agent,
            device_type=item.device_type or facts.device_type,
            os_name=item.os_name or facts.os_name,
            browser_name=item.browser_name or facts.browser_name,
            # A given code and name travel together; never a looked-up name beside another code.
            country_code=item.country_code if explicit_country else facts.country_code,
            country_name=item.country_name if explicit_country else facts.country_name,
            started_at=int(now * 1000) if item.start_time is None else item.start_time,
            bitrate=item.bitrate,
            node_id=item.node_id or node_id,
        )
        return viewer.connect(existing, connected)
    if isinstance(item, StatsItem):
        return viewer.report_stats(
            existing,
            viewer_id,
            in_bandwidth=item.in_bandwidth,
            out_bandwidth=item.out_bandwidth,
            in_total_bytes=item.in_total_bytes,
            out_total_bytes=item.out_total_bytes,
            bitrate=item.bitrate,
        )
    if isinstance(item, StateItem):
        return viewer.change_state(existing, viewer_id, item.state)
    return viewer.disconnect(
        existing,
        viewer_id,
        in_total_bytes=item.in_total_bytes,
        out_total_bytes=item.out_total_bytes,
    )


async def report_viewer_events(
    store: EventStore,
    recorder: ViewerRecorder,
    items: list[Item],
    meta: Metadata,
    *,
    reporter: str,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Record every item's event, or none: the first refused item refuses the report, naming
    its index (InvalidCommand, NotFound or Conflict). The viewer id of each item, in order.

    `reporter` is the node id a connect without its own `nodeId` is recorded under.
    """
    ids = [
        (item.id or viewer.new_viewer_id()) if isinstance(item, ConnectItem) else item.id
        for item in items
    ]
    made = {i for item, i in zip(items, ids, strict=True) if isinstance(item, ConnectItem)} - {
        item.id for item in items if item.id
    }
    repository = viewers(store)

    async def report(unit: UnitOfWork) -> list[str]:
        # Read together (one query for the rows): a fresh id has nothing to read, nor has one
        # too long to be an id (viewer.connect says so).
        states: dict[str, viewer.ViewerState | None] = dict.fromkeys(ids)
        states.update(
            await load_viewers(store, [v for v in states if v not in made and len(v) <= 64])
        )
        for viewer_id, state in states.items():
            unit.know(repository, viewer_id, Loaded(state, state.version if state else 0))
        now = clock()
        at = datetime.fromtimestamp(now, UTC)
        for index, (item, viewer_id) in enumerate(zip(items, ids, strict=True)):
            try:
                events = _decide(item, viewer_id, states[viewer_id], recorder, reporter, now)
            except tuple(_REFUSED) as exc:
                raise _REFUSED[type(exc)](f"events[{index}]: {exc}") from None
            for ev in events:
                before = states[viewer_id]
                version = (before.version if before else 0) + 1
                states[viewer_id] = viewer.evolve(before, ev, at, version)
            unit.record(repository, viewer_id, events)
        return ids

    try:
        # Once: a viewer that changed while the report was checked refuses the report.
        return await execute_many(store, report, meta, tries=1)
    except ChangingTooFast:
        raise Conflict(
            "A viewer in this request changed while it was checked; send it again"
        ) from None
