"""The job pipeline's process manager: turns job events into units of work on the queues.

It follows the log like a projection (checkpoint, row lock) but its only effect is an enqueue
under a deterministic id, so replaying an event enqueues nothing twice. Which event calls for
which unit is `adapters.queue.unit_for`.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa
from arq.connections import ArqRedis

from adapters.queue import dispatch, unit_for
from domain.events import RecordedEvent, event_id


class PipelineReactor:
    """Dispatches download, mux and upload units as the job events arrive."""

    name = "pipeline"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = frozenset(
        {
            "JobCreated",
            "JobReleased",
            "JobRetried",
            "DownloadCompleted",
            "MuxCompleted",
            "StageFailed",
        }
    )

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            unit = unit_for(e.stream_id.removeprefix("job-"), e.data)
            if unit is not None:
                # The unit follows the event's request and names the event as its cause; its
                # id stays the deterministic one, so a replay still enqueues nothing twice.
                await dispatch(
                    self.redis,
                    unit._replace(
                        correlation_id=e.metadata.correlation_id, causation_id=event_id(e.position)
                    ),
                )
