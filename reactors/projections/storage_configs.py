"""The `storage_configs` table: each account's current storage, for one-query lookups.

The row keeps the whole `StorageConfigured` event (its credentials sealed, never in clear);
`adapters.account_storage` opens them when it builds a client.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.account_storage import storage_configs
from spool.domain.events import RecordedEvent

# Importing the module registers StorageConfigured / StorageRemoved with the event registry.
from spool.domain.storage_config import StorageConfigured, StorageRemoved

_encode = msgspec.json.Encoder().encode


class StorageConfigsProjection:
    name = "storage_configs"
    tables: Sequence[sa.Table] = (storage_configs,)
    event_types: frozenset[str] = frozenset({"StorageConfigured", "StorageRemoved"})

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            ev = e.data
            if isinstance(ev, StorageConfigured):
                await conn.execute(
                    "INSERT INTO storage_configs (account_id, provider, config, updated_at) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (account_id) DO UPDATE "
                    "SET provider = $2, config = $3, updated_at = $4",
                    ev.account_id,
                    ev.provider,
                    _encode(ev),
                    e.recorded_at,
                )
            elif isinstance(ev, StorageRemoved):
                # Only the named provider: the domain refuses any other removal, and this keeps
                # a replay of an old removal from dropping a newer configuration.
                await conn.execute(
                    "DELETE FROM storage_configs WHERE account_id = $1 AND provider = $2",
                    ev.account_id,
                    ev.provider,
                )
