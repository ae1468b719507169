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
from typing import Any, NamedTuple

import asyncpg
import msgspec
from litestar import Request, Response, get, post

from spool.adapters.event_store import EventStore
from spool.adapters.tables import VIEWER_SPAN_WIDTHS
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.api.auth import Principal, lookup, presented_key
from spool.api.bodies import body_fault, reads_body
from spool.api.cluster_reads import REFUSED, may_read_cluster
from spool.api.errors import message_error
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application.viewers import Item
from spool.application.viewers import report_viewer_events as record_viewer_events
from spool.domain import viewer

MAX_ROWS_PER_PAGE = 100
DEFAULT_ROWS_PER_PAGE = 10
MAX_EVENTS = 1000
"""Most events one POST may carry."""

NON_SYSTEM_TYPES: tuple[str, ...] = tuple(
    t for t in viewer.HARNESS_TYPES if t not in viewer.SYSTEM_HARNESS_TYPES
)


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


async def _caller(request: Request[Any, Any, Any], services: Services) -> Principal:
    key = presented_key(request)
    if key is None:
        raise ViewerApiError(401, "Missing API key: send Authorization: Bearer <api key>")
    principal = await lookup(services.keys, key)
    if principal is None:
        raise ViewerApiError(401, "Invalid API key")
    return principal


async def _admin(request: Request[Any, Any, Any], services: Services) -> Principal:
    principal = await _caller(request, services)
    if not principal.admin:
        raise ViewerApiError(403, "This endpoint needs an admin API key")
    return principal


async def _cluster_reader(request: Request[Any, Any, Any], services: Services) -> Principal:
    principal = await _caller(request, services)
    if not may_read_cluster(principal.admin):
        # The list holds every client's IP address across all accounts.
        raise ViewerApiError(403, REFUSED)
    return principal


# -- the list ------------------------------------------------------------------------------


class ViewerQuery(NamedTuple):
    """One list request, checked: what the query function needs."""

    page: int = 1
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE
    search: str = ""
    harness_type: str | None = None
    system_clients: bool | None = None


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


_COLUMNS = """
v.viewer_id, v.state, v.harness_type, v.application_id, v.stream_key, v.remote_address,
v.device_type, v.os_name, v.browser_name, v.country_code, v.country_name, v.started_at,
v.in_bandwidth, v.out_bandwidth, v.in_total_bytes, v.out_total_bytes, v.health_score,
v.health_grade
"""

# One statement per filter shape, with and without a start-time bound, so each (prepared, later
# generic) plan is an index scan of the one `viewer_terms` index that holds that range in the
# list's order.
_WHERE = {
    "all": "t.term = $1",
    "harness": "t.term = $1 AND t.harness_type = $4",
    "viewers": "t.term = $1 AND NOT t.system",
}


def _page_sql(shape: str, bounded: bool) -> str:
    where = _WHERE[shape]
    if bounded:
        where += f" AND t.started_at < ${5 if shape == 'harness' else 4}"
    return f"""
WITH page AS (
    SELECT t.viewer_id FROM viewer_terms t WHERE {where}
    ORDER BY t.started_at DESC, t.viewer_id OFFSET $2 LIMIT $3
)
SELECT {_COLUMNS} FROM page JOIN viewers v USING (viewer_id)
"""


_PAGES = {(s, b): _page_sql(s, b) for s in _WHERE for b in (False, True)}

DIRECT_OFFSET = 2_000
"""Pages that begin this close to the newest viewer skip rows of the list index; deeper pages
first find the minute they begin in from `viewer_term_spans`, then skip within it."""

_SPANS = """
SELECT start, sum(live)::bigint AS live FROM viewer_term_spans
WHERE term = $1 AND width = $2 AND harness_type = ANY($3::text[]) AND start >= $4 AND start < $5
GROUP BY start ORDER BY start DESC
"""

_TOTAL = """
SELECT coalesce(sum(live), 0)::bigint FROM viewer_term_counts
WHERE term = $1 AND harness_type = ANY($2::text[])
"""


class ViewerPage(NamedTuple):
    total: int
    rows: list[asyncpg.Record]


def _types(q: ViewerQuery) -> tuple[str, ...]:
    """The harness types a query admits."""
    if q.harness_type is not None:
        if q.system_clients is False and q.harness_type in viewer.SYSTEM_HARNESS_TYPES:
            return ()
        return (q.harness_type,)
    if q.system_clients is False:
        return NON_SYSTEM_TYPES
    return viewer.HARNESS_TYPES


async def list_viewers(
    pool: asyncpg.Pool, q: ViewerQuery, *, direct_offset: int = DIRECT_OFFSET
) -> ViewerPage:
    """The total matching `q` and its page of rows, newest first, from one snapshot."""
    types = _types(q)
    if not types:
        return ViewerPage(0, [])
    term = q.search.lower()
    if q.harness_type is not None:
        shape, extra = "harness", [q.harness_type]
    elif q.system_clients is False:
        shape, extra = "viewers", []
    else:
        shape, extra = "all", []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total: int = await conn.fetchval(_TOTAL, term, list(types))
        offset = (q.page - 1) * q.rows_per_page
        if offset >= total:
            return ViewerPage(total, [])
        bound = None
        if offset >= direct_offset:
            bound, offset = await _locate(conn, term, list(types), offset)
        args: list[object] = [term, offset, q.rows_per_page, *extra]
        if bound is not None:
            args.append(bound)
        rows = await conn.fetch(_PAGES[shape, bound is not None], *args)
    rows.sort(key=lambda r: (-r["started_at"], r["viewer_id"]))
    return ViewerPage(total, rows)


async def _locate(
    conn: asyncpg.Connection, term: str, types: list[str], offset: int
) -> tuple[int | None, int]:
    """Where a deep page begins: a start-time bound and the rows to skip below it.

    Hours newest first until the one holding row `offset`, then that hour's minutes: every
    matching viewer at or after the bound was counted, so only the rest of one minute is
    skipped row by row.
    """
    low, high = 0, 2**62
    skipped = 0
    bound: int | None = None
    for width in VIEWER_SPAN_WIDTHS:
        for start, live in await conn.fetch(_SPANS, term, width, types, low, high):
            if skipped + live > offset:
                low, high = start, start + width
                bound = high
                break
            skipped += live
        else:  # the spans do not reach that far (cannot happen in one snapshot): plain skip
            return None, offset
    return bound, offset - skipped


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


@get("/", tags=["viewers"])
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
    await _cluster_reader(request, services)
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
    tags=["viewers"],
)
async def report_viewer_events(
    request: Request[Any, Any, Any], services: Services
) -> Response[dict[str, Any]]:
    """Sessions of an external media server: `{"events": [{"type": "connect" | "stats" |
    "state" | "disconnect", "id": ..., ...}]}`, at most 1,000, admin key.

    All or nothing: the first item that cannot be recorded answers 400 (invalid), 404 (unknown
    viewer) or 409 (already connected, or already disconnected), naming its index, and nothing
    of the request is appended. Answers the viewer id of each event, in order.
    """
    principal = await _admin(request, services)
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
