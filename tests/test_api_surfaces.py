"""The API by surface: every route in one surface's Router, answering errors in that surface's
shape; the documented paths and methods; handlers reach services only by injection."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar, Router
from litestar.routes import HTTPRoute

from spool.adapters.event_store import EventStore
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.api.envelope import cluster_api_error
from spool.api.errors import job_api_error, message_error
from spool.api.services import Services
from spool.api.surfaces import SURFACES, Surface, surface_of
from spool.api.swagger import ASSETS
from spool.api.viewers import VIEWER_ERRORS

DOCUMENTED: set[tuple[str, str]] = {
    # Seed 002, the job API, and what Spool adds beside it.
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("POST", "/jobs/bulk"),
    ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/events"),
    ("DELETE", "/jobs/{job_id}/file"),
    ("POST", "/jobs/{job_id}/retry"),
    ("POST", "/jobs/{job_id}/pause"),
    ("POST", "/jobs/{job_id}/resume"),
    ("GET", "/jobs/{job_id}/trace"),
    ("POST", "/subscriptions"),
    ("GET", "/subscriptions"),
    ("GET", "/subscriptions/{subscription_id}"),
    ("PATCH", "/subscriptions/{subscription_id}"),
    ("DELETE", "/subscriptions/{subscription_id}"),
    ("POST", "/subscriptions/{subscription_id}/pause"),
    ("POST", "/subscriptions/{subscription_id}/resume"),
    ("GET", "/subscriptions/{subscription_id}/checks"),
    ("PATCH", "/jobs/{job_id}"),
    ("POST", "/jobs/actions"),
    ("GET", "/operations/{operation_id}"),
    ("GET", "/jobs/failures"),
    ("GET", "/archive"),
    ("DELETE", "/archive/{archive_id}"),
    ("GET", "/batch/{batch_id}"),
    ("DELETE", "/batch/{batch_id}"),
    ("PATCH", "/batch/{batch_id}/jobs"),
    ("POST", "/batch/{batch_id}/start"),
    ("POST", "/batch/{batch_id}/pause"),
    ("POST", "/batch/{batch_id}/resume"),
    ("POST", "/batch/{batch_id}/feed"),
    ("DELETE", "/batch/{batch_id}/feed"),
    ("POST", "/subscriptions/{subscription_id}/feed"),
    ("DELETE", "/subscriptions/{subscription_id}/feed"),
    ("POST", "/metadata"),
    ("GET", "/usage"),
    *{
        (m, f"/user/{p}")
        for m in ("POST", "DELETE")
        for p in ("s3", "bucket", "gcs", "oss", "blob")
    },
    ("GET", "/user/storage"),
    ("GET", "/user/webhook"),
    ("GET", "/user/keys"),
    ("POST", "/user/keys"),
    ("DELETE", "/user/keys/{key_id}"),
    ("GET", "/admin/accounts"),
    ("GET", "/admin/accounts/{account_id}"),
    ("PUT", "/admin/accounts/{account_id}/grants"),
    ("DELETE", "/admin/accounts/{account_id}/grants"),
    ("PUT", "/admin/accounts/{account_id}/quotas"),
    ("PUT", "/admin/accounts/{account_id}/share"),
    ("POST", "/admin/accounts/{account_id}/pause"),
    ("POST", "/admin/accounts/{account_id}/resume"),
    # Media and signed links.
    ("GET", "/media/{job_id}"),
    ("HEAD", "/media/{job_id}"),
    ("GET", "/media/{job_id}/{name}"),
    ("GET", "/files/{job_id}/{kind}"),
    ("HEAD", "/files/{job_id}/{kind}"),
    # Podcast feeds, opened by their token.
    ("GET", "/batch/{batch_id}/feed.xml"),
    ("GET", "/batch/{batch_id}/feed/{episode}"),
    ("HEAD", "/batch/{batch_id}/feed/{episode}"),
    ("GET", "/subscriptions/{subscription_id}/feed.xml"),
    ("GET", "/subscriptions/{subscription_id}/feed/{episode}"),
    ("HEAD", "/subscriptions/{subscription_id}/feed/{episode}"),
    # Seed 000's dashboard panels.
    ("GET", "/dashboard/cluster"),
    ("GET", "/dashboard/nodes"),
    ("GET", "/dashboard/throughput"),
    # Seed 001: viewers.
    ("GET", "/api/cluster/viewers"),
    ("POST", "/api/cluster/viewers/events"),
    # Seed 003: the health token (the websocket is not in an OpenAPI document).
    ("POST", "/api/auth/token"),
    # Seed 004: the cluster API, and its /health and /metrics.
    ("GET", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/statistics"),
    ("GET", "/api/v1/tasks/types"),
    ("GET", "/api/v1/tasks/{task_id}"),
    ("POST", "/api/v1/tasks/{task_id}/cancel"),
    ("GET", "/api/v1/tasks/{task_id}/result"),
    ("POST", "/api/v1/tasks/{task_id}/retry"),
    ("GET", "/api/v1/tasks/{task_id}/status"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/summary"),
    ("GET", "/api/v1/devices/{device_id}"),
    ("DELETE", "/api/v1/devices/{device_id}"),
    ("POST", "/api/v1/devices/{device_id}/ping"),
    ("POST", "/api/v1/devices/{device_id}/drain"),
    ("POST", "/api/v1/devices/{device_id}/undrain"),
    ("POST", "/api/v1/devices/{device_id}/release"),
    ("GET", "/api/v1/devices/{device_id}/status"),
    ("GET", "/api/v1/config"),
    ("GET", "/api/v1/config/heartbeat"),
    ("PUT", "/api/v1/config/heartbeat"),
    ("POST", "/api/v1/config/reset"),
    ("GET", "/api/v1/config/intake"),
    ("POST", "/api/v1/config/intake/pause"),
    ("POST", "/api/v1/config/intake/resume"),
    ("GET", "/api/v1/config/server"),
    ("PUT", "/api/v1/config/server"),
    ("GET", "/api/v1/cluster/config"),
    ("GET", "/api/v1/cluster/metrics"),
    ("GET", "/api/v1/cluster/status"),
    ("GET", "/health"),
    ("GET", "/metrics"),
}

_METHODS = {"get", "post", "put", "patch", "delete", "head"}


async def test_the_openapi_document_lists_exactly_the_documented_paths_and_methods(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    served = {
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        for method in operations
        if method in _METHODS
    }
    assert served == DOCUMENTED


@pytest.fixture
def app(pool: asyncpg.Pool, store: EventStore, tmp_path: Path) -> Litestar:
    return create_app(
        pool=pool,
        store=store,
        settings=Settings(secret_key="test-secret-key"),
        storage=LocalStorage(tmp_path),
    )


def _renderer(handler: Any) -> Any:
    """The function that renders an error the handler raises."""
    return handler.resolve_exception_handlers()[Exception]


def test_every_route_answers_its_errors_in_its_surfaces_shape(app: Litestar) -> None:
    expected = {
        Surface.JOBS: {job_api_error},
        Surface.CLUSTER: {cluster_api_error},
        Surface.MESSAGE: {message_error, VIEWER_ERRORS[Exception]},
    }
    checked = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or _openapi_document(route.path):
            continue
        for handler in route.route_handlers:
            assert _renderer(handler) in expected[surface_of(route.path)], route.path
            checked += 1
    assert checked >= len(DOCUMENTED)


def _openapi_document(path: str) -> bool:
    """Litestar's own routes of the OpenAPI document, answered by the app-level handler."""
    return path.startswith("/schema") and not path.startswith(ASSETS)


def test_every_route_belongs_to_one_surface_router(app: Litestar) -> None:
    paths = {router.path for router in SURFACES}
    for route in app.routes:
        if _openapi_document(route.path):
            continue
        handlers = route.route_handlers if isinstance(route, HTTPRoute) else [route.route_handler]
        for handler in handlers:
            surfaces = [
                layer
                for layer in handler.ownership_layers
                if isinstance(layer, Router)
                and not isinstance(layer, Litestar)
                and layer.exception_handlers
            ]
            assert len(surfaces) == 1, route.path
            assert surfaces[0].path in paths


async def test_handlers_are_given_the_apps_services(app: Litestar) -> None:
    provided = app.dependencies["services"]
    assert isinstance(await provided(), Services)


# -- no handler reads the app's state ---------------------------------------------------------

ACCESSOR = "services.py"
"""The one module that knows where the app keeps its services (`services_of`)."""


def _state_reads(source: str) -> list[int]:
    """Lines that read an app's `state`: `app.state`, `x.app.state`, `scope["app"].state`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or node.attr != "state":
            continue
        base = node.value
        if (
            (isinstance(base, ast.Name) and base.id == "app")
            or (isinstance(base, ast.Attribute) and base.attr == "app")
            or (
                isinstance(base, ast.Subscript)
                and isinstance(base.slice, ast.Constant)
                and base.slice.value == "app"
            )
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_state_scan_sees_every_way_of_reaching_the_apps_state() -> None:
    source = (
        'a = request.app.state.pool\nb = socket.app.state\nc = scope["app"].state\nd = app.state'
    )
    assert _state_reads(source) == [1, 2, 3, 4]
    assert _state_reads("e = request.state.get('x')\nf = job.state") == []


def test_no_api_module_but_the_accessor_reads_the_apps_state(repo_root: Path) -> None:
    found = {
        f"{path.name}:{line}"
        for path in sorted((repo_root / "api").rglob("*.py"))
        if path.name != ACCESSOR
        for line in _state_reads(path.read_text())
    }
    assert found == set(), "take `services: Services` (api/services.py) instead"


# -- guarded surfaces ---------------------------------------------------------------------------

FORM = {"content-type": "multipart/form-data; boundary=x"}

# (method, path, what else is wrong with the request, the surface's refusal of a missing key)
UNKEYED: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    ("GET", "/dashboard/throughput?minutes=abc", {}, {"error": "Missing x-api-key header"}),
    ("GET", "/dashboard/nodes", {}, {"error": "Missing x-api-key header"}),
    (
        "POST",
        "/api/cluster/viewers/events",
        {"content": b"--x--", "headers": FORM},
        {"message": "Missing API key: send Authorization: Bearer <api key>"},
    ),
    (
        "GET",
        "/api/cluster/viewers?page=abc",
        {},
        {"message": "Missing API key: send Authorization: Bearer <api key>"},
    ),
    (
        "POST",
        "/api/auth/token",
        {"content": b"--x--", "headers": FORM},
        {"message": "Missing API key"},
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "extra", "refusal"), UNKEYED, ids=[f"{c[0]} {c[1]}" for c in UNKEYED]
)
async def test_a_guarded_surface_refuses_a_caller_without_a_key_before_reading_the_request(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    extra: dict[str, Any],
    refusal: dict[str, str],
) -> None:
    answer = await client.request(method, path, **extra)
    assert (answer.status_code, answer.json()) == (401, refusal)


async def test_the_dashboard_page_and_its_files_need_no_key(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/", "/dashboard/static/dashboard.js"):
        assert (await client.get(path)).status_code == 200, path
