"""An account's own storage configuration through the repository: the account stream, folded
whole (exact); the commands on it are in application/storage.py."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import storage_config
from spool.domain.storage_config import StorageState


def storages(store: EventStore) -> Repository[StorageState]:
    """The storage configurations' repository (the account stream they share with keys)."""
    return Repository(store, storage_config.AGGREGATE)
