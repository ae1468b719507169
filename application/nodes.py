"""Node commands: take a node out of the cluster (it shows again only once it registers anew)."""

from __future__ import annotations

from spool.adapters.event_store import AppendResult, EventStore
from spool.adapters.node_store import nodes
from spool.domain import node
from spool.domain.events import Metadata


async def remove_node(store: EventStore, node_id: str, meta: Metadata) -> AppendResult:
    """Record the node's removal, wherever its stream ends: removal is never refused."""
    return await nodes(store).record(node_id, [node.NodeRemoved(node_id=node_id)], meta)
