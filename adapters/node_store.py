"""Nodes' streams: facts a node states about itself (and an admin's removal), never decided."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import node


def nodes(store: EventStore) -> Repository[node.NodeState]:
    """The nodes' repository: a node's events are recorded where its stream ends
    (`Repository.record`), since nothing about them is refused."""
    return Repository(store, node.AGGREGATE)
