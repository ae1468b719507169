"""The Litestar application: every surface, the OpenAPI document and Swagger UI."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.datastructures import State

from spool.adapters.account_storage import AccountStorages
from spool.adapters.client_facts import describer
from spool.adapters.event_store import EventStore
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.api.admin_accounts import AdminAccountsController
from spool.api.batches import BatchController
from spool.api.bodies import check_body
from spool.api.cluster import ClusterController
from spool.api.cluster_redis import close_redis
from spool.api.cluster_ws import cluster_ws, stop_feed
from spool.api.config import ConfigController
from spool.api.dashboard import DashboardController, dashboard_static
from spool.api.devices import DevicesController
from spool.api.health import health
from spool.api.health_ws import health_ws, start_health, stop_health
from spool.api.job_trace import job_trace
from spool.api.jobs import JobsController
from spool.api.keys import KeysController
from spool.api.media import files_router, media_router, stop_media
from spool.api.metadata import MetadataController
from spool.api.metrics import metrics
from spool.api.middleware import request_middleware
from spool.api.openapi_errors import document_errors
from spool.api.probes import probe_pool
from spool.api.surfaces import SURFACE_ERRORS
from spool.api.swagger import openapi_config, swagger, swagger_assets
from spool.api.tasks import TasksController
from spool.api.tokens import issue_health_token
from spool.api.usage import UsageController
from spool.api.user import UserController, storage_router
from spool.api.viewers import list_cluster_viewers, report_viewer_events


def create_app(
    *,
    pool: asyncpg.Pool,
    store: EventStore,
    settings: Settings,
    storage: ObjectStorage,
    **extra: Any,
) -> Litestar:
    """Build the API over open connections; the caller owns their life."""
    guard = UrlGuard(settings.url_allowlist)
    storages = AccountStorages(pool, settings.resolved_secret_key(), storage, guard=guard)

    # Probes of users' sources run on threads of their own (api/probes.py).
    probes = probe_pool(settings)

    async def close_storages() -> None:
        await storages.aclose()
        probes.shutdown()

    state = State(
        {
            "pool": pool,
            "store": store,
            "settings": settings,
            "storage": storage,
            "storages": storages,
            "guard": guard,
            "probes": probes,
            "started_at": time.time(),
            **extra,
        }
    )

    # This process's live connections (websockets, playback), reported as viewer streams.
    viewers = ViewerRecorder(
        store,
        node_id=f"api-{settings.node_id}",
        interval=settings.viewer_stats_interval,
        describe=describer(settings),
    )
    state["viewers"] = viewers

    async def open_health() -> None:
        await start_health(state)
        await viewers.start()

    async def close_cluster_api() -> None:
        await viewers.aclose()
        await stop_health(state)
        await stop_feed(state)
        await close_redis(state)

    app = Litestar(
        route_handlers=[
            JobsController,
            job_trace,
            BatchController,
            DashboardController,
            dashboard_static,
            MetadataController,
            UsageController,
            AdminAccountsController,
            UserController,
            storage_router(),
            KeysController,
            TasksController,
            DevicesController,
            ConfigController,
            ClusterController,
            health,
            metrics,
            cluster_ws,
            health_ws,
            issue_health_token,
            media_router,
            files_router,
            list_cluster_viewers,
            report_viewer_events,
            swagger,
            swagger_assets,
        ],
        # Errors no route handler takes (unknown path, wrong method) answer in their path's
        # surface shape; a body is checked (api/bodies.py) before any handler reads it.
        exception_handlers=SURFACE_ERRORS,  # type: ignore[arg-type]
        before_request=check_body,
        on_startup=[open_health],
        on_shutdown=[stop_media, close_storages, close_cluster_api],
        state=state,
        openapi_config=openapi_config(),
        debug=False,
        # No logging set up by Litestar: its own handler on the root logger replaced the
        # process's, in a format of its own. Its records reach the process's handler
        # (adapters/log_format.py); it logs no exception unless in debug, and api/errors.py
        # logs each unhandled one.
        logging_config=None,
    )
    # Around the router, not in `middleware=`: Litestar runs that list only once a route is
    # found, so a 404 or 405 had no request id, was not logged and was not rate-limited.
    app.asgi_handler = request_middleware(app.asgi_handler)
    # Built now, once every route is registered: the document served is this object.
    document_errors(app.openapi_schema)
    return app
