"""The `api_keys` table: key digests, who they belong to, their scope and expiry, for auth."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa

from spool.adapters.tables import api_keys
from spool.domain.account import (
    ApiKeyCreated,
    ApiKeyExpirySet,
    ApiKeyRevoked,
    ApiKeyRotated,
    scope_of,
)
from spool.domain.events import RecordedEvent


class ApiKeysProjection:
    name = "api_keys"
    tables: Sequence[sa.Table] = (api_keys,)
    event_types: frozenset[str] = frozenset(
        {"ApiKeyCreated", "ApiKeyRevoked", "ApiKeyRotated", "ApiKeyExpirySet"}
    )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            ev = e.data
            if isinstance(ev, ApiKeyCreated):
                scope = scope_of(ev)
                await conn.execute(
                    "INSERT INTO api_keys (key_hash, key_id, account_id, name, hint, admin, "
                    "created_at, scope, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                    "ON CONFLICT DO NOTHING",
                    ev.key_hash,
                    ev.key_id,
                    ev.account_id,
                    ev.name,
                    ev.hint,
                    scope == "admin",
                    e.recorded_at,
                    scope,
                    ev.expires_at,
                )
            elif isinstance(ev, ApiKeyRevoked):
                await conn.execute(
                    "UPDATE api_keys SET revoked = true WHERE key_id = $1", ev.key_id
                )
            elif isinstance(ev, ApiKeyExpirySet):
                await conn.execute(
                    "UPDATE api_keys SET expires_at = $2 WHERE key_id = $1",
                    ev.key_id,
                    ev.expires_at,
                )
            elif isinstance(ev, ApiKeyRotated):
                # LEAST ignores a NULL: a key without an expiry retires when its grace ends.
                await conn.execute(
                    "UPDATE api_keys SET expires_at = LEAST(expires_at, $2), replaced_by = $3 "
                    "WHERE key_id = $1",
                    ev.key_id,
                    ev.retires_at,
                    ev.replaced_by,
                )
