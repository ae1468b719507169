"""Request logs: one JSON line per HTTP request on the `api.requests` logger (the seed's fields)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("api.requests")

_encode = msgspec.json.Encoder().encode

POLLED_PATHS = frozenset({"/dashboard/cluster"})
"""Polled every second by every open dashboard: logged only when DEBUG is on, or these lines
would bury the rest (and cost the endpoint a tenth of its throughput)."""

request_counts: Counter[str] = Counter()
"""HTTP requests this process has served, in all ("total") and per method; for `requests`."""


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Log method, path, status and duration of each request, when INFO is enabled."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_counts["total"] += 1
        request_counts[scope["method"]] += 1
        # Checked per request, so turning the logger on or off takes effect at once.
        level = logging.DEBUG if scope["path"] in POLLED_PATHS else logging.INFO
        if not log.isEnabledFor(level):
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_see)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            line = {
                "timestamp": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": logging.getLevelName(level),
                "logger": log.name,
                "message": "Request processed",
                "request_id": scope.get("state", {}).get("request_id"),
                "method": scope["method"],
                "path": scope["path"],
                "status_code": status,
                "duration_ms": round(duration_ms, 1),
            }
            log.log(level, _encode(line).decode())

    return middleware
