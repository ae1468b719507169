"""Accounts and their API keys. Keys are stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib

from domain.events import Event, event

KEY_PREFIX = "sk_"


@event
class ApiKeyCreated(Event, frozen=True, kw_only=True):
    """A key was issued; only its digest and a short hint are kept."""

    key_id: str
    account_id: str
    name: str
    key_hash: str
    hint: str
    admin: bool = False


@event
class ApiKeyRevoked(Event, frozen=True, kw_only=True):
    key_id: str


def stream_id(account_id: str) -> str:
    """The event stream that holds one account."""
    return f"account-{account_id}"


def hash_key(key: str) -> str:
    """Digest of an API key. Keys are 256-bit random, so a plain SHA-256 cannot be brute-forced."""
    return hashlib.sha256(key.encode()).hexdigest()


def hint(key: str) -> str:
    """A masked form of a key that is safe to show: `sk_…abcd`."""
    return f"{KEY_PREFIX}…{key[-4:]}"


def issue_key(*, key: str, key_id: str, account_id: str, name: str, admin: bool) -> list[Event]:
    """Decide the events that issue `key` to an account."""
    if not key.startswith(KEY_PREFIX) or len(key) < 24:
        raise ValueError(f"an API key starts with {KEY_PREFIX!r} and has at least 24 characters")
    if not name.strip():
        raise ValueError("a key needs a name")
    return [
        ApiKeyCreated(
            key_id=key_id,
            account_id=account_id,
            name=name.strip(),
            key_hash=hash_key(key),
            hint=hint(key),
            admin=admin,
        )
    ]


# Policy events share the account stream: whatever reads the stream must know their types.
from domain import account_policy as _account_policy  # noqa: E402, F401
