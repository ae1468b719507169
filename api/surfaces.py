"""The API's surfaces: one Litestar `Router` each, and the error shape of a path no route takes.

Each surface's Router carries what all of its endpoints share: its path, its error renderer
(`exception_handlers`) and who may call it: either a guard (api/guards.py) that admits the caller
before anything else is read, handing it on as the `principal` dependency, or a `principal`
dependency that authenticates the caller itself. An endpoint is a handler in the surface's
module, listed in its Router; it takes `principal` and `services` (api/services.py) as
parameters. The job API (`/jobs`, `/batch`, `/user`, ...)
answers `{"error": ...}`; the cluster API (`/api/v1`) the seed's envelope; the viewers and the
health token and websocket `{"message": ...}`; media, the dashboard and the operational
endpoints (`/health`, `/metrics`, `/ws`, Swagger UI) `{"error": ...}`.

Litestar raises 404 and 405 while routing, before any Router's own handlers are known, and
answers its own `{"status_code", "detail"}` unless the app has a handler. `surface_error` is
that handler: it picks the surface by path and renders the error as that surface does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import Enum
from typing import Any

from litestar import Request, Response, Router
from litestar.di import Provide
from litestar.types import ControllerRouterHandler, ExceptionHandlersMap, Guard

from spool.api.admin_accounts import AdminAccountsController
from spool.api.archive import ArchiveController
from spool.api.auth import Principal, job_api_principal
from spool.api.batches import BatchController
from spool.api.cluster import ClusterController
from spool.api.cluster_reads import job_api_cluster_reader
from spool.api.cluster_ws import cluster_ws
from spool.api.config import ConfigController
from spool.api.dashboard import DashboardController, dashboard_static
from spool.api.devices import DevicesController
from spool.api.envelope import CLUSTER_API_ERRORS, cluster_api_error, cluster_principal
from spool.api.errors import JOB_API_ERRORS, MESSAGE_ERRORS, job_api_error, message_error
from spool.api.feeds import FEED_ROUTES, BatchFeedController, SubscriptionFeedController
from spool.api.guards import ADMITTED, Admit, guard
from spool.api.health import health
from spool.api.health_ws import health_ws
from spool.api.job_trace import job_trace
from spool.api.jobs import JobsController
from spool.api.keys import KeysController
from spool.api.media import files_router, media_router
from spool.api.metadata import MetadataController
from spool.api.metrics import metrics
from spool.api.operations import OperationsController
from spool.api.subscriptions import SubscriptionsController
from spool.api.swagger import swagger, swagger_assets
from spool.api.tasks import TasksController
from spool.api.tokens import issue_health_token, token_caller
from spool.api.usage import UsageController
from spool.api.user import UserController, storage_router
from spool.api.viewers import (
    VIEWER_ERRORS,
    list_cluster_viewers,
    report_viewer_events,
    viewer_caller,
)

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


def surface(
    path: str,
    route_handlers: Sequence[ControllerRouterHandler],
    errors: Mapping[type[Exception], Callable[..., Response[Any]]],
    *,
    admit: Admit | None = None,
    principal: Callable[..., Awaitable[Principal]] | None = None,
) -> Router:
    """One surface's Router: its routes, the renderer of its errors, and who may call it.

    `admit` makes a guard (api/guards.py) that lets the caller in before anything else is read
    and hands it on as the `principal` dependency; `principal` instead is a dependency that
    authenticates the caller itself, as the handler's parameters are resolved.
    """
    assert admit is None or principal is None, "one way of authenticating a surface"
    # Litestar's map is keyed by status codes too and typed for handlers of
    # `Request[Any, Any, State]`; ours take any Request and are keyed by exception alone.
    handlers: ExceptionHandlersMap = {kind: render for kind, render in errors.items()}
    guards: list[Guard] = []
    caller = None if principal is None else Provide(principal)
    if admit is not None:
        guards, caller = [guard(admit)], ADMITTED
    return Router(
        path=path,
        route_handlers=route_handlers,
        guards=guards,
        dependencies={} if caller is None else {"principal": caller},
        exception_handlers=handlers,
    )


JOB_API = surface(
    "/",
    [
        JobsController,
        ArchiveController,
        OperationsController,
        job_trace,
        BatchController,
        BatchFeedController,
        SubscriptionFeedController,
        SubscriptionsController,
        MetadataController,
        UsageController,
        UserController,
        storage_router(),
        KeysController,
        AdminAccountsController,  # its `admin` dependency on top of the caller
    ],
    JOB_API_ERRORS,
    principal=job_api_principal,
)
"""Seed 002 and what Spool adds beside it: jobs, batches, metadata, usage, the user's storage,
webhook and keys, the admin's accounts. Key in `x-api-key` or `Authorization: Bearer`."""

CLUSTER_API = surface(
    CLUSTER_PREFIX,
    [TasksController, DevicesController, ConfigController, ClusterController],
    CLUSTER_API_ERRORS,
    # Devices and cluster reads narrow it to admin keys (`cluster_reader`), the config too.
    principal=cluster_principal,
)
"""Seed 004's `/api/v1`: tasks, devices, config and cluster status, in its envelope."""

VIEWERS = surface(
    "/api/cluster/viewers",
    [list_cluster_viewers, report_viewer_events],
    VIEWER_ERRORS,
    admit=viewer_caller,  # each route narrows it to admin keys
)
"""Seed 001's viewer list and the events API of external media servers (admin keys)."""

HEALTH = surface(
    "/",
    [issue_health_token, health_ws],
    MESSAGE_ERRORS,
    admit=token_caller,  # the socket is keyless: its token comes in band
)
"""Seed 003: `POST /api/auth/token` (a key for a JWT) and the `ws /api/health/ws` it opens."""

MEDIA = surface("/", [media_router, files_router, *FEED_ROUTES], JOB_API_ERRORS)
"""Playback (`/media`, owner key or `?token=`), signed file links (`/files`, no key) and
podcast feeds (`/batch/{id}/feed.xml`, the feed's `?token=`)."""

DASHBOARD = surface(
    "/dashboard",
    [DashboardController, dashboard_static],
    JOB_API_ERRORS,
    admit=job_api_cluster_reader,  # the page and its files are keyless
)
"""The dashboard page and its files (public) and its panels (admin keys)."""

OPERATIONS = surface("/", [health, metrics, cluster_ws, swagger, swagger_assets], JOB_API_ERRORS)
"""`/health` (no key), `/metrics` (admin key or scrape token), `ws /ws` (key), Swagger UI: each
route that takes a key has a guard of its own (`metrics_reader`, `socket_caller`)."""

SURFACES = [JOB_API, CLUSTER_API, VIEWERS, HEALTH, MEDIA, DASHBOARD, OPERATIONS]
"""Every route of the API, one Router per surface: what `create_app` serves."""
