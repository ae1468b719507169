"""Accounts and their API keys. Keys are stored only as SHA-256 digests.

A key holds a scope: a set of `read`, `jobs`, `tasks` and `admin`. Every key may read; `jobs`
adds the job API's writes, `tasks` task submission, cancel and retry, `admin` everything,
cluster-wide. Keys issued before scopes existed hold `admin` or `jobs,tasks`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TypeAlias

import msgspec

from spool.domain.aggregate import Aggregate, Step
from spool.domain.errors import DomainError
from spool.domain.events import Event, event

KEY_PREFIX = "sk_"

SCOPES = ("read", "jobs", "tasks", "admin")
"""Every scope, narrowest first: the order a scope is written in."""

PLAIN_SCOPE = "jobs,tasks"
"""What a key without a stated scope may do, as before scopes existed."""

NAME_MAX_CHARS = 200

KEYS_PER_ACCOUNT = 100
"""Working keys an account may hold: past it, a new key waits for a revocation."""


@event
class ApiKeyCreated(Event, frozen=True, kw_only=True):
    """A key was issued; only its digest and a short hint are kept.

    `scope` is None on keys issued before scopes: they hold `admin` or `jobs,tasks` by `admin`.
    """

    key_id: str
    account_id: str
    name: str
    key_hash: str
    hint: str
    admin: bool = False
    scope: str | None = None
    expires_at: datetime | None = None


@event
class ApiKeyRevoked(Event, frozen=True, kw_only=True):
    key_id: str


@event
class ApiKeyRotated(Event, frozen=True, kw_only=True):
    """`key_id` was replaced by `replaced_by`; it keeps working until `retires_at` (the grace)."""

    key_id: str
    replaced_by: str
    retires_at: datetime


@event
class ApiKeyExpirySet(Event, frozen=True, kw_only=True):
    """`key_id` stops working at `expires_at` (set after its creation)."""

    key_id: str
    expires_at: datetime


class InvalidKey(DomainError, ValueError):
    """A key command's input was refused (a bad key, name, scope, expiry or grace); still a
    ValueError, as callers have always caught it."""


class UnknownKey(DomainError):
    """No key with this id (on this account)."""


class KeyRetired(DomainError):
    """The key was revoked, replaced or has expired: it cannot be rotated."""


class KeyState(msgspec.Struct, frozen=True, kw_only=True):
    """One key as its account's stream tells it."""

    key_id: str
    account_id: str
    name: str
    hint: str
    scope: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    replaced_by: str | None = None

    def working(self, now: datetime) -> bool:
        """Whether the key is accepted at `now`: not revoked, not past its expiry."""
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


Keys: TypeAlias = Mapping[str, KeyState]
"""An account's keys by key id: the account aggregate's state (evolve makes a new one)."""


def stream_id(account_id: str) -> str:
    """The event stream that holds one account."""
    return f"account-{account_id}"


def hash_key(key: str) -> str:
    """Digest of an API key. Keys are 256-bit random, so a plain SHA-256 cannot be brute-forced."""
    return hashlib.sha256(key.encode()).hexdigest()


def hint(key: str) -> str:
    """A masked form of a key that is safe to show: `sk_…abcd`."""
    return f"{KEY_PREFIX}…{key[-4:]}"


def parse_scope(text: str) -> frozenset[str]:
    """The scopes named in `read`, `jobs,tasks`...; InvalidKey for an unknown or empty one."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise InvalidKey(
            f"unknown scope {', '.join(repr(u) for u in unknown)}: choose from {', '.join(SCOPES)}"
        )
    if not names:
        raise InvalidKey(f"a scope names at least one of {', '.join(SCOPES)}")
    return frozenset(names)


def scope_text(scopes: Iterable[str]) -> str:
    """A scope written the one way: `admin` alone, else narrowest first, `read` when implied."""
    held = set(scopes)
    if "admin" in held:
        return "admin"
    if held & {"jobs", "tasks"}:
        held.discard("read")
    return ",".join(s for s in SCOPES if s in held)


def scope_of(created: ApiKeyCreated) -> str:
    """The scope a key was issued with; keys from before scopes: `admin` or `jobs,tasks`."""
    if created.scope is not None:
        return created.scope
    return "admin" if created.admin else PLAIN_SCOPE


def allows(scopes: frozenset[str], need: str) -> bool:
    """Whether a key holding `scopes` may do what needs `need` (every key may read)."""
    return need == "read" or need in scopes or "admin" in scopes


def covers(held: frozenset[str], wanted: frozenset[str]) -> bool:
    """Whether a key holding `held` may do everything a key holding `wanted` may."""
    return all(allows(held, s) for s in wanted)


def issue_key(
    *,
    key: str,
    key_id: str,
    account_id: str,
    name: str,
    scope: str,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> list[Event]:
    """Decide the events that issue `key` to an account; InvalidKey for bad input."""
    if not key.startswith(KEY_PREFIX) or len(key) < 24:
        raise InvalidKey(f"an API key starts with {KEY_PREFIX!r} and has at least 24 characters")
    if not name.strip():
        raise InvalidKey("a key needs a name")
    if len(name.strip()) > NAME_MAX_CHARS:
        raise InvalidKey(f"a key's name has at most {NAME_MAX_CHARS} characters")
    canonical = scope_text(parse_scope(scope))
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidKey("an expiry needs a time zone (say Z for UTC)")
        if now is not None and expires_at <= now:
            raise InvalidKey("the expiry is in the past")
    return [
        ApiKeyCreated(
            key_id=key_id,
            account_id=account_id,
            name=name.strip(),
            key_hash=hash_key(key),
            hint=hint(key),
            admin=canonical == "admin",
            scope=canonical,
            expires_at=expires_at,
        )
    ]


def room_for_a_key(keys: Keys, now: datetime) -> bool:
    """Whether an account holding `keys` may get one more (`KEYS_PER_ACCOUNT` working keys)."""
    return sum(1 for k in keys.values() if k.working(now)) < KEYS_PER_ACCOUNT


def revoke_key(keys: Keys, key_id: str) -> list[Event]:
    """Decide the revocation of `key_id`; nothing for a key already revoked."""
    state = keys.get(key_id)
    if state is None:
        raise UnknownKey(key_id)
    return [] if state.revoked else [ApiKeyRevoked(key_id=key_id)]


def rotate_key(
    keys: Keys,
    key_id: str,
    *,
    new_key: str,
    new_key_id: str,
    now: datetime,
    grace: timedelta,
) -> list[Event]:
    """Decide a new key for `key_id`'s account, name, scope and expiry; the old one retires
    after `grace` (at once for zero)."""
    state = keys.get(key_id)
    if state is None:
        raise UnknownKey(key_id)
    if grace < timedelta(0):
        raise InvalidKey("a grace period cannot be negative")
    if state.revoked or state.replaced_by is not None or not state.working(now):
        raise KeyRetired(f"key {key_id} was revoked, replaced or has expired: issue a new one")
    created = issue_key(
        key=new_key,
        key_id=new_key_id,
        account_id=state.account_id,
        name=state.name,
        scope=state.scope,
        expires_at=state.expires_at,
    )
    return [*created, ApiKeyRotated(key_id=key_id, replaced_by=new_key_id, retires_at=now + grace)]


def set_expiry(keys: Keys, key_id: str, *, expires_at: datetime, now: datetime) -> list[Event]:
    """Decide a new expiry for `key_id`: a future time, on a key that still works."""
    state = keys.get(key_id)
    if state is None:
        raise UnknownKey(key_id)
    if expires_at.tzinfo is None:
        raise InvalidKey("an expiry needs a time zone (say Z for UTC)")
    if expires_at <= now:
        raise InvalidKey("the expiry is in the past: revoke the key instead")
    if not state.working(now):
        raise KeyRetired(f"key {key_id} was revoked or has expired: issue a new one")
    return [ApiKeyExpirySet(key_id=key_id, expires_at=expires_at)]


def evolve(keys: Keys | None, ev: Event, at: datetime, version: int) -> Keys:
    """The account's keys after `ev`, recorded at `at`: a new mapping (states are frozen);
    other events of the account stream leave them as they are."""
    out = dict(keys or {})
    if isinstance(ev, ApiKeyCreated):
        out[ev.key_id] = KeyState(
            key_id=ev.key_id,
            account_id=ev.account_id,
            name=ev.name,
            hint=ev.hint,
            scope=scope_of(ev),
            created_at=at,
            expires_at=ev.expires_at,
        )
    elif isinstance(ev, ApiKeyRevoked) and ev.key_id in out:
        out[ev.key_id] = msgspec.structs.replace(out[ev.key_id], revoked=True)
    elif isinstance(ev, ApiKeyExpirySet) and ev.key_id in out:
        out[ev.key_id] = msgspec.structs.replace(out[ev.key_id], expires_at=ev.expires_at)
    elif isinstance(ev, ApiKeyRotated) and ev.key_id in out:
        old = out[ev.key_id]
        retires = ev.retires_at if old.expires_at is None else min(old.expires_at, ev.retires_at)
        out[ev.key_id] = msgspec.structs.replace(
            old, expires_at=retires, replaced_by=ev.replaced_by
        )
    return out


AGGREGATE: Aggregate[Keys] = Aggregate(
    name="account",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(ApiKeyCreated, ApiKeyRevoked, ApiKeyRotated, ApiKeyExpirySet),
    initial={},
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types


def fold(events: Iterable[Step]) -> Keys:
    """An account's keys from its stream's events (none before any)."""
    return AGGREGATE.fold(events) or {}


# Policy events share the account stream: whatever reads the stream must know their types.
from spool.domain import account_policy as _account_policy  # noqa: E402, F401
