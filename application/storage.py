"""Storage commands: make a (checked, sealed) storage the account's own, or remove it.

Checking a storage and sealing its credentials happen before (`api/user.py`,
`sealed_storage`): a command here gets a `StorageConfigured` ready to record.
"""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.repository import ChangingTooFast
from spool.adapters.storage_config_store import storages
from spool.domain import storage_config
from spool.domain.errors import Conflict, NotFound
from spool.domain.events import Event, Metadata
from spool.domain.storage_config import Provider, StorageConfigured, StorageState


async def storage_of(store: EventStore, account_id: str) -> StorageState:
    """The account's storage state, exact to the last event of its stream."""
    return await storages(store).load(account_id) or StorageState()


async def configure_storage(
    store: EventStore, configured: StorageConfigured, meta: Metadata
) -> StorageConfigured:
    """Make `configured` its account's storage, in place of any other."""
    try:
        await storages(store).execute(
            configured.account_id, lambda state: storage_config.configure(state, configured), meta
        )
    except ChangingTooFast:
        raise Conflict("The account is changing too fast; try again") from None
    return configured


async def remove_storage(
    store: EventStore, account_id: str, provider: Provider, meta: Metadata
) -> None:
    """Drop the account's `provider` storage; NotFound when that is not the one it has."""

    def remove(state: StorageState) -> list[Event]:
        try:
            return storage_config.remove(state, account_id=account_id, provider=provider)
        except storage_config.StorageNotConfigured as exc:
            raise NotFound(str(exc)) from None

    try:
        await storages(store).execute(account_id, remove, meta)
    except ChangingTooFast:
        raise Conflict("The account is changing too fast; try again") from None
