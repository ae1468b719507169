"""The Litestar application: every surface, the OpenAPI document and Swagger UI."""

from __future__ import annotations

import time
from collections.abc import Mapping

import asyncpg
from arq.connections import ArqRedis
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from spool.adapters.account_storage import AccountStorages
from spool.adapters.client_facts import describer
from spool.adapters.event_store import EventStore
from spool.adapters.file_links import link_key
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage
from spool.adapters.tokens import signing_key
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.api.auth import VerifiedKeys
from spool.api.bodies import check_body
from spool.api.cluster_redis import close_redis, open_redis
from spool.api.cluster_ws import ClusterFeed
from spool.api.dashboard import StatsCache
from spool.api.health_ws import LogBuffer, start_health, stop_health
from spool.api.media import Media
from spool.api.middleware import request_middleware
from spool.api.openapi_errors import document_errors
from spool.api.probes import probe_pool
from spool.api.services import STATE_KEY, Services
from spool.api.surfaces import SURFACE_ERRORS, SURFACES
from spool.api.swagger import openapi_config


def create_app(
    *,
    pool: asyncpg.Pool,
    store: EventStore,
    settings: Settings,
    storage: ObjectStorage,
    redis: ArqRedis | None = None,
    projection_types: Mapping[str, frozenset[str]] | None = None,
) -> Litestar:
    """Build the API over open connections; the caller owns their life (and `redis`'s, if
    given: without one, the app opens its own from `settings.redis_url` and closes it)."""
    guard = UrlGuard(settings.url_allowlist)
    secret = settings.resolved_secret_key()
    storages = AccountStorages(pool, secret, storage, guard=guard)
    # This process's live connections (websockets, playback), reported as viewer streams.
    viewers = ViewerRecorder(
        store,
        node_id=f"api-{settings.node_id}",
        interval=settings.viewer_stats_interval,
        describe=describer(settings),
    )
    services = Services(
        pool=pool,
        store=store,
        settings=settings,
        storage=storage,
        storages=storages,
        guard=guard,
        # Probes of users' sources run on threads of their own (api/probes.py).
        probes=probe_pool(settings),
        viewers=viewers,
        keys=VerifiedKeys(pool),
        redis=redis if redis is not None else open_redis(settings),
        owns_redis=redis is None,
        feed=ClusterFeed(store),
        media=Media(settings, viewers, store),
        log_buffer=LogBuffer(),
        dashboard_stats=StatsCache(),
        token_key=signing_key(secret),
        links_key=link_key(secret),
        started_at=time.time(),
        projection_types=projection_types or {},
    )

    async def open_health() -> None:
        await start_health(services.log_buffer)
        await viewers.start()

    async def close_storages() -> None:
        await storages.aclose()
        services.probes.shutdown()

    async def close_cluster_api() -> None:
        await viewers.aclose()
        await stop_health(services.log_buffer)
        await services.feed.stop()
        await close_redis(services)

    app = Litestar(
        route_handlers=SURFACES,
        # Errors no route handler takes (unknown path, wrong method) answer in their path's
        # surface shape; a body is checked (api/bodies.py) before any handler reads it.
        exception_handlers=SURFACE_ERRORS,  # type: ignore[arg-type]
        before_request=check_body,
        on_startup=[open_health],
        on_shutdown=[services.media.aclose, close_storages, close_cluster_api],
        state=State({STATE_KEY: services}),
        dependencies={"services": Provide(lambda: services, use_cache=True, sync_to_thread=False)},
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
