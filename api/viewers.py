"""`/api/cluster/viewers`: the live connections list (seed 001), and the events API through
which external media servers report their own sessions.

Both answer errors as `{"message": ...}`. Both need an admin key: the list shows every client's
address across all accounts, and the events API writes into the cluster's record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from spool.adapters.event_store import EventStore
from spool.adapters.read_models.viewers import DEFAULT_ROWS_PER_PAGE, ViewerQuery, list_viewers
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.api.auth import Principal, Unauthenticated, key_holder
from spool.api.bodies import body_fault, reads_body
from spool.api.cluster_reads import REFUSED, may_read_cluster
from spool.api.errors import message_error
from spool.api.guards import admitted
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application.viewers import Item
from spool.application.viewers import report_viewer_events as record_viewer_events
from spool.domain import viewer

MAX_ROWS_PER_PAGE = 100
MAX_EVENTS = 1000
"""Most events one POST may carry."""


log = logging.getLogger("spool.api")


class ViewerApiError(Exception):
    """An answer other than 2xx, in the viewer API's shape: `{"message": ...}`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """Map any exception under the viewer API to its `{"message": ...}` shape."""
    if isinstance(exc, ViewerApiError):
        return Response({"message": exc.message}, status_code=exc.status_code)
    return message_error(request, exc)


VIEWER_ERRORS = {Exception: _error}


async def viewer_caller(request: Request[Any, Any, Any], services: Services) -> Principal:
    """The caller of the viewer API (its Router's guard); 401 as `{"message"}` otherwise."""
    return await key_holder(request, services.keys, _UNAUTHENTICATED)


def _unauthenticated(message: str) -> ViewerApiError:
    return ViewerApiError(401, message)


_UNAUTHENTICATED = Unauthenticated(
    _unauthenticated,
    missing="Missing API key: send Authorization: Bearer <api key>",
    invalid="Invalid API key",
)


def _admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not admitted(connection.scope).admin:
        raise ViewerApiError(403, "This endpoint needs an admin API key")


def _cluster_reader(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not may_read_cluster(admitted(connection.scope).admin):
        # The list holds every client's IP address across all accounts.
        raise ViewerApiError(403, REFUSED)


# -- the list ------------------------------------------------------------------------------


def parse_query(params: Mapping[str, str]) -> ViewerQuery:
    """The seed's query parameters, checked; ViewerApiError(400) names the bad one."""
    page = _integer(params, "page", 1, "page must be an integer of 1 or more")
    if page < 1:
        raise ViewerApiError(400, "page must be an integer of 1 or more")
    rows = _integer(
        params,
        "rowsPerPage",
        DEFAULT_ROWS_PER_PAGE,
        f"rowsPerPage must be an integer from 1 to {MAX_ROWS_PER_PAGE}",
    )
    if not 1 <= rows <= MAX_ROWS_PER_PAGE:
        raise ViewerApiError(400, f"rowsPerPage must be an integer from 1 to {MAX_ROWS_PER_PAGE}")
    search = params.get("search", "").strip()
    if len(search) > viewer.MAX_TEXT:
        raise ViewerApiError(400, f"search must be at most {viewer.MAX_TEXT} characters")
    harness = params.get("harnessType")
    if harness is not None and harness not in viewer.HARNESS_TYPES:
        raise ViewerApiError(400, f"harnessType must be one of: {', '.join(viewer.HARNESS_TYPES)}")
    system: bool | None = None
    raw = params.get("systemClients")
    if raw is not None:
        if raw.lower() not in ("true", "false"):
            raise ViewerApiError(400, 'systemClients must be "true" or "false"')
        system = raw.lower() == "true"
    return ViewerQuery(page, rows, search, harness, system)


def _integer(params: Mapping[str, str], name: str, default: int, message: str) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ViewerApiError(400, message) from None


def _viewer(r: asyncpg.Record, now_ms: int) -> dict[str, Any]:
    return {
        "id": r["viewer_id"],
        "state": r["state"],
        "harnessType": r["harness_type"],
        "applicationId": r["application_id"],
        "streamKey": r["stream_key"],
        "remoteAddress": r["remote_address"],
        "deviceType": r["device_type"],
        "osName": r["os_name"],
        "browserName": r["browser_name"],
        "countryCode": r["country_code"],
        "countryName": r["country_name"],
        "startTime": r["started_at"],
        "duration": max(0, now_ms - r["started_at"]),
        "inBandwidth": r["in_bandwidth"],
        "outBandwidth": r["out_bandwidth"],
        "inTotalBytes": r["in_total_bytes"],
        "outTotalBytes": r["out_total_bytes"],
        "healthScore": r["health_score"],
        "healthGrade": r["health_grade"],
    }


@get("/", guards=[_cluster_reader], tags=["viewers"])
async def list_cluster_viewers(
    request: Request[Any, Any, Any], services: Services
) -> Response[dict[str, Any]]:
    """Live viewers, newest first: `page`, `rowsPerPage`, `search`, `harnessType`,
    `systemClients`. Admin key in `Authorization: Bearer`.

    `search` matches a viewer whose id, stream key, remote address, country code or country
    name equals it, ignoring case. `systemClients=false` hides TRANSCODER and FILE_WRITER
    sessions; `true` or absent shows them. A page past the last is empty, with exact totals.
    """
    began = time.perf_counter()
    q = parse_query(request.query_params)
    page = await list_viewers(services.pool, q)
    now_ms = int(time.time() * 1000)
    total_pages = math.ceil(page.total / q.rows_per_page)
    body = {
        "data": {
            "totalItems": page.total,
            "itemsPerPage": q.rows_per_page,
            "totalPages": total_pages,
            "currentPage": q.page,
            "hasPrevious": q.page > 1,
            "hasNext": q.page < total_pages,
            "list": [_viewer(r, now_ms) for r in page.rows],
        },
        "meta": {
            "executionTime": int((time.perf_counter() - began) * 1000),
            "generatedAt": now_ms,
        },
    }
    return Response(body)


# -- the events API ------------------------------------------------------------------------


class EventsBody(msgspec.Struct, forbid_unknown_fields=True):
    events: list[Item]


_decode_body = msgspec.json.Decoder(EventsBody).decode


@post(
    "/events",
    status_code=200,
    opt=reads_body("events"),
    guards=[_admin],
    tags=["viewers"],
)
async def report_viewer_events(
    request: Request[Any, Any, Any], services: Services, principal: Principal
) -> Response[dict[str, Any]]:
    """Sessions of an external media server: `{"events": [{"type": "connect" | "stats" |
    "state" | "disconnect", "id": ..., ...}]}`, at most 1,000, admin key.

    All or nothing: the first item that cannot be recorded answers 400 (invalid), 404 (unknown
    viewer) or 409 (already connected, or already disconnected), naming its index, and nothing
    of the request is appended. Answers the viewer id of each event, in order.
    """
    if (fault := body_fault(request)) is not None:
        raise fault
    try:
        body = _decode_body(await request.body())
    except msgspec.ValidationError as exc:
        raise ViewerApiError(400, f"Invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise ViewerApiError(400, 'The body must be JSON: {"events": [...]}') from None
    if not body.events:
        raise ViewerApiError(400, "events must hold at least one event")
    if len(body.events) > MAX_EVENTS:
        raise ViewerApiError(400, f"events must hold at most {MAX_EVENTS} events")

    store: EventStore = services.store
    recorder: ViewerRecorder = services.viewers
    reporter = f"key:{principal.key_id}"
    meta = command_metadata(request, reporter)
    ids = await record_viewer_events(store, recorder, body.events, meta, reporter=reporter)
    return Response({"ids": ids})
