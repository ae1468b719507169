"""Short-lived JWTs for the health websocket, signed with a key derived from the server secret."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import msgspec

ALGORITHM = "HS256"
AUDIENCE = "spool-health"

_LABEL = b"spool jwt signing key v1"


class TokenError(Exception):
    """A token that must be refused; the message says why, in words a client can show."""


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified token says: the key it was issued to, its account, admin, expiry."""

    key_id: str
    account_id: str
    admin: bool
    expires_at: int


def signing_key(secret: str) -> bytes:
    """The JWT key derived from the server secret, so it differs from the encryption key."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def issue_token(
    key: bytes,
    *,
    key_id: str,
    account_id: str,
    admin: bool,
    ttl_seconds: float,
    now: float | None = None,
) -> tuple[str, int]:
    """A signed token and its expiry (epoch seconds)."""
    issued_at = int(time.time() if now is None else now)
    expires_at = issued_at + max(1, int(ttl_seconds))
    claims = {
        "sub": key_id,
        "acc": account_id,
        "admin": admin,
        "aud": AUDIENCE,
        "iat": issued_at,
        "exp": expires_at,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM), expires_at


def verify_token(key: bytes, token: str) -> TokenClaims:
    """The claims of a valid token; TokenError for an expired, forged or malformed one."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # pinned: a token cannot pick "none" or another algorithm
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenError("invalid token signature") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    sub, account, admin = claims.get("sub"), claims.get("acc"), claims.get("admin")
    if not isinstance(sub, str) or not isinstance(account, str) or not isinstance(admin, bool):
        raise TokenError("invalid token: missing claims")
    return TokenClaims(key_id=sub, account_id=account, admin=admin, expires_at=int(claims["exp"]))
