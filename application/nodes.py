"""Node commands: take a node out of the cluster (it shows again only once it registers anew)."""

from __future__ import annotations

from spool.adapters.event_store import AppendResult, EventStore
from spool.domain import node
from spool.domain.events import Metadata, NewEvent


async def remove_node(store: EventStore, node_id: str, meta: Metadata) -> AppendResult:
    """Record the node's removal, wherever its stream ends: removal is never refused."""
    removed = node.NodeRemoved(node_id=node_id)
    return await store.append(node.stream_id(node_id), [NewEvent(removed, meta)], None)
