"""Node commands: take a node out of the cluster (it shows again only once it registers anew),
drain or undrain it (it finishes what it runs and takes nothing new, or takes work again), and
release it from a quarantine."""

from __future__ import annotations

from collections.abc import Callable

from spool.adapters.event_store import AppendResult, EventStore
from spool.adapters.node_store import nodes
from spool.domain import node
from spool.domain.events import Event, Metadata


async def remove_node(store: EventStore, node_id: str, meta: Metadata) -> AppendResult:
    """Record the node's removal, wherever its stream ends: removal is never refused."""
    return await nodes(store).record(node_id, [node.NodeRemoved(node_id=node_id)], meta)


async def drain_node(store: EventStore, node_id: str, meta: Metadata) -> node.NodeState:
    """Drain the node: it finishes what it runs and takes no new unit. Draining a draining node
    changes nothing; an unknown or removed node raises `UnknownNode`. `meta` names who asked."""
    return await _decide(store, node_id, node.drain, meta)


async def undrain_node(store: EventStore, node_id: str, meta: Metadata) -> node.NodeState:
    """Let the node take new work again; nothing changes if it is not draining. An unknown or
    removed node raises `UnknownNode`."""
    return await _decide(store, node_id, node.undrain, meta)


async def release_node(store: EventStore, node_id: str, meta: Metadata) -> node.NodeState:
    """End the node's quarantine: it takes work again (unless drained). Nothing changes if it
    is not quarantined; an unknown or removed node raises `UnknownNode`."""
    return await _decide(store, node_id, node.release, meta)


async def _decide(
    store: EventStore,
    node_id: str,
    decide: Callable[[node.NodeState], list[Event]],
    meta: Metadata,
) -> node.NodeState:
    state, _ = await nodes(store).execute(node_id, decide, meta)
    if state is None:
        raise node.UnknownNode(node_id)
    return state
