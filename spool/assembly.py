"""The long-running parts of a Spool cluster, built in one place.

`spool up`, `spool reactors` and `spool worker` (spool/serve.py), the test cluster
(tests/fixtures/cluster.py) and the pipeline benchmarks (bench/pipeline.py,
bench/pipeline_noop.py) all take their parts from `assemble`, so a part added here runs
everywhere. Tests pass faster `Timings`; the no-op benchmark a node whose stages do no media work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from arq.connections import ArqRedis

from spool.adapters.event_store import EventStore
from spool.adapters.settings import Settings
from spool.adapters.storage import ObjectStorage
from spool.reactors.node_health import NodeHealthReactor
from spool.reactors.operations import OperationRunner
from spool.reactors.pipeline import PipelineReactor, Ticks
from spool.reactors.projection import ProjectionRunner
from spool.reactors.reconciler import Reconciler
from spool.reactors.scheduler import Scheduler
from spool.reactors.subscription_retention import SubscriptionRetention
from spool.reactors.subscriptions import SubscriptionChecks
from spool.reactors.viewer_timeouts import ViewerTimeouts
from spool.reactors.webhooks import WebhookReactor
from spool.reactors.worker import Node

PROJECTIONS = "projections"
PIPELINE = "pipeline"
SCHEDULER = "scheduler"
RECONCILER = "reconciler"
VIEWER_TIMEOUTS = "viewer-timeouts"
OPERATIONS = "operations"
SUBSCRIPTIONS = "subscriptions"
NODE = "node"

REACTORS = (
    PROJECTIONS,
    PIPELINE,
    SCHEDULER,
    RECONCILER,
    VIEWER_TIMEOUTS,
    OPERATIONS,
    SUBSCRIPTIONS,
)
"""Every log follower and periodic pass: what `spool reactors` runs, and `spool up` beside the
API and a node."""


class Part(Protocol):
    """A long-running part: runs until `stop` is set."""

    async def run(self, stop: asyncio.Event) -> None: ...


PIPELINE_COALESCE = 0.003
"""Seconds the pipeline's runner waits after a NOTIFY before it looks."""


@dataclass(frozen=True)
class Alongside:
    """Parts that run as one, under one name and one stop."""

    parts: tuple[Part, ...]

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(p.run(stop) for p in self.parts))


@dataclass(frozen=True)
class Timings:
    """How often the parts look for work when nothing wakes them; production's by default."""

    poll_interval: float = 1.0
    """The pipeline and webhook reactors' poll when no NOTIFY arrives (the projections' is
    their runner's own)."""
    scheduler_tick: float = 1.0
    scheduler_online_seconds: float | None = None
    """How recent a node's heartbeat must be for the scheduler to plan on it (None: the
    heartbeat config's timeout)."""
    viewer_tick: float | None = None
    """Between viewer timeout passes (None: a third of the viewer timeout)."""
    operations_tick: float = 1.0
    """Between the operations runner's looks for unfinished bulk actions."""
    subscriptions_tick: float = 5.0
    """Between the subscription checks' looks for due subscriptions."""
    subscription_retention_tick: float = 60.0
    """Between the subscriptions' retention passes."""


def assemble(
    *,
    store: EventStore,
    redis: ArqRedis,
    storage: ObjectStorage,
    settings: Settings,
    projections: ProjectionRunner,
    parts: Collection[str] = REACTORS,
    timings: Timings = Timings(),
    node_type: type[Node] = Node,
) -> dict[str, Part]:
    """The named parts asked for (`REACTORS` and/or `NODE`), in `REACTORS` order, node last.

    `projections` is the process's projection runner, which its callers also wait on;
    `node_type` the class of the node (a benchmark's may run its stages as no-ops). Each
    reactor is safe to run in several processes at once: projections, the pipeline and webhooks
    take a row lock on their checkpoint (one runner applies a batch, the others wait and find it
    applied); the scheduler and viewer timeouts a transaction advisory lock per pass; the
    reconciler relies on optimistic concurrency on the job stream and on arq ids that are the
    unit's own (a second enqueue of the same unit is a no-op).
    """
    unknown = set(parts) - {*REACTORS, NODE}
    if unknown:
        raise ValueError(f"no such part: {', '.join(sorted(unknown))}")
    built: dict[str, Part] = {}
    if PROJECTIONS in parts:
        built[PROJECTIONS] = projections
    if PIPELINE in parts:
        pipeline = PipelineReactor(
            redis, store, ahead=settings.dispatch_ahead, burst=settings.dispatch_burst
        )
        built[PIPELINE] = Alongside(
            (
                # Its dispatches are on every job's critical path: a NOTIFY is looked at after
                # a few milliseconds, not the projections' 30, which still gathers a busy
                # moment's appends into one look (bench/pipeline_noop.py, BENCHMARKS.md).
                ProjectionRunner(
                    store,
                    [pipeline],
                    poll_interval=timings.poll_interval,
                    coalesce=PIPELINE_COALESCE,
                ),
                Ticks(pipeline, store, timings.poll_interval),
                ProjectionRunner(
                    store,
                    [WebhookReactor(redis), NodeHealthReactor(store, settings.quarantine_after)],
                    poll_interval=timings.poll_interval,
                ),
            )
        )
    if SCHEDULER in parts:
        built[SCHEDULER] = Scheduler(
            store,
            redis,
            tick=timings.scheduler_tick,
            online_seconds=timings.scheduler_online_seconds,
        )
    if RECONCILER in parts:
        built[RECONCILER] = Reconciler(store, redis, settings)
    if VIEWER_TIMEOUTS in parts:
        built[VIEWER_TIMEOUTS] = ViewerTimeouts(store, settings, tick=timings.viewer_tick)
    if OPERATIONS in parts:
        built[OPERATIONS] = OperationRunner(
            store, settings, storage, interval=timings.operations_tick
        )
    if SUBSCRIPTIONS in parts:
        built[SUBSCRIPTIONS] = Alongside(
            (
                SubscriptionChecks(store, settings, tick=timings.subscriptions_tick),
                SubscriptionRetention(
                    store, settings, storage, tick=timings.subscription_retention_tick
                ),
            )
        )
    if NODE in parts:
        built[NODE] = node_type(store=store, redis=redis, storage=storage, settings=settings)
    return built
