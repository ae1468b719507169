"""Which API surface a path belongs to, and the one app-level handler that answers in its shape.

Litestar raises 404 and 405 while routing, before any controller's own handlers are known, and
answers its own `{"status_code", "detail"}` unless the app has a handler. This module is that
handler: it picks the surface by path and renders the error as that surface does.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from litestar import Request, Response

from spool.api.envelope import cluster_api_error
from spool.api.errors import job_api_error, message_error

CLUSTER_PREFIX = "/api/v1"
MESSAGE_PREFIXES = ("/api/cluster/viewers", "/api/auth/")
"""The viewer list and the health token answer `{"message": ...}`."""


class Surface(Enum):
    """An API surface, each with its own error shape."""

    JOBS = "jobs"
    """The job API and every path outside the other surfaces: `{"error": ...}`."""
    CLUSTER = "cluster"
    """`/api/v1`: the seed's error envelope with an `error_code`."""
    MESSAGE = "message"
    """The viewer list and the health token: `{"message": ...}`."""


def surface_of(path: str) -> Surface:
    """The surface whose error shape a request to `path` answers in."""
    if path == CLUSTER_PREFIX or path.startswith(CLUSTER_PREFIX + "/"):
        return Surface.CLUSTER
    if path.startswith(MESSAGE_PREFIXES):
        return Surface.MESSAGE
    return Surface.JOBS


def surface_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Answer any error no route handler took (unknown path, wrong method) in its surface's
    shape."""
    surface = surface_of(request.url.path)
    if surface is Surface.CLUSTER:
        return cluster_api_error(request, exc)
    if surface is Surface.MESSAGE:
        return message_error(request, exc)
    return job_api_error(request, exc)


SURFACE_ERRORS = {Exception: surface_error}
