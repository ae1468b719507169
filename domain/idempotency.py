"""Idempotency keys: a client's retried request gets the first answer instead of a second job.

A request that carries `Idempotency-Key` and creates something is recorded in a stream of its
own, per account and key, in the same transaction as what it created: the first request to
commit wins, and every later one with the same key is answered from that record. Keys are
never forgotten (the record is an event like any other).
"""

from __future__ import annotations

import hashlib

from spool.domain.events import Event, event

MAX_KEY_LENGTH = 255


@event
class RequestRecorded(Event, frozen=True, kw_only=True):
    """The first request with a key, by its fingerprint, and the answer it was given."""

    account_id: str
    key_digest: str
    method: str
    path: str
    fingerprint: str
    status: int
    answer: str


class BadIdempotencyKey(ValueError):
    """A key that is empty, too long or not printable ASCII."""


def check_key(raw: str) -> str:
    """The key as given, if it is 1 to 255 printable ASCII characters."""
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not all(" " < c <= "~" for c in raw):
        raise BadIdempotencyKey(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "without spaces"
        )
    return raw


def key_digest(key: str) -> str:
    """A fixed-size name for a key of any length (keys may be secrets of the client's own)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def stream_id(account_id: str, key: str) -> str:
    """The stream that records the first request of an account with `key`."""
    return f"idempotency-{account_id}-{key_digest(key)[:32]}"


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request: method, path and body, byte for byte."""
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()
