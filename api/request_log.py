"""Request logs: one JSON line per HTTP request on the `api.requests` logger (the seed's fields)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("api.requests")

_encode = msgspec.json.Encoder().encode


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    """Log method, path, status and duration of each request, when INFO is enabled."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # Checked per request, so turning the logger on or off takes effect at once.
        if scope["type"] != ScopeType.HTTP or not log.isEnabledFor(logging.INFO):
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
                "level": "INFO",
                "logger": log.name,
                "message": "Request processed",
                "request_id": scope.get("state", {}).get("request_id"),
                "method": scope["method"],
                "path": scope["path"],
                "status_code": status,
                "duration_ms": round(duration_ms, 1),
            }
            log.info(_encode(line).decode())

    return middleware
