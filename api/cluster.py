"""`/api/v1/cluster`: the seed's cluster status, utilisation and throughput, and its config."""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import Provide

from spool.adapters.config_store import load_config
from spool.adapters.settings import Settings
from spool.api.auth import Principal
from spool.api.cluster_reads import cluster_reader
from spool.api.device_view import ClusterDeviceStats, all_rows, cluster_stats, duration
from spool.api.envelope import Envelope, success
from spool.api.services import Services
from spool.domain import cluster_config as config

WINDOWS_MINUTES = (1, 5, 15)

# Jobs that completed, failed or were cancelled in the window, counted when it happened
# (`domain.job.count`, through `reporting.job_minutes`): what the dashboard's chart shows for
# the same minutes. Whole minutes, as `_USAGE` below.
_JOBS = """
SELECT coalesce(sum(completed), 0)::bigint AS completed,
       coalesce(sum(failed), 0)::bigint AS failed,
       coalesce(sum(cancelled), 0)::bigint AS cancelled
FROM reporting.job_minutes
WHERE minute >= date_trunc('minute', now()) - $1::int * interval '1 minute'
"""

_TASKS = """
SELECT count(*) FILTER (WHERE status = 'success') AS completed,
       count(*) FILTER (WHERE status IN ('failed', 'timeout')) AS failed,
       avg(execution_time_seconds) FILTER (WHERE status = 'success') AS avg_seconds
FROM tasks WHERE completed_at > now() - $1::int * interval '1 minute'
"""

# Whole minutes, the current one included: a 1 minute window reads this minute and the last.
_USAGE = """
SELECT sum(samples)::bigint AS samples, sum(cpu_percent_sum) AS cpu,
       sum(memory_percent_sum) AS memory
FROM usage_minutes WHERE minute >= date_trunc('minute', now()) - $1::int * interval '1 minute'
"""


def version() -> str:
    try:
        return metadata.version("spool")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class ServerInfo(msgspec.Struct):
    """This API server: its version, how long it has run (`1d 2h 3m`), where it listens."""

    version: str
    uptime: str
    host: str
    port: int


class ClusterStatus(msgspec.Struct):
    """`GET /api/v1/cluster/status`: the seed's `cluster_stats` and this server's info."""

    cluster_stats: ClusterDeviceStats
    server_info: ServerInfo


class CurrentUse(msgspec.Struct):
    """What the online devices are doing now, against the slots they have."""

    online_devices: int
    busy_slots: int
    total_slots: int
    utilisation_percent: float
    downloading: int
    muxing: int
    uploading: int


class MetricsWindow(msgspec.Struct):
    """Throughput and average machine use over the last `window_minutes`; the averages are
    null when nothing finished or no heartbeat came in the window."""

    window_minutes: int
    jobs_completed: int
    jobs_failed: int
    jobs_cancelled: int
    jobs_per_minute: float
    tasks_completed: int
    tasks_failed: int
    tasks_per_minute: float
    avg_task_seconds: float | None
    heartbeats: int
    avg_cpu_percent: float | None
    avg_memory_percent: float | None


class ClusterMetrics(msgspec.Struct):
    """`GET /api/v1/cluster/metrics`: use now, and windows keyed `last_1m`, `last_5m`,
    `last_15m`."""

    current: CurrentUse
    windows: dict[str, MetricsWindow]


class RunningSettings(msgspec.Struct):
    """The settings (adapters/settings.py) this API server runs with."""

    host: str
    port: int
    rate_limit_per_minute: int
    stage_attempts: int
    retry_backoff: float
    stall_timeout: float
    node_timeout: float
    reconcile_interval: float
    download_concurrency: int
    mux_concurrency: int
    upload_concurrency: int


class ClusterConfigView(msgspec.Struct):
    """`GET /api/v1/cluster/config`: the config sections, its version, and running settings."""

    server: config.ServerConfig
    heartbeat: config.HeartbeatConfig
    version: int
    settings: RunningSettings


def server_info(services: Services) -> ServerInfo:
    """What this API server says of itself."""
    settings: Settings = services.settings
    started: float = services.started_at
    return ServerInfo(
        version=version(),
        uptime=duration(time.time() - started),
        host=settings.host,
        port=settings.port,
    )


async def _window(pool: asyncpg.Pool, minutes: int) -> MetricsWindow:
    jobs = await pool.fetchrow(_JOBS, minutes)
    usage = await pool.fetchrow(_USAGE, minutes)
    try:
        tasks: asyncpg.Record | None = await pool.fetchrow(_TASKS, minutes)
    except asyncpg.UndefinedTableError:  # a database not yet migrated to tasks
        tasks = None
    samples = usage["samples"] or 0
    return MetricsWindow(
        window_minutes=minutes,
        jobs_completed=jobs["completed"],
        jobs_failed=jobs["failed"],
        jobs_cancelled=jobs["cancelled"],
        jobs_per_minute=round(jobs["completed"] / minutes, 2),
        tasks_completed=tasks["completed"] if tasks else 0,
        tasks_failed=tasks["failed"] if tasks else 0,
        tasks_per_minute=round((tasks["completed"] if tasks else 0) / minutes, 2),
        avg_task_seconds=round(tasks["avg_seconds"], 4)
        if tasks and tasks["avg_seconds"] is not None
        else None,
        heartbeats=samples,
        avg_cpu_percent=round(usage["cpu"] / samples, 1) if samples else None,
        avg_memory_percent=round(usage["memory"] / samples, 1) if samples else None,
    )


class ClusterController(Controller):
    path = "/cluster"
    dependencies = {"principal": Provide(cluster_reader)}
    tags = ["cluster"]

    @get("/status")
    async def status(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[ClusterStatus]]:
        """Device counts, health percentage and resources, and this API server's own info."""
        rows = await all_rows(services.pool)
        return success(request, ClusterStatus(cluster_stats(rows), server_info(services)))

    @get("/metrics")
    async def metrics(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[ClusterMetrics]]:
        """Utilisation now, and throughput and average machine use over 1, 5 and 15 minutes."""
        pool: asyncpg.Pool = services.pool
        rows = await all_rows(pool)
        online = [r for r in rows if r["online"]]
        busy = sum(r["downloading"] + r["muxing"] + r["uploading"] for r in online)
        slots = 0
        for r in online:
            concurrency = _decode(r["concurrency"])
            slots += sum(v for v in concurrency.values() if isinstance(v, int))
        windows = {f"last_{m}m": await _window(pool, m) for m in WINDOWS_MINUTES}
        current = CurrentUse(
            online_devices=len(online),
            busy_slots=busy,
            total_slots=slots,
            utilisation_percent=round(100 * busy / slots, 1) if slots else 0.0,
            downloading=sum(r["downloading"] for r in online),
            muxing=sum(r["muxing"] for r in online),
            uploading=sum(r["uploading"] for r in online),
        )
        return success(request, ClusterMetrics(current=current, windows=windows))

    @get("/config")
    async def cluster_config(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[ClusterConfigView]]:
        """The cluster config (as events made it) and the settings this server runs with."""
        settings: Settings = services.settings
        state = await load_config(services.store)
        running = RunningSettings(
            host=settings.host,
            port=settings.port,
            rate_limit_per_minute=settings.rate_limit,
            stage_attempts=settings.stage_attempts,
            retry_backoff=settings.retry_backoff,
            stall_timeout=settings.stall_timeout,
            node_timeout=settings.node_timeout,
            reconcile_interval=settings.reconcile_interval,
            download_concurrency=settings.download_concurrency,
            mux_concurrency=settings.mux_concurrency,
            upload_concurrency=settings.upload_concurrency,
        )
        view = ClusterConfigView(
            server=state.server, heartbeat=state.heartbeat, version=state.version, settings=running
        )
        return success(request, view)


def _decode(raw: bytes | str | None) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(raw) if raw else {}
    return decoded
