"""Worker nodes: registration and the once-a-second heartbeat."""

from __future__ import annotations

from datetime import date

import msgspec

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


EVENT_TYPES: frozenset[str] = frozenset(
    {"NodeStarted", "NodeHeartbeat", "NodeStopped", "NodeRemoved"}
)


def stream_id(node_id: str) -> str:
    """The event stream that holds one node."""
    return f"node-{node_id}"


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
