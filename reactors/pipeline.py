"""The job pipeline's process manager: turns job events into units of work on the queues.

It follows the log like a projection (checkpoint, row lock) but its only effect is an enqueue
under a deterministic id, so replaying an event enqueues nothing twice. Which event calls for
which unit is `adapters.queue.unit_for`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa
from arq.connections import ArqRedis

from spool.adapters.queue import Dispatch, dispatch, unit_for
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import pauses
from spool.domain import account_policy, batch, cluster_config, job, pause
from spool.domain.events import RecordedEvent, event_id

DISPATCH_AT_ONCE = 64
"""Enqueues in flight at once while a batch is dispatched."""


class PipelineReactor:
    """Dispatches download, mux and upload units as the job events arrive."""

    name = "pipeline"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = frozenset(
        cls.__name__
        for cls in (
            job.JobCreated,
            job.JobReleased,
            job.JobRetried,
            job.DownloadCompleted,
            job.MuxCompleted,
            job.StageFailed,
            job.StageInterrupted,
            job.JobResumed,
            # A lifted scope's pause dispatches the jobs it held (`_released`).
            batch.BatchResumed,
            account_policy.AccountResumed,
            cluster_config.IntakeResumed,
        )
    )

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        units = []
        for e in events:
            if (scope := pauses.scope_of(e)) is not None and not pauses.pauses_scope(e):
                units += [
                    u._replace(
                        correlation_id=e.metadata.correlation_id, causation_id=event_id(e.position)
                    )
                    for u in await _released(conn, scope, e)
                ]
                continue
            unit = unit_for(e.stream_id.removeprefix("job-"), e.data)
            if unit is not None:
                # The unit follows the event's request and names the event as its cause; its
                # id stays the deterministic one, so a replay still enqueues nothing twice.
                units.append(
                    unit._replace(
                        correlation_id=e.metadata.correlation_id, causation_id=event_id(e.position)
                    )
                )
        # Each enqueue is a few Redis round trips; one after another they held up the whole
        # batch (and every job behind it). Units are independent: their order does not matter.
        for i in range(0, len(units), DISPATCH_AT_ONCE):
            await asyncio.gather(
                *(dispatch(self.redis, u) for u in units[i : i + DISPATCH_AT_ONCE])
            )


RESUME_PATIENCE = 10.0
"""Seconds a lifted pause's dispatch waits for the `pauses` projection to have applied it."""

RELEASED_AT_ONCE = 500
"""Waiting jobs a lifted pause reads at a time."""


async def _released(
    conn: asyncpg.Connection, scope: pause.Scope, resumed: RecordedEvent
) -> list[Dispatch]:
    """The units of the jobs a lifted scope's pause held back and nothing else holds now: each
    waiting job's current unit (a download its node left as `StageDeferred` is a new attempt,
    never enqueued; one that stayed queued through the pause is the same id, enqueued again as
    a no-op). A job the jobs projection shows behind the log is caught by the reconciler."""
    # Nodes read the pause from the `pauses` table: a unit dispatched before the table has the
    # resume would be left again (and wait for the reconciler). The projection applies it
    # within its coalescing delay; past the patience, dispatch anyway.
    deadline = time.monotonic() + RESUME_PATIENCE
    while not await pauses.applied(conn, resumed) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    kind, scope_id = scope
    found: list[Dispatch] = []
    after = ""
    while True:
        states = await job_rows.waiting(
            conn,
            account_id=scope_id if kind == "account" else None,
            batch_id=scope_id if kind == "batch" else None,
            after=after,
            limit=RELEASED_AT_ONCE,
        )
        if not states:
            return found
        # The scope is resumed: the projection may not have dropped its row yet.
        paused = await pauses.paused_scopes(conn, states) - {scope}
        found += [
            Dispatch(s.job_id, s.run, s.stage, s.attempt, s.node_id)
            for s in states
            if pause.may_start(s, paused)
        ]
        after = states[-1].job_id
