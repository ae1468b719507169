"""Authentication by API key: `x-api-key`, or `Authorization: Bearer`, checked against digests."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.types import Scope

from api.errors import JobApiError
from domain.account import hash_key


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the key, its account, and whether it may see the whole cluster."""

    key_id: str
    account_id: str
    admin: bool


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a request carries, if any: `x-api-key`, else `Authorization: Bearer`."""
    return key_in(connection.scope)


def key_in(scope: Scope) -> str | None:
    """The key in a request's raw headers: `x-api-key`, else `Authorization: Bearer`."""
    # The raw header pairs, not `connection.headers`: building that mapping cost more than the
    # rest of the check on the dashboard's hot path. Servers send header names lower-cased.
    bearer = None
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            key = value.decode("latin-1").strip()
            if key:
                return key
        elif name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
    return bearer


KEY_CACHE_SECONDS = 5.0
"""How long a verified key is trusted without asking the database again: a revoked key stops
working within this time. Only keys that verified are kept, so guessing cannot fill the cache."""

_KEY_CACHE_LIMIT = 10_000


def _verified(state: State) -> dict[str, tuple[Principal, float]]:
    verified: dict[str, tuple[Principal, float]] = state.setdefault("verified_keys", {})
    return verified


def recently_verified(state: State, key: str) -> Principal | None:
    """The principal of a key verified in the last `KEY_CACHE_SECONDS`, without a query."""
    return _still_trusted(state, hash_key(key))


def _still_trusted(state: State, digest: str) -> Principal | None:
    cached = _verified(state).get(digest)
    return cached[0] if cached is not None and cached[1] > time.monotonic() else None


async def lookup(state: State, key: str) -> Principal | None:
    """The principal a key belongs to, or None for an unknown or revoked key."""
    digest = hash_key(key)
    known = _still_trusted(state, digest)
    if known is not None:
        return known
    verified = _verified(state)
    row = await state.pool.fetchrow(
        "SELECT key_id, account_id, admin FROM api_keys WHERE key_hash = $1 AND NOT revoked",
        digest,
    )
    if row is None:
        verified.pop(digest, None)
        return None
    principal = Principal(row["key_id"], row["account_id"], row["admin"])
    if len(verified) >= _KEY_CACHE_LIMIT:
        verified.clear()
    verified[digest] = (principal, time.monotonic() + KEY_CACHE_SECONDS)
    return principal


async def job_api_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller of a job API endpoint; 401 in the job API's words otherwise."""
    key = presented_key(request)
    if key is None:
        raise JobApiError(status_code=401, detail="Missing x-api-key header")
    principal = await lookup(request.app.state, key)
    if principal is None:
        raise JobApiError(status_code=401, detail="Invalid API Key")
    return principal


async def job_api_admin(request: Request[Any, Any, Any]) -> Principal:
    """An admin caller of a cluster-wide endpoint under the job API's error shape."""
    principal = await job_api_principal(request)
    if not principal.admin:
        raise JobApiError(status_code=403, detail="This endpoint needs an admin API key")
    return principal
