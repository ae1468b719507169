"""Issuing API keys: mint a random `sk_...`, record its digest on an account stream."""

from __future__ import annotations

import secrets
import uuid
from typing import NamedTuple

from adapters.event_store import Checkpoint, EventStore
from domain import account
from domain.events import Metadata, NewEvent


def mint() -> str:
    """A new random API key."""
    return account.KEY_PREFIX + secrets.token_urlsafe(32)


class IssuedKey(NamedTuple):
    key: str
    account_id: str
    at: Checkpoint
    """Where the key's event stands in the log: wait for `api_keys` to pass it before use."""


async def issue(
    store: EventStore, *, name: str, admin: bool, key: str | None = None, actor: str = "cli"
) -> IssuedKey:
    """Issue `key` (or a new one) to a new account."""
    key = key or mint()
    account_id = uuid.uuid4().hex
    events = account.issue_key(
        key=key, key_id=uuid.uuid4().hex[:16], account_id=account_id, name=name, admin=admin
    )
    meta = Metadata(actor=actor)
    result = await store.append(
        account.stream_id(account_id), [NewEvent(e, meta) for e in events], 0
    )
    return IssuedKey(key, account_id, result.checkpoint)


async def ensure_admin_key(store: EventStore, key: str) -> IssuedKey | None:
    """Create the admin key `key` unless the (caught-up) `api_keys` projection has it."""
    exists = await store.pool.fetchval(
        "SELECT 1 FROM api_keys WHERE key_hash = $1", account.hash_key(key)
    )
    if exists:
        return None
    return await issue(store, name="SPOOL_API_KEY", admin=True, key=key, actor="startup")
