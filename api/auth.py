"""Authentication by API key: `x-api-key`, or `Authorization: Bearer`, checked against digests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.types import Scope

from spool.adapters.database import unreachable
from spool.adapters.read_models import api_keys
from spool.api.errors import JobApiError
from spool.api.services import Services
from spool.domain.account import allows, hash_key, parse_scope


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the key, its account, and its scope (domain/account.py); when the key
    stops working, and whether it was rotated out (it works only through its grace)."""

    key_id: str
    account_id: str
    scope: str
    expires_at: datetime | None = None
    replaced: bool = False

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes the key holds, as a set."""
        return parse_scope(self.scope)

    @property
    def admin(self) -> bool:
        """Whether the key may do everything, cluster-wide."""
        return self.scope == "admin"


_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEYS_PATH = "/user/keys"
_TASKS_PATH = "/api/v1/tasks"
# The health token only lets its holder read (the health websocket).
_READ_POSTS = frozenset({"/api/auth/token"})


def needed_scopes(method: str, path: str) -> frozenset[str]:
    """The scopes of which a key needs one for a request: reads need `read` (every key), task
    writes `tasks`, managing one's keys any scope that writes, every other write `jobs`.
    Endpoints for admins alone check `admin` on top."""
    if method in _READS or path in _READ_POSTS:
        return frozenset({"read"})
    if path == _KEYS_PATH or path.startswith(_KEYS_PATH + "/"):
        return frozenset({"jobs", "tasks"})
    if path == _TASKS_PATH or path.startswith(_TASKS_PATH + "/"):
        return frozenset({"tasks"})
    return frozenset({"jobs"})


def scope_refusal(principal: Principal, method: str, path: str) -> str | None:
    """Why `principal`'s scope does not allow this request, or None when it does."""
    needed = needed_scopes(method, path)
    held = principal.scopes
    if any(allows(held, need) for need in needed):
        return None
    return (
        f"This API key's scope ({principal.scope}) does not allow {method} {path}: "
        f"it needs {' or '.join(sorted(needed))}"
    )


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


KEY_CACHE_SECONDS = 4.0
"""How long a verified key is trusted without asking the database again. A revoked key stops
working within this time plus the `api_keys` projection's lag (well under the promised 5 s).
Only keys that verified are kept, so guessing cannot fill the cache."""

LAST_USED_EVERY_SECONDS = 60
"""A key's last-used time is written at most this often: it is telemetry, not an event."""

_KEY_CACHE_LIMIT = 10_000


class VerifiedKeys:
    """The keys this process verified lately, by digest, each with when its trust ends."""

    __slots__ = ("pool", "trusted")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.trusted: dict[str, tuple[Principal, float]] = {}


def recently_verified(keys: VerifiedKeys, key: str) -> Principal | None:
    """The principal of a key verified in the last `KEY_CACHE_SECONDS`, without a query."""
    return _still_trusted(keys, hash_key(key))


def _still_trusted(keys: VerifiedKeys, digest: str) -> Principal | None:
    cached = keys.trusted.get(digest)
    return cached[0] if cached is not None and cached[1] > time.monotonic() else None


_USED = f"""
INSERT INTO api_key_use AS u (key_id, used_at) VALUES ($1, now())
ON CONFLICT (key_id) DO UPDATE SET used_at = excluded.used_at
WHERE u.used_at < excluded.used_at - interval '{LAST_USED_EVERY_SECONDS} seconds'
"""


async def lookup(keys: VerifiedKeys, key: str) -> Principal | None:
    """The principal a key belongs to, or None for an unknown, revoked or expired key."""
    digest = hash_key(key)
    known = _still_trusted(keys, digest)
    if known is not None:
        return known
    verified = keys.trusted
    row = await api_keys.working_key(keys.pool, digest)
    if row is None:
        verified.pop(digest, None)
        return None
    principal = Principal(
        row["key_id"],
        row["account_id"],
        row["scope"],
        row["expires_at"],
        row["replaced_by"] is not None,
    )
    now = datetime.now(UTC)
    used: datetime | None = row["used_at"]
    if used is None or (now - used).total_seconds() >= LAST_USED_EVERY_SECONDS:
        await keys.pool.execute(_USED, principal.key_id)
    trust = KEY_CACHE_SECONDS
    expires: datetime | None = row["expires_at"]
    if expires is not None:
        trust = min(trust, (expires - now).total_seconds())
    if len(verified) >= _KEY_CACHE_LIMIT:
        verified.clear()
    verified[digest] = (principal, time.monotonic() + trust)
    return principal


async def key_alive(pool: asyncpg.Pool, key_id: str) -> bool:
    """Whether the key `key_id` still works: known, not revoked, not expired."""
    return await api_keys.key_works(pool, key_id)


async def key_gone(pool: asyncpg.Pool, key_id: str, every: float) -> None:
    """Return once the key `key_id` stops working (revoked, expired), asking every `every` s.

    What an open websocket waits on beside its work: it closes when this returns. A database
    outage is not a revocation: the question is asked again next time.
    """
    while True:
        await asyncio.sleep(every)
        try:
            if not await key_alive(pool, key_id):
                return
        except Exception as exc:
            if not unreachable(exc):
                raise


class Unauthenticated(NamedTuple):
    """How a surface answers a request without a working key: `refuse(message)` is its 401."""

    refuse: Callable[[str], Exception]
    missing: str
    """Said to a request without a key."""
    invalid: str
    """Said to a key that is unknown, revoked or expired."""


async def key_holder(
    connection: ASGIConnection[Any, Any, Any, Any], keys: VerifiedKeys, words: Unauthenticated
) -> Principal:
    """Whose working key a request carries; the surface's 401 (`words`) raised otherwise."""
    key = presented_key(connection)
    if key is None:
        raise words.refuse(words.missing)
    principal = await lookup(keys, key)
    if principal is None:
        raise words.refuse(words.invalid)
    return principal


def _job_api_refusal(message: str) -> JobApiError:
    return JobApiError(status_code=401, detail=message)


_JOB_API_UNAUTHENTICATED = Unauthenticated(
    _job_api_refusal, missing="Missing x-api-key header", invalid="Invalid API Key"
)


async def job_api_principal(request: Request[Any, Any, Any], services: Services) -> Principal:
    """The caller of a job API endpoint; 401 in the job API's words otherwise."""
    principal = await key_holder(request, services.keys, _JOB_API_UNAUTHENTICATED)
    refusal = scope_refusal(principal, request.method, request.url.path)
    if refusal is not None:
        raise JobApiError(status_code=403, detail=refusal)
    return principal


async def job_api_admin(request: Request[Any, Any, Any], services: Services) -> Principal:
    """An admin caller of a cluster-wide endpoint under the job API's error shape."""
    principal = await job_api_principal(request, services)
    if not principal.admin:
        raise JobApiError(status_code=403, detail="This endpoint needs an admin API key")
    return principal
