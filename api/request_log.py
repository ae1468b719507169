"""Request logs: one record per HTTP request on the `api.requests` logger (the seed's fields).

"Request processed", with the method, path, status, duration and request id as the record's
own fields: the process's log format (adapters/log_format.py) writes them into its JSON object,
or after the message as `key=value`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from litestar.types import HTTPScope

log = logging.getLogger("api.requests")

POLLED_PATHS = frozenset({"/dashboard/cluster", "/dashboard/nodes", "/dashboard/throughput"})
"""Polled every second by every open dashboard: logged only when DEBUG is on, or these lines
would bury the rest (and cost the endpoint a tenth of its throughput)."""

request_counts: Counter[str] = Counter()
"""HTTP requests this process has served, in all ("total") and per method; for `requests`."""


def level_of(path: str) -> int | None:
    """The level a request to `path` is logged at, or None when that level is off.

    Checked per request, so turning the logger on or off takes effect at once.
    """
    level = logging.DEBUG if path in POLLED_PATHS else logging.INFO
    return level if log.isEnabledFor(level) else None


def log_request(scope: HTTPScope, level: int, status: int, started: float) -> None:
    """Log the request: method, path, status, duration and request id."""
    duration_ms = (time.perf_counter() - started) * 1000
    # The request id comes with every record logged while the request is served
    # (adapters/log_context.py, set by api/middleware.py around this call).
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "status_code": status,
        "duration_ms": round(duration_ms, 1),
    }
    log.log(level, "Request processed", extra=fields)
