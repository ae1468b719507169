"""A node's fold (domain.node) says what the `nodes` row says of its life: when it started, beat
last, stopped, was removed and was drained."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from spool.adapters.event_store import EventStore
from spool.domain import node
from spool.domain.aggregate import steps
from spool.domain.events import Event, NewEvent, RecordedEvent
from spool.reactors.projection import ProjectionRunner

CAPS = node.Capabilities(cpu_count=2, memory_total_gb=4.0, storage_total_gb=10.0)
USAGE = node.Usage(cpu_percent=1.0, memory_used=1, memory_total=2, disk_free=1, disk_total=2)


def _beat(node_id: str) -> node.NodeHeartbeat:
    return node.NodeHeartbeat(
        node_id=node_id, hostname="h", ip="127.0.0.1", downloading=0, muxing=0, uploading=0,
        running=[], usage=USAGE,
    )  # fmt: skip


async def _facts(store: EventStore, node_id: str, *events: Event) -> None:
    """Each event on the stream a node writes it to: heartbeats in their day's stream."""
    for ev in events:
        stream = (
            node.heartbeat_stream_id(node_id, datetime.now(UTC).date())
            if isinstance(ev, node.NodeHeartbeat)
            else node.stream_id(node_id)
        )
        await store.append(stream, [NewEvent(ev)], None)


async def _all_facts(store: EventStore, node_id: str) -> list[RecordedEvent]:
    beats = node.heartbeat_stream_id(node_id, datetime.now(UTC).date())
    found = await store.read_stream(node.stream_id(node_id)) + await store.read_stream(beats)
    return sorted(found, key=lambda e: e.position)


async def test_a_nodes_fold_agrees_with_its_row_through_its_life(
    store: EventStore, runner: ProjectionRunner
) -> None:
    node_id = f"n-{uuid.uuid4().hex[:8]}"
    started = node.NodeStarted(
        node_id=node_id, hostname="h", ip="127.0.0.1", role="worker", tags=[],
        capabilities=CAPS, concurrency={"download": 1},
    )  # fmt: skip
    lives: list[tuple[Event, ...]] = [
        (started, _beat(node_id), _beat(node_id)),
        (node.NodeStopped(node_id=node_id),),
        (_beat(node_id),),  # beating again: no longer stopped
        (node.NodeDrainRequested(node_id=node_id),),
        (started, _beat(node_id)),  # a restart keeps the drain
        (node.NodeUndrained(node_id=node_id),),
        (node.NodeRemoved(node_id=node_id),),
        (started,),  # registering again brings it back
    ]
    for events in lives:
        await _facts(store, node_id, *events)
        await runner.settle("nodes")
        row = await store.pool.fetchrow(
            "SELECT started_at, last_heartbeat_at, stopped_at, removed_at, draining_since "
            "FROM nodes WHERE node_id = $1",
            node_id,
        )
        state = node.fold(steps(await _all_facts(store, node_id)))
        assert row is not None and state is not None
        assert tuple(row) == (
            state.started_at, state.last_heartbeat_at, state.stopped_at, state.removed_at,
            state.draining_since,
        )  # fmt: skip
