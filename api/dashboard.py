"""Cluster stats for the dashboard (seed 000): counts over nodes heard from in the last 30 s."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, get

from api.auth import job_api_admin
from api.errors import JOB_API_ERRORS
from domain.node import ONLINE_SECONDS

_CLUSTER = """
SELECT coalesce(sum(downloading), 0), coalesce(sum(muxing), 0), coalesce(sum(uploading), 0)
FROM nodes
WHERE stopped_at IS NULL AND removed_at IS NULL AND last_heartbeat_at > now() - $1::interval
"""


class ClusterStats(msgspec.Struct):
    total_downloading: int
    total_muxing: int
    total_uploading: int


class DashboardController(Controller):
    path = "/dashboard"
    exception_handlers = JOB_API_ERRORS  # type: ignore[assignment]
    tags = ["dashboard"]

    @get("/cluster")
    async def cluster(self, request: Request[Any, Any, Any]) -> ClusterStats:
        """What every node heard from in the last 30 seconds is doing right now."""
        # Checked here rather than as a dependency: every open dashboard polls this each
        # second, and the dependency machinery cost a tenth of the endpoint's throughput.
        await job_api_admin(request)
        return await _cluster_stats(request)


STATS_CACHE_SECONDS = 0.5
"""Every dashboard polls each second and nodes report each second: one query per half second
serves them all without showing anything staler than the heartbeats themselves."""


async def _cluster_stats(request: Request[Any, Any, Any]) -> ClusterStats:
    state = request.app.state
    now = time.monotonic()
    cached: tuple[ClusterStats, float] | None = state.get("cluster_stats")
    if cached is not None and cached[1] > now:
        return cached[0]
    row = await state.pool.fetchrow(_CLUSTER, timedelta(seconds=ONLINE_SECONDS))
    stats = ClusterStats(row[0], row[1], row[2])
    state["cluster_stats"] = (stats, now + STATS_CACHE_SECONDS)
    return stats
