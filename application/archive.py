"""Download archive commands: take an item out of an account's archive, so that the next job
of it downloads again (domain/archive.py)."""

from __future__ import annotations

import asyncpg

from spool.adapters.archive_store import archives
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import archive as archive_rows
from spool.domain import archive
from spool.domain.errors import NotFound
from spool.domain.events import Metadata


async def remove_archived(
    store: EventStore, pool: asyncpg.Pool, account_id: str, archive_id: str, meta: Metadata
) -> archive_rows.ArchiveItem:
    """Remove an item from the account's archive; the item as it was held.

    Raises:
        NotFound: the account's archive does not hold `archive_id` (another account's item
            answers the same).
    """
    held = await archive_rows.item(pool, account_id, archive_id)
    if held is None:
        raise NotFound("Archive item not found")
    await archives(store).record(account_id, archive.remove(account_id, archive_id), meta)
    return held
