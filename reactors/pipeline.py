"""The job pipeline's process manager: turns job events into units of work on the queues.

It follows the log like a projection (checkpoint, row lock) but its only effect is an enqueue
under a deterministic id, so replaying an event enqueues nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import sqlalchemy as sa
from arq.connections import ArqRedis

from adapters.queue import Dispatch, dispatch
from domain import job
from domain.events import Event, RecordedEvent


def next_unit(job_id: str, ev: Event) -> Dispatch | None:
    """The unit of work an event calls for, if any."""
    if isinstance(ev, job.JobCreated):
        return None if ev.held else Dispatch(job_id, 1, "download", 1)
    if isinstance(ev, job.JobReleased):
        return Dispatch(job_id, 1, "download", 1)
    if isinstance(ev, job.JobRetried):
        return Dispatch(job_id, ev.run, "download", 1)
    if isinstance(ev, job.DownloadCompleted):
        return Dispatch(job_id, ev.run, "mux", 1, ev.node_id)
    if isinstance(ev, job.MuxCompleted):
        return Dispatch(job_id, ev.run, "upload", 1, ev.node_id)
    if isinstance(ev, job.StageFailed) and ev.retry_stage and ev.retry_attempt:
        return Dispatch(job_id, ev.run, ev.retry_stage, ev.retry_attempt, ev.node_id, ev.retry_in)
    return None


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
            unit = next_unit(e.stream_id.removeprefix("job-"), e.data)
            if unit is not None:
                await dispatch(self.redis, unit)
