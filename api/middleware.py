"""The one middleware every HTTP request passes: request id, count, rate limit, log.

One middleware rather than three: each layer wrapped `send` again, and on a cheap endpoint
polled every second (`/dashboard/cluster`) the layers cost a sixth of its throughput.
"""

from __future__ import annotations

import re
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from spool.adapters.log_context import REQUEST_ID
from spool.api import rate_limit
from spool.api.request_log import level_of, log_request, request_counts
from spool.api.requests import new_request_id

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_middleware(app: ASGIApp) -> ASGIApp:
    """Give each HTTP request an id (`x-request-id`), count it, rate-limit it, log it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if given and _SAFE_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        request_counts["total"] += 1
        request_counts[scope["method"]] += 1
        # Raw pairs appended to the answer: none of these names exists yet, and a header
        # wrapper class cost a tenth of a cheap endpoint's time.
        extra = [(b"x-request-id", rid.encode("latin-1"))]
        verdict = await rate_limit.check(scope)
        if verdict is not None:
            extra.extend(verdict.headers)
        level = level_of(scope["path"])
        started = time.perf_counter() if level is not None else 0.0
        status = 500
        # Every record logged while the request is served names it.
        logged_as = REQUEST_ID.set(rid)

        async def send_more(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            if verdict is not None and verdict.refused:
                await rate_limit.refuse(scope, send_more, verdict)
            else:
                await app(scope, receive, send_more)
        finally:
            if level is not None:
                log_request(scope, level, status, started)
            REQUEST_ID.reset(logged_as)

    return middleware
