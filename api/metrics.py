"""`GET /metrics`: Prometheus text, gathered from the projections at each scrape.

The seed's `retire_cluster_devices_total` and `retire_cluster_tasks_total`, plus online nodes by
work state (`spool_nodes{state=...}`, `domain.node.work_state`), jobs by status and step, stage
durations, how long the oldest unit of each stage has waited for a node, attempts handed on
because their lease expired, this process's event-store append latency, projection lag, and
the probes of users' sources this process runs now. The alert rules and the dashboard in
deploy/ are written over these names (tests/test_monitoring.py holds them to a real scrape).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import asyncpg
from litestar import Response, get
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from spool.adapters.probes import ProbePool
from spool.adapters.read_models import job_stages
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.read_models import tasks as tasks_model
from spool.adapters.timed_event_store import REGISTRY as PROCESS_REGISTRY
from spool.api.cluster_reads import metrics_reader
from spool.api.services import Services
from spool.domain import job

STAGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

LAG_WINDOW = 100_000
"""Projection lag is counted among the log's newest events only, so a scrape stays cheap."""

_HEAD = "SELECT coalesce(max(position), 0) FROM events"

_LAG = """
SELECT count(*), extract(epoch FROM now() - min(recorded_at))::float8
FROM events
WHERE position > greatest($2::bigint, $4::bigint)
  AND (tx, position) > ($1::text::xid8, $2::bigint)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::text[] IS NULL OR type = ANY($3::text[]))
"""


class _Families:
    """A collector over metric families built beforehand (collect() cannot await)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def _families(pool: asyncpg.Pool, types: Mapping[str, frozenset[str]]) -> list[Metric]:
    online, total = await node_rows.online_count(pool)
    devices = GaugeMetricFamily(
        "retire_cluster_devices_total", "Total number of registered devices", labels=["status"]
    )
    devices.add_metric(["online"], online)
    devices.add_metric(["offline"], total - online)
    by_state = GaugeMetricFamily(
        "spool_nodes",
        "Online nodes by work state: active, quarantined, draining, disk_floor",
        labels=["state"],
    )
    for state, n in (await node_rows.online_by_state(pool)).items():
        by_state.add_metric([state], n)

    jobs = GaugeMetricFamily(
        "spool_jobs_total", "Jobs by status and step", labels=["status", "step"]
    )
    for status, step, n in await job_rows.count_by_status_step(pool):
        jobs.add_metric([status, step], n)

    stages = HistogramMetricFamily(
        "spool_stage_duration_seconds",
        "How long finished job stages took",
        labels=["stage"],
    )
    for row in await job_rows.stage_times(pool, STAGE_BUCKETS):
        buckets = [(str(b), row[3 + i]) for i, b in enumerate(STAGE_BUCKETS)]
        buckets.append(("+Inf", row["n"]))
        stages.add_metric([row["stage"]], buckets, sum_value=row["total"] or 0.0)

    queue_age = GaugeMetricFamily(
        "spool_queue_oldest_seconds",
        "How long the oldest unit of work of each stage has waited for a node (0 when none waits)",
        labels=["stage"],
    )
    for stage, age in (await job_rows.oldest_waiting(pool)).items():
        queue_age.add_metric([stage], age)

    expiries = CounterMetricFamily(
        "spool_lease_expiries_total",
        "Units of work handed on to another attempt because their node's lease expired",
        labels=["stage"],
    )
    # Every stage has its series from the start, so a rate over it is defined before the
    # first expiry.
    counted = dict.fromkeys(job.STEP_OF, 0) | dict(await job_stages.lease_expiries(pool))
    for stage, n in counted.items():
        expiries.add_metric([stage], n)

    tasks = CounterMetricFamily(
        "retire_cluster_tasks_total", "Total number of tasks", labels=["status"]
    )
    by_type = GaugeMetricFamily(
        "spool_tasks_by_type", "Tasks by status and type", labels=["status", "task_type"]
    )
    task_seconds = CounterMetricFamily(
        "spool_task_execution_seconds_total",
        "Execution time of finished tasks, summed by type",
        labels=["task_type"],
    )
    try:
        task_rows = await tasks_model.count_by_status_type(pool)
    except asyncpg.UndefinedTableError:  # a database not yet migrated to tasks
        task_rows = []
    by_status: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for status, task_type, n, total_seconds, _timed in task_rows:
        by_status[status] = by_status.get(status, 0) + n
        seconds[task_type] = seconds.get(task_type, 0.0) + total_seconds
        by_type.add_metric([status, task_type], n)
    for status, n in sorted(by_status.items()):
        tasks.add_metric([status], n)
    for task_type, s in sorted(seconds.items()):
        task_seconds.add_metric([task_type], s)

    head = await pool.fetchval(_HEAD)
    head_family = GaugeMetricFamily(
        "spool_event_log_head_position", "Position of the newest event in the log"
    )
    head_family.add_metric([], head)
    lag_events = GaugeMetricFamily(
        "spool_projection_lag_events",
        "Events of its types a projection or reactor has yet to apply (newest events only)",
        labels=["projection"],
    )
    lag_seconds = GaugeMetricFamily(
        "spool_projection_lag_seconds",
        "Age of the oldest event a projection or reactor has yet to apply (0 when caught up)",
        labels=["projection"],
    )
    checkpoint_age = GaugeMetricFamily(
        "spool_projection_checkpoint_age_seconds",
        "Time since a projection or reactor last moved its checkpoint",
        labels=["projection"],
    )
    checkpoints = await pool.fetch(
        "SELECT name, tx, position, extract(epoch FROM now() - updated_at)::float8 AS age "
        "FROM checkpoints WHERE name NOT LIKE '%@rebuild' ORDER BY name"
    )
    for cp in checkpoints:
        followed = types.get(cp["name"])
        n, age = await pool.fetchrow(
            _LAG,
            str(cp["tx"]),
            cp["position"],
            list(followed) if followed else None,
            head - LAG_WINDOW,
        )
        lag_events.add_metric([cp["name"]], n)
        lag_seconds.add_metric([cp["name"]], age or 0.0)
        checkpoint_age.add_metric([cp["name"]], cp["age"])
    return [
        devices,
        by_state,
        tasks,
        by_type,
        task_seconds,
        jobs,
        stages,
        queue_age,
        expiries,
        head_family,
        lag_events,
        lag_seconds,
        checkpoint_age,
    ]


def _probes(probes: ProbePool) -> Metric:
    """This process's probe threads in use: at 0 once every stopped probe has unwound."""
    running = GaugeMetricFamily(
        "spool_probes_running",
        "Probes of users' sources running on this API process's probe threads",
    )
    running.add_metric([], probes.busy)
    return running


@get(
    "/metrics",
    guards=[metrics_reader],
    tags=["cluster"],
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics(services: Services) -> Response[bytes]:
    """Prometheus text format, for an admin key or the scrape token (`SPOOL_METRICS_TOKEN`)."""
    registry = CollectorRegistry(auto_describe=False)
    families = await _families(services.pool, services.projection_types)
    families.append(_probes(services.probes))
    registry.register(_Families(families))
    body = generate_latest(registry) + generate_latest(PROCESS_REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
