"""Nodes' streams: the facts a node states about itself, an admin's removal, and an admin's
drain and undrain (decided on the node's fold: `domain.node.drain`, `undrain`)."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import node


def nodes(store: EventStore) -> Repository[node.NodeState]:
    """The nodes' repository: folds a node's own stream (its heartbeats live in day streams)."""
    return Repository(store, node.AGGREGATE)
