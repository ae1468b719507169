"""An account's own storage configuration: read exactly from the account stream, and removed
through the repository (decided on the state read, appended at its version, retried)."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Repository
from spool.domain import storage_config
from spool.domain.events import Metadata
from spool.domain.storage_config import Provider, StorageState


def storages(store: EventStore) -> Repository[StorageState]:
    """The storage configurations' repository: the account stream, folded whole (exact)."""
    return Repository(store, storage_config.AGGREGATE)


async def load_storage(store: EventStore, account_id: str) -> StorageState:
    """The account's storage state, exact to the last event of its stream."""
    return await storages(store).load(account_id) or StorageState()


async def remove_storage(
    store: EventStore, account_id: str, provider: Provider, meta: Metadata
) -> StorageState:
    """Drop the account's `provider` storage; the state after it.

    StorageNotConfigured when the account has no such storage (nothing is appended);
    ChangingTooFast when every try lost the race to other writers of the account stream.
    """
    state, _ = await storages(store).execute(
        account_id,
        lambda s: storage_config.remove(s, account_id=account_id, provider=provider),
        meta,
    )
    return state or StorageState()
