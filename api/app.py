"""The Litestar application: every surface, the OpenAPI document and Swagger UI."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Litestar, MediaType, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.response import Redirect

from adapters.account_storage import AccountStorages
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.ssrf import UrlGuard
from adapters.storage import ObjectStorage
from api.batches import BatchController
from api.dashboard import DashboardController
from api.jobs import JobsController
from api.metadata import MetadataController
from api.requests import request_id_middleware
from api.usage import UsageController
from api.user import UserController


@get("/swagger", include_in_schema=False, media_type=MediaType.HTML)
async def swagger() -> Redirect:
    return Redirect("/schema/swagger")


def create_app(
    *,
    pool: asyncpg.Pool,
    store: EventStore,
    settings: Settings,
    storage: ObjectStorage,
    **extra: Any,
) -> Litestar:
    """Build the API over open connections; the caller owns their life."""
    storages = AccountStorages(pool, settings.resolved_secret_key(), storage)

    async def close_storages() -> None:
        await storages.aclose()

    return Litestar(
        route_handlers=[
            JobsController,
            BatchController,
            DashboardController,
            MetadataController,
            UsageController,
            UserController,
            swagger,
        ],
        middleware=[request_id_middleware],
        on_shutdown=[close_storages],
        state=State(
            {
                "pool": pool,
                "store": store,
                "settings": settings,
                "storage": storage,
                "storages": storages,
                "guard": UrlGuard(settings.url_allowlist),
                **extra,
            }
        ),
        openapi_config=OpenAPIConfig(
            title="Spool",
            version="0.1.0",
            description="A self-hostable, event-sourced media job cluster.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
    )
