"""The dashboard: its page, cluster stats (seed 000), nodes and throughput for the charts."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Receive, Scope, Send

from spool.adapters.read_models import job_minutes
from spool.adapters.read_models import nodes as node_rows
from spool.api.auth import key_in, recently_verified
from spool.api.cluster_reads import may_read_cluster
from spool.api.errors import JobApiError
from spool.api.guards import KEYLESS
from spool.api.services import Services, services_of
from spool.domain.node import WorkState

STATIC_DIR = Path(__file__).parent / "static"
"""The page's HTML, CSS and JS: plain files, shipped as package data (no build step)."""

_PAGE = (STATIC_DIR / "dashboard.html").read_bytes()

# The page loads nothing but its own files and talks only to this origin; no referrer leaves.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

NODES_SHOWN_FOR = timedelta(hours=1)
"""A node silent for longer than this drops off the dashboard's node list."""

MAX_NODES = 200

MAX_MINUTES = 24 * 60


class ClusterStats(msgspec.Struct):
    total_downloading: int
    total_muxing: int
    total_uploading: int


class NodeView(msgspec.Struct):
    """A node as the dashboard lists it; percentages 0-100, null before its first heartbeat."""

    node_id: str
    hostname: str
    ip: str
    online: bool
    state: WorkState
    """Whether it takes new work (`domain.node.work_state`): "active", "quarantined",
    "draining" or "disk_floor"."""
    state_reason: str | None
    """Why it takes no new work; None while active."""
    heartbeat_age_seconds: float | None
    cpu_percent: float | None
    memory_percent: float | None
    downloading: int
    muxing: int
    uploading: int
    running: int


class NodeList(msgspec.Struct):
    nodes: list[NodeView]


class MinutePoint(msgspec.Struct):
    """One UTC minute: jobs that completed and failed in it, and the bytes they stored."""

    minute: datetime
    completed: int
    failed: int
    bytes: int


class Throughput(msgspec.Struct):
    minutes: int
    points: list[MinutePoint]


STATS_CACHE_SECONDS = 0.5
"""Every dashboard polls each second and nodes report each second: one query per half second
serves them all without showing anything staler than the heartbeats themselves."""


class _CachedStats(NamedTuple):
    stats: ClusterStats
    body: bytes
    until: float


class StatsCache:
    """The cluster stats last read by this process, answered until `STATS_CACHE_SECONDS` pass."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: _CachedStats | None = None


_encode = msgspec.json.Encoder().encode


async def _cluster_stats(services: Services) -> ClusterStats:
    cache = services.dashboard_stats
    now = time.monotonic()
    cached = cache.current
    if cached is not None and cached.until > now:
        return cached.stats
    stats = ClusterStats(*await node_rows.busy_online(services.pool))
    cache.current = _CachedStats(stats, _encode(stats), now + STATS_CACHE_SECONDS)
    return stats


def answer_from_cache(app: ASGIApp) -> ASGIApp:
    """`GET /dashboard/cluster` for a recently verified admin key, straight from the cache.

    Every open dashboard polls this each second. Past the app's own middleware (request id,
    count, no log line) a cached answer needs no `Request`, no signature model and no encoding,
    which were most of its cost. Anything else (no key, an unknown, revoked or non-admin key, a
    stale cache) goes on to the route, whose guard answers it in the job API's words and whose
    handler refills the cache, so this path never decides who is refused.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        services = services_of(scope["app"])
        cached = services.dashboard_stats.current
        key = key_in(scope)
        if cached is None or cached.until <= time.monotonic() or key is None:
            await app(scope, receive, send)
            return
        principal = recently_verified(services.keys, key)
        if principal is None or not may_read_cluster(principal.admin):
            await app(scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(cached.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": cached.body, "more_body": False})

    return serve


class DashboardController(Controller):
    path = "/"
    tags = ["dashboard"]

    @get("/", media_type=MediaType.HTML, include_in_schema=False, opt=KEYLESS)
    async def page(self) -> Response[bytes]:
        """The dashboard page; it asks for an API key and keeps it in session storage only."""
        return Response(_PAGE, media_type=MediaType.HTML, headers=_PAGE_HEADERS)

    @get("/cluster", middleware=[answer_from_cache])
    async def cluster(self, services: Services) -> ClusterStats:
        """What every online node (adapters/read_models/nodes.py) is doing right now."""
        return await _cluster_stats(services)

    @get("/nodes")
    async def nodes(self, services: Services) -> NodeList:
        """Nodes heard from in the last hour: heartbeat age, CPU and memory, stage counts."""
        rows = await node_rows.heard_within(services.pool, NODES_SHOWN_FOR, MAX_NODES)
        return NodeList(
            nodes=[
                NodeView(
                    node_id=r[0],
                    hostname=r[1],
                    ip=r[2],
                    downloading=r[3],
                    muxing=r[4],
                    uploading=r[5],
                    running=r[6],
                    cpu_percent=r[7],
                    memory_percent=None if r[8] is None else round(r[8], 1),
                    online=r[9],
                    heartbeat_age_seconds=None if r[10] is None else round(r[10], 1),
                    state=work[0],
                    state_reason=work[1],
                )
                for r in rows
                for work in [node_rows.work_of(r)]
            ]
        )

    @get("/throughput")
    async def throughput(self, services: Services, minutes: int = 60) -> Throughput:
        """Jobs completed and failed, and bytes stored, per minute over the last `minutes`."""
        if not 1 <= minutes <= MAX_MINUTES:
            raise JobApiError(
                status_code=400, detail=f"minutes must be between 1 and {MAX_MINUTES}"
            )
        points = await job_minutes.throughput(services.pool, minutes)
        return Throughput(
            minutes=minutes,
            points=[
                MinutePoint(minute=p[0], completed=p[1], failed=p[2], bytes=p[3]) for p in points
            ],
        )


dashboard_static = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="dashboard_static",
    # Revalidated on each load, so a page served after an upgrade never runs an older script.
    cache_control=CacheControlHeader(no_cache=True),
    opt=KEYLESS,
)
"""The page's CSS and JS. Public, like the page: neither holds anything but code."""
