"""Issuing API keys: mint a random `sk_...`, record its digest on an account stream."""

from __future__ import annotations

import secrets
import uuid

from adapters.event_store import EventStore
from domain import account
from domain.events import Metadata, NewEvent


def mint() -> str:
    """A new random API key."""
    return account.KEY_PREFIX + secrets.token_urlsafe(32)


async def issue(
    store: EventStore, *, name: str, admin: bool, key: str | None = None, actor: str = "cli"
) -> tuple[str, str]:
    """Issue `key` (or a new one) to a new account; returns (key, account_id)."""
    key = key or mint()
    account_id = uuid.uuid4().hex
    events = account.issue_key(
        key=key, key_id=uuid.uuid4().hex[:16], account_id=account_id, name=name, admin=admin
    )
    meta = Metadata(actor=actor)
    await store.append(account.stream_id(account_id), [NewEvent(e, meta) for e in events], 0)
    return key, account_id


async def ensure_admin_key(store: EventStore, key: str) -> bool:
    """Create the admin key `key` unless the (caught-up) `api_keys` projection has it."""
    exists = await store.pool.fetchval(
        "SELECT 1 FROM api_keys WHERE key_hash = $1", account.hash_key(key)
    )
    if exists:
        return False
    await issue(store, name="SPOOL_API_KEY", admin=True, key=key, actor="startup")
    return True
