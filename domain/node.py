"""Worker nodes: registration, the once-a-second heartbeat, and an admin's drain."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import NotFound
from spool.domain.events import Event, event


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    cpu_count: int
    memory_total_gb: float
    storage_total_gb: float
    has_gpu: bool = False
    stages: list[str] = msgspec.field(default_factory=list)
    platform: str = "linux"
    # What the task scheduler matches on (older registrations lack them: no tasks there).
    task_types: list[str] = msgspec.field(default_factory=list)
    internet: bool = False


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """What psutil says about the machine right now."""

    cpu_percent: float
    memory_used: int
    memory_total: int
    disk_free: int
    disk_total: int


@event
class NodeStarted(Event, frozen=True, kw_only=True):
    node_id: str
    hostname: str
    ip: str
    role: str
    tags: list[str]
    capabilities: Capabilities
    concurrency: dict[str, int]


@event
class NodeHeartbeat(Event, frozen=True, kw_only=True):
    """Sent every second: what the node is doing and how the machine is."""

    node_id: str
    hostname: str
    ip: str
    downloading: int
    muxing: int
    uploading: int
    running: list[str]
    usage: Usage


@event
class NodeStopped(Event, frozen=True, kw_only=True):
    node_id: str


@event
class NodeRemoved(Event, frozen=True, kw_only=True):
    """An admin took the node out of the cluster: it is hidden until it registers again."""

    node_id: str
    reason: str = "removed by an admin"


@event
class NodeDrainRequested(Event, frozen=True, kw_only=True):
    """An admin asked the node to finish what it runs and take no new work."""

    node_id: str


@event
class NodeUndrained(Event, frozen=True, kw_only=True):
    """An admin let a draining node take new work again."""

    node_id: str


class UnknownNode(NotFound):
    """No node of that id ever registered, or an admin removed it (until it registers again)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r} not found")


def stream_id(node_id: str) -> str:
    """The event stream that holds one node."""
    return f"node-{node_id}"


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """A node as its facts fold it: what the `nodes` projection keeps of its life."""

    node_id: str
    started_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    stopped_at: datetime | None = None
    removed_at: datetime | None = None
    draining_since: datetime | None = None
    """When an admin drained the node; None while it takes work. A restart keeps it: only an
    undrain ends a drain."""
    version: int = 0
    """The version of the last event of the node's own stream (heartbeats live in day streams)."""


def evolve(state: NodeState | None, ev: Event, at: datetime, version: int) -> NodeState | None:
    """The node after one more fact; a heartbeat (from its day stream) moves no version."""
    if isinstance(ev, NodeStarted):
        # A registration clears a stop and a removal; the last beat and a drain stay.
        return NodeState(
            node_id=ev.node_id,
            started_at=at,
            last_heartbeat_at=state.last_heartbeat_at if state is not None else None,
            draining_since=state.draining_since if state is not None else None,
            version=version,
        )
    if not isinstance(
        ev, NodeHeartbeat | NodeStopped | NodeRemoved | NodeDrainRequested | NodeUndrained
    ):
        return state
    known = state if state is not None else NodeState(node_id=ev.node_id)
    if isinstance(ev, NodeHeartbeat):
        # A beat says the node runs: it is no longer stopped (as in the projection's upsert).
        return msgspec.structs.replace(known, last_heartbeat_at=at, stopped_at=None)
    if isinstance(ev, NodeStopped):
        return msgspec.structs.replace(known, stopped_at=at, version=version)
    if isinstance(ev, NodeDrainRequested):
        return msgspec.structs.replace(known, draining_since=at, version=version)
    if isinstance(ev, NodeUndrained):
        return msgspec.structs.replace(known, draining_since=None, version=version)
    return msgspec.structs.replace(known, removed_at=at, version=version)


def _require_known(state: NodeState) -> None:
    if state.removed_at is not None:
        raise UnknownNode(state.node_id)


def drain(state: NodeState) -> list[Event]:
    """Ask the node to finish what it runs and take nothing new; nothing if it drains already.

    A removed node is refused like one that never was: it is not in the cluster to drain."""
    _require_known(state)
    if state.draining_since is not None:
        return []
    return [NodeDrainRequested(node_id=state.node_id)]


def undrain(state: NodeState) -> list[Event]:
    """Let a draining node take new work again; nothing if it is not draining."""
    _require_known(state)
    if state.draining_since is None:
        return []
    return [NodeUndrained(node_id=state.node_id)]


WorkState = Literal["active", "draining"]
"""Whether a node takes new work, as devices and the dashboard show it (`state`). Quarantine
and a disk below its floor are the next reasons to join "draining" here (issue 22)."""


def work_state(draining: bool) -> WorkState:
    """The one rule for the `state` every surface shows of a node."""
    return "draining" if draining else "active"


AGGREGATE: Aggregate[NodeState] = Aggregate(
    name="node",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(
        NodeStarted,
        NodeHeartbeat,
        NodeStopped,
        NodeRemoved,
        NodeDrainRequested,
        NodeUndrained,
    ),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types

fold = AGGREGATE.fold
"""A node's facts (its stream's and its heartbeats', in recorded order) folded."""


HEARTBEAT_PREFIX = "heartbeat-"
"""Heartbeats go to one stream per node per UTC day, so a whole day can be archived at once."""


def heartbeat_stream_id(node_id: str, day: date) -> str:
    """The stream that holds one node's heartbeats of one UTC day."""
    return f"{HEARTBEAT_PREFIX}{day.isoformat()}-{node_id}"


def heartbeat_day(stream_id: str) -> date | None:
    """The UTC day of a heartbeat stream; None for any other stream (or a malformed one)."""
    if not stream_id.startswith(HEARTBEAT_PREFIX):
        return None
    head = stream_id[len(HEARTBEAT_PREFIX) : len(HEARTBEAT_PREFIX) + 10]
    try:
        return date.fromisoformat(head)
    except ValueError:
        return None
