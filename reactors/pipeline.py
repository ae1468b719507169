"""The job pipeline's process manager: turns job events into units of work on the queues.

It follows the log like a projection (checkpoint, row lock) but its only effect is an enqueue
under a deterministic id, so replaying an event enqueues nothing twice. Which event calls for
which unit is `adapters.queue.unit_for`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa
from arq.connections import ArqRedis

from spool.adapters.queue import dispatch, unit_for
from spool.domain import job
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
        )
    )

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        units = []
        for e in events:
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
