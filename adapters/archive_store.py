"""An account's download archive stream (`archive-<account_id>`): its removals."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import archive


def archives(store: EventStore) -> Repository[archive.ArchiveState]:
    """The archive streams' repository: removals are facts (`record`), the stream folded whole
    for `as_of` and replay."""
    return Repository(store, archive.AGGREGATE)
