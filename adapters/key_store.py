"""API keys on their account streams: issue, revoke, rotate, list; the first key of a cluster.

Every change is an event on `account-<id>` (domain/account.py decides them); the `api_keys`
projection folds them for authentication, and the listings read it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

from spool.adapters.event_store import Checkpoint, EventStore
from spool.adapters.read_models import api_keys
from spool.adapters.repository import Repository
from spool.domain import account
from spool.domain.events import Event, Metadata


def mint() -> str:
    """A new random API key."""
    return account.KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A new key's id: shown in listings and events, never a secret."""
    return uuid.uuid4().hex[:16]


class IssuedKey(NamedTuple):
    key: str
    account_id: str
    at: Checkpoint
    """Where the key's event stands in the log: wait for `api_keys` to pass it before use."""
    key_id: str = ""


class KeyRow(msgspec.Struct, frozen=True, kw_only=True):
    """One key as a listing shows it: never the key, nor its digest."""

    key_id: str
    name: str
    account_id: str
    hint: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked: bool
    replaced_by: str | None


async def issue(
    store: EventStore,
    *,
    name: str,
    admin: bool = False,
    scope: str | None = None,
    expires_at: datetime | None = None,
    account_id: str | None = None,
    key: str | None = None,
    actor: str = "cli",
    meta: Metadata | None = None,
    now: datetime | None = None,
) -> IssuedKey:
    """Issue `key` (or a new one) to `account_id`, or to a new account when None.

    `scope` defaults to `admin` for `admin`, else the plain `jobs,tasks`. ValueError for a
    blank name, an unknown scope or a past expiry: nothing is appended then.
    """
    key = key or mint()
    key_id = new_key_id()
    owner = account_id or uuid.uuid4().hex
    events = account.issue_key(
        key=key,
        key_id=key_id,
        account_id=owner,
        name=name,
        scope=scope if scope is not None else ("admin" if admin else account.PLAIN_SCOPE),
        expires_at=expires_at,
        now=now or datetime.now(UTC),
    )
    meta = meta or Metadata(actor=actor)
    # On the account as read: a new one (no event yet) is created at version 0.
    _, appended = await accounts(store).execute(owner, lambda _keys: events, meta)
    assert appended is not None  # issuing always decides its events, or raises
    return IssuedKey(key, owner, appended.checkpoint, key_id)


def accounts(store: EventStore) -> Repository[account.Keys]:
    """The accounts' repository: an account's keys folded from its stream. An account with no
    event holds no key, which a command decides on (and refuses: UnknownKey)."""
    return Repository(store, account.AGGREGATE)


async def account_keys(store: EventStore, account_id: str) -> account.Keys:
    """An account's keys folded from its stream (none for an account with no event)."""
    return await accounts(store).load(account_id) or {}


async def owner_of(store: EventStore, key_id: str) -> str | None:
    """The account a key id belongs to, by the `api_keys` projection (key ids are unique)."""
    return await api_keys.account_of(store.pool, key_id)


async def _decide(
    store: EventStore,
    account_id: str,
    decide: Callable[[account.Keys], list[Event]],
    meta: Metadata,
) -> Checkpoint | None:
    """Run `decide` on the account's keys through its repository.

    Where the events landed, or None when `decide` found nothing to do. Errors from `decide`
    (UnknownKey, KeyRetired, ValueError) propagate, and nothing is appended.
    """
    _, appended = await accounts(store).execute(account_id, decide, meta)
    return appended.checkpoint if appended is not None else None


async def revoke(
    store: EventStore, account_id: str, key_id: str, meta: Metadata
) -> Checkpoint | None:
    """Revoke `key_id` of `account_id`; the checkpoint of the event (None: already revoked).

    UnknownKey if the account holds no such key.
    """
    return await _decide(store, account_id, lambda keys: account.revoke_key(keys, key_id), meta)


async def rotate(
    store: EventStore,
    account_id: str,
    key_id: str,
    *,
    grace: timedelta,
    meta: Metadata,
    now: datetime | None = None,
) -> IssuedKey:
    """A new key for `key_id`'s account, name, scope and expiry; the old one retires after
    `grace`. UnknownKey, KeyRetired or ValueError (negative grace): nothing is appended."""
    key, new_id = mint(), new_key_id()

    def decide(keys: account.Keys) -> list[Event]:
        return account.rotate_key(
            keys,
            key_id,
            new_key=key,
            new_key_id=new_id,
            now=now or datetime.now(UTC),
            grace=grace,
        )

    at = await _decide(store, account_id, decide, meta)
    assert at is not None  # a rotation always decides two events, or raises
    return IssuedKey(key, account_id, at, new_id)


async def set_expiry(
    store: EventStore,
    account_id: str,
    key_id: str,
    expires_at: datetime,
    meta: Metadata,
    now: datetime | None = None,
) -> Checkpoint:
    """Give `key_id` a new expiry. UnknownKey, KeyRetired or ValueError (a past or zoneless
    time): nothing is appended."""

    def decide(keys: account.Keys) -> list[Event]:
        return account.set_expiry(keys, key_id, expires_at=expires_at, now=now or datetime.now(UTC))

    at = await _decide(store, account_id, decide, meta)
    assert at is not None  # a new expiry always decides one event, or raises
    return at


async def list_keys(store: EventStore, account_id: str | None) -> list[KeyRow]:
    """The keys of `account_id`, or of every account for None, oldest first."""
    return [KeyRow(**dict(r)) for r in await api_keys.listing(store.pool, account_id)]


async def ensure_admin_key(store: EventStore, key: str) -> IssuedKey | None:
    """Create the admin key `key` unless the (caught-up) `api_keys` projection has it."""
    if await api_keys.known_digest(store.pool, account.hash_key(key)):
        return None
    return await issue(store, name="SPOOL_API_KEY", admin=True, key=key, actor="startup")


FIRST_KEY_NAME = "first admin key"

# One `spool up` at a time decides whether the log holds no key at all. The range keeps the
# read to the partition of account streams (stream ids sort in collation "C": '.' follows '-').
_FIRST_KEY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('spool:first-key', 0))"
_ANY_KEY = """
SELECT 1 FROM events
WHERE stream_id >= 'account-' AND stream_id < 'account.' AND type = 'ApiKeyCreated' LIMIT 1
"""


async def ensure_first_key(store: EventStore) -> IssuedKey | None:
    """An admin key for a log that holds no key at all (read from the log, not a projection
    that may lag); None when there is one. Only the key's digest is stored."""
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(_FIRST_KEY_LOCK)
        if await conn.fetchval(_ANY_KEY):
            return None
        key, owner, key_id = mint(), uuid.uuid4().hex, new_key_id()
        events = account.issue_key(
            key=key, key_id=key_id, account_id=owner, name=FIRST_KEY_NAME, scope="admin"
        )
        meta = Metadata(actor="startup")
        _, appended = await accounts(store).execute(owner, lambda _keys: events, meta, conn=conn)
    assert appended is not None  # issuing always decides its events, or raises
    return IssuedKey(key, owner, appended.checkpoint, key_id)
