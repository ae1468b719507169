"""The OpenAPI document's settings and Swagger UI, served from the installed package.

Swagger UI's script, styles and icon come from `swagger-ui-bundle-v2` (the files of the
swagger-ui-dist release it names), never from a CDN: the page works on a machine with no
network beyond the API, and nothing from another origin runs beside the dashboard.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, get
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/schema/swagger-assets"
"""Where Swagger UI's own files are served."""

API_KEY_SCHEME = "ApiKey"
BEARER_SCHEME = "Bearer"


@get("/swagger", include_in_schema=False, media_type=MediaType.HTML)
async def swagger() -> Redirect:
    return Redirect("/schema/swagger")


swagger_assets = create_static_files_router(
    path=ASSETS,
    directories=[Path(swagger_ui_path)],
    name="swagger_assets",
    include_in_schema=False,
    # The files change only with the package's version, whose number is in their folder's name.
    cache_control=CacheControlHeader(max_age=3600),
)
"""Swagger UI's script, styles and icons: public, like the page, and only code."""


def openapi_config() -> OpenAPIConfig:
    """The document at `/schema/openapi.json`, its auth schemes, Swagger UI at `/schema/swagger`."""
    return OpenAPIConfig(
        title="Spool",
        version="0.1.0",
        description=(
            "A self-hostable, event-sourced media job cluster. Authenticate with an API key in "
            "`x-api-key` or as `Authorization: Bearer <key>`."
        ),
        path="/schema",
        components=Components(
            security_schemes={
                API_KEY_SCHEME: SecurityScheme(
                    type="apiKey", name="x-api-key", security_scheme_in="header"
                ),
                BEARER_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="The API key as a bearer token: `Authorization: Bearer sk_...`",
                ),
            }
        ),
        security=[{API_KEY_SCHEME: []}, {BEARER_SCHEME: []}],
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{ASSETS}/swagger-ui-bundle.js",
                css_url=f"{ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
            )
        ],
    )
