"""Webhook signing: a per-account secret derived from the cluster key, HMAC-SHA256 over the body.

Deriving the secret (rather than storing one) keeps it out of the log entirely; rotating
`SPOOL_SECRET_KEY` rotates every account's webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Spool-Signature"
EVENT_HEADER = "X-Spool-Event"
DELIVERY_HEADER = "X-Spool-Delivery"
TIMESTAMP_HEADER = "X-Spool-Timestamp"


def account_secret(secret_key: str, account_id: str) -> str:
    """The secret an account verifies its webhooks with."""
    digest = hmac.new(secret_key.encode(), f"webhook:{account_id}".encode(), hashlib.sha256)
    return "whsec_" + digest.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp` (seconds since the epoch).

    The timestamp is signed with the body so a captured delivery cannot be replayed later.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    """Whether `signature` is what `sign` gives: what a receiver runs."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
