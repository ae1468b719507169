"""The `storage_configs` table: each account's current storage, for one-query lookups.

The row keeps the whole `StorageConfigured` event (its credentials sealed, never in clear);
`adapters.account_storage` opens them when it builds a client.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.tables import metadata
from spool.domain.events import RecordedEvent

# Importing the module registers StorageConfigured / StorageRemoved with the event registry.
from spool.domain.storage_config import StorageConfigured, StorageRemoved

# The `storage_configs` projection's table (written by the projection below).
# `config` is the whole current StorageConfigured event: non-secret fields and sealed secrets.
storage_configs = sa.Table(
    "storage_configs",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("config", pg.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

_encode = msgspec.json.Encoder().encode


class StorageConfigsProjection:
    name = "storage_configs"
    tables: Sequence[sa.Table] = (storage_configs,)
    event_types: frozenset[str] = frozenset({StorageConfigured.__name__, StorageRemoved.__name__})

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


async def stored_config(pool: asyncpg.Pool, account_id: str) -> bytes | None:
    """The account's current `StorageConfigured`, as JSON, or None."""
    raw: bytes | None = await pool.fetchval(
        "SELECT config FROM storage_configs WHERE account_id = $1", account_id
    )
    return raw
