"""The `api_keys` table: key digests and who they belong to, for authentication."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa

from adapters.tables import api_keys
from domain.account import ApiKeyCreated, ApiKeyRevoked
from domain.events import RecordedEvent


class ApiKeysProjection:
    name = "api_keys"
    tables: Sequence[sa.Table] = (api_keys,)
    event_types: frozenset[str] = frozenset({"ApiKeyCreated", "ApiKeyRevoked"})

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            ev = e.data
            if isinstance(ev, ApiKeyCreated):
                await conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, account_id, name, hint, admin, "
                    "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    ev.key_hash,
                    ev.key_id,
                    ev.account_id,
                    ev.name,
                    ev.hint,
                    ev.admin,
                    e.recorded_at,
                )
            elif isinstance(ev, ApiKeyRevoked):
                await conn.execute(
                    "UPDATE api_keys SET revoked = true WHERE key_id = $1", ev.key_id
                )
