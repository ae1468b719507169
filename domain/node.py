"""Worker nodes: registration, the once-a-second heartbeat, an admin's drain, and a quarantine
(units failing in a row on the node) that an admin or a probe job completing on it ends."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import NotFound
from spool.domain.events import Event, event
from spool.domain.node_health import UnitFailure


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
class NodeHeartbeat(Event, frozen=True, kw_only=True, omit_defaults=True):
    """Sent every second: what the node is doing and how the machine is."""

    node_id: str
    hostname: str
    ip: str
    downloading: int
    muxing: int
    uploading: int
    running: list[str]
    usage: Usage
    disk_floor: str | None = None
    """Why the node takes no new download: its free disk is below its floor
    (`domain.node_health.below_disk_floor`); None above it, and in older heartbeats."""


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


@event
class NodeQuarantined(Event, frozen=True, kw_only=True):
    """Units failed in a row on the node (`failures`, the newest last): it takes no new work
    until an admin releases it or a probe job completes on it (domain/node_health.py)."""

    node_id: str
    reason: str
    failures: list[UnitFailure]


@event
class NodeProbeStarted(Event, frozen=True, kw_only=True):
    """A quarantined node took one download (`unit`, its queue id) to show whether it works
    again: the probe is that job's run (`job_id`, `run`), whose mux and upload follow here."""

    node_id: str
    unit: str
    job_id: str
    run: int


ReleasedBy = Literal["admin", "probe"]


@event
class NodeReleased(Event, frozen=True, kw_only=True):
    """The node's quarantine ended: an admin released it, or its probe (the run that began with
    the download `unit`) completed."""

    node_id: str
    by: ReleasedBy
    unit: str | None = None


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
    quarantined_since: datetime | None = None
    """When failures in a row quarantined the node; None while it is not quarantined. A restart
    keeps it: only a release ends it."""
    quarantine_reason: str | None = None
    probe: NodeProbeStarted | None = None
    """The node's latest probe while quarantined."""
    probe_started_at: datetime | None = None
    version: int = 0
    """The version of the last event of the node's own stream (heartbeats live in day streams)."""


_NODE_FACTS = (  # what the node's fold takes besides its registration
    NodeHeartbeat,
    NodeStopped,
    NodeRemoved,
    NodeDrainRequested,
    NodeUndrained,
    NodeQuarantined,
    NodeProbeStarted,
    NodeReleased,
)


def evolve(state: NodeState | None, ev: Event, at: datetime, version: int) -> NodeState | None:
    """The node after one more fact; a heartbeat (from its day stream) moves no version."""
    if isinstance(ev, NodeStarted):
        # A registration clears a stop and a removal; the last beat, a drain and a quarantine
        # stay.
        if state is None:
            return NodeState(node_id=ev.node_id, started_at=at, version=version)
        return msgspec.structs.replace(
            state, started_at=at, stopped_at=None, removed_at=None, version=version
        )
    if not isinstance(ev, _NODE_FACTS):
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
    if isinstance(ev, NodeQuarantined):
        return msgspec.structs.replace(
            known, quarantined_since=at, quarantine_reason=ev.reason, version=version
        )
    if isinstance(ev, NodeProbeStarted):
        return msgspec.structs.replace(known, probe=ev, probe_started_at=at, version=version)
    if isinstance(ev, NodeReleased):
        return msgspec.structs.replace(
            known,
            quarantined_since=None,
            quarantine_reason=None,
            probe=None,
            probe_started_at=None,
            version=version,
        )
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


def quarantine(state: NodeState, failures: list[UnitFailure], reason: str) -> list[Event]:
    """Quarantine the node for `failures` in a row; nothing if it is quarantined already (so a
    replayed decision records nothing twice) or removed."""
    if state.removed_at is not None or state.quarantined_since is not None:
        return []
    return [NodeQuarantined(node_id=state.node_id, reason=reason, failures=failures)]


def start_probe(state: NodeState, unit: str, job_id: str, run: int) -> list[Event]:
    """A quarantined node takes the download `unit` of the job's run as its probe; nothing if
    it is no longer quarantined, or took that unit already."""
    if state.quarantined_since is None or (state.probe is not None and state.probe.unit == unit):
        return []
    return [NodeProbeStarted(node_id=state.node_id, unit=unit, job_id=job_id, run=run)]


def release(state: NodeState) -> list[Event]:
    """An admin ends the node's quarantine; nothing if it is not quarantined. A removed node is
    refused like one that never was."""
    _require_known(state)
    if state.quarantined_since is None:
        return []
    return [NodeReleased(node_id=state.node_id, by="admin")]


def probe_succeeded(state: NodeState, job_id: str, run: int) -> list[Event]:
    """The job's run completed on the node: when it is the node's probe, its quarantine ends.
    Nothing for any other run (one the node began before its quarantine, finishing late, says
    nothing of the node now)."""
    probe = state.probe
    if (
        state.quarantined_since is None
        or probe is None
        or (probe.job_id, probe.run)
        != (
            job_id,
            run,
        )
    ):
        return []
    return [NodeReleased(node_id=state.node_id, by="probe", unit=probe.unit)]


WorkState = Literal["active", "draining", "quarantined", "disk_floor"]
"""Whether a node takes new work, as devices, the dashboard, `/metrics` and reports show it
(`state`)."""

WORK_STATE_ORDER: tuple[WorkState, ...] = ("quarantined", "draining", "disk_floor")
"""Which state a node shows when several hold, the first winning: a quarantine is a fault that
only an admin or a probe ends, a drain an admin's own act, a disk floor lifts by itself."""


def work_state(draining: bool, *, quarantined: bool = False, disk_floor: bool = False) -> WorkState:
    """The one rule for the `state` every surface shows of a node (`WORK_STATE_ORDER`)."""
    holds = {"quarantined": quarantined, "draining": draining, "disk_floor": disk_floor}
    return next((s for s in WORK_STATE_ORDER if holds[s]), "active")


def work_reason(
    draining: bool, *, quarantine_reason: str | None = None, disk_floor: str | None = None
) -> str | None:
    """Why the node takes no new work, every reason that holds in `WORK_STATE_ORDER`; None for
    an active node."""
    reasons = {
        "quarantined": f"quarantined: {quarantine_reason}" if quarantine_reason else None,
        "draining": "draining: an admin drained it" if draining else None,
        "disk_floor": f"disk floor: {disk_floor}" if disk_floor else None,
    }
    said = [r for s in WORK_STATE_ORDER if (r := reasons[s])]
    return "; ".join(said) or None


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
        NodeQuarantined,
        NodeProbeStarted,
        NodeReleased,
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
