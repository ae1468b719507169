"""The `api_keys` table: key digests, who they belong to, their scope and expiry, for auth."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa

from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain.account import (
    ApiKeyCreated,
    ApiKeyExpirySet,
    ApiKeyRevoked,
    ApiKeyRotated,
    scope_of,
)
from spool.domain.events import RecordedEvent

# Projection tables. A projection owns its tables: they can be rebuilt aside and swapped in.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_hash", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, nullable=False, unique=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hint", sa.Text, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Written one way (domain.account.scope_text); `admin` above is "admin" in it.
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("replaced_by", sa.Text),
)


class ApiKeysProjection:
    name = "api_keys"
    tables: Sequence[sa.Table] = (api_keys,)
    event_types: frozenset[str] = types_of(
        ApiKeyCreated, ApiKeyRevoked, ApiKeyRotated, ApiKeyExpirySet
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


# -- queries ---------------------------------------------------------------------------------


def works(alias: str = "") -> str:
    """SQL: whether an `api_keys` row (`alias`, if the query names it) is a key that works now:
    not revoked and not expired."""
    k = f"{alias}." if alias else ""
    return f"NOT {k}revoked AND ({k}expires_at IS NULL OR {k}expires_at > now())"


_WORKING_KEY = f"""
SELECT k.key_id, k.account_id, k.scope, k.expires_at, k.replaced_by, u.used_at
FROM api_keys k LEFT JOIN api_key_use u ON u.key_id = k.key_id
WHERE k.key_hash = $1 AND {works("k")}
"""


async def working_key(pool: asyncpg.Pool, digest: str) -> asyncpg.Record | None:
    """The key with this digest if it works: key_id, account_id, scope, expires_at,
    replaced_by, and when it was last used (`used_at`)."""
    row: asyncpg.Record | None = await pool.fetchrow(_WORKING_KEY, digest)
    return row


_WORKS = f"SELECT {works()} FROM api_keys WHERE key_id = $1"


async def key_works(pool: asyncpg.Pool, key_id: str) -> bool:
    """Whether the key `key_id` still works: known, not revoked, not expired."""
    works_now: bool | None = await pool.fetchval(_WORKS, key_id)
    return works_now is True


async def has_keys(pool: asyncpg.Pool, account_id: str) -> bool:
    """Whether the account has (or had) any key: whether Spool knows it."""
    return bool(
        await pool.fetchval("SELECT 1 FROM api_keys WHERE account_id = $1 LIMIT 1", account_id)
    )


async def known_digest(pool: asyncpg.Pool, digest: str) -> bool:
    """Whether a key with this digest was ever issued (revoked or expired ones too)."""
    return bool(await pool.fetchval("SELECT 1 FROM api_keys WHERE key_hash = $1", digest))


async def account_of(pool: asyncpg.Pool, key_id: str) -> str | None:
    """The account the key `key_id` belongs to (key ids are unique); None if unknown."""
    owner: str | None = await pool.fetchval(
        "SELECT account_id FROM api_keys WHERE key_id = $1", key_id
    )
    return owner


_LISTING = """
SELECT k.key_id, k.name, k.account_id, k.hint, k.scope, k.created_at, u.used_at AS last_used_at,
       k.expires_at, k.revoked, k.replaced_by
FROM api_keys k LEFT JOIN api_key_use u ON u.key_id = k.key_id
WHERE $1::text IS NULL OR k.account_id = $1
ORDER BY k.created_at, k.key_id
"""


async def listing(pool: asyncpg.Pool, account_id: str | None) -> list[asyncpg.Record]:
    """The keys of `account_id` (every account's for None), oldest first, as a listing shows
    them: key_id, name, account_id, hint, scope, created_at, last_used_at, expires_at, revoked,
    replaced_by (never the digest)."""
    return list(await pool.fetch(_LISTING, account_id))


_BY_ACCOUNT = """
SELECT account_id, key_id, name, hint, admin, revoked, created_at FROM api_keys
WHERE $1::text IS NULL OR account_id = $1 ORDER BY account_id, created_at, key_id
"""


async def by_account(pool: asyncpg.Pool, account_id: str | None) -> list[asyncpg.Record]:
    """The keys of `account_id` (every account's for None) ordered by account, then age:
    account_id, key_id, name, hint, admin, revoked, created_at."""
    return list(await pool.fetch(_BY_ACCOUNT, account_id))


async def names_of(pool: asyncpg.Pool, key_ids: Sequence[str]) -> dict[str, str]:
    """The names of these keys, by key id (unknown ids left out)."""
    rows = await pool.fetch(
        "SELECT key_id, name FROM api_keys WHERE key_id = ANY($1::text[])", list(key_ids)
    )
    return {r[0]: r[1] for r in rows}
