"""Cluster stats for the dashboard (seed 000): counts over nodes heard from in the last 30 s."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import Provide

from api.auth import Principal, job_api_admin
from api.errors import JOB_API_ERRORS
from domain.node import ONLINE_SECONDS

_CLUSTER = """
SELECT coalesce(sum(downloading), 0), coalesce(sum(muxing), 0), coalesce(sum(uploading), 0)
FROM nodes
WHERE stopped_at IS NULL AND last_heartbeat_at > now() - $1::interval
"""


class ClusterStats(msgspec.Struct):
    total_downloading: int
    total_muxing: int
    total_uploading: int


class DashboardController(Controller):
    path = "/dashboard"
    dependencies = {"principal": Provide(job_api_admin)}
    exception_handlers = JOB_API_ERRORS  # type: ignore[assignment]
    tags = ["dashboard"]

    @get("/cluster")
    async def cluster(self, request: Request[Any, Any, Any], principal: Principal) -> ClusterStats:
        """What every node heard from in the last 30 seconds is doing right now."""
        row = await request.app.state.pool.fetchrow(_CLUSTER, timedelta(seconds=ONLINE_SECONDS))
        return ClusterStats(row[0], row[1], row[2])
