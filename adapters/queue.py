"""The arq queues on Redis: where units of work wait. Redis is a transport, never the truth."""

from __future__ import annotations

from typing import Literal, NamedTuple

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from domain.job import Stage, arq_job_id

DOWNLOAD_QUEUE = "spool:queue:download"
"""Downloads go to any node."""


WEBHOOK_QUEUE = "spool:queue:webhook"
"""Webhook deliveries go to any node, beside (not behind) the media work."""


def node_queue(node_id: str) -> str:
    """Mux and upload go to the node that downloaded: the files are on its disk."""
    return f"spool:queue:node:{node_id}"


async def connect(redis_url: str) -> ArqRedis:
    """An arq Redis pool for `redis_url`."""
    return await create_pool(RedisSettings.from_dsn(redis_url))


class Dispatch(NamedTuple):
    """One unit of work to enqueue."""

    job_id: str
    run: int
    stage: Stage
    attempt: int
    node_id: str | None = None
    defer: float = 0.0

    @property
    def unit_id(self) -> str:
        return arq_job_id(self.job_id, self.run, self.stage, self.attempt)

    @property
    def queue(self) -> str:
        if self.stage == "download" or self.node_id is None:
            return DOWNLOAD_QUEUE
        return node_queue(self.node_id)


async def dispatch(redis: ArqRedis, d: Dispatch) -> bool:
    """Enqueue `d` under its deterministic id; False if that unit is already queued or done."""
    job = await redis.enqueue_job(
        d.stage,
        d.job_id,
        d.run,
        d.attempt,
        _job_id=d.unit_id,
        _queue_name=d.queue,
        _defer_by=d.defer or None,
        _expires=7 * 24 * 3600,
    )
    return job is not None


UnitStatus = Literal["queued", "in_progress", "done", "missing"]


async def unit_status(redis: ArqRedis, unit_id: str) -> UnitStatus:
    """What Redis knows of a unit of work (after FLUSHALL: `missing`)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(in_progress_key_prefix + unit_id)
        pipe.exists(result_key_prefix + unit_id)
        pipe.exists(job_key_prefix + unit_id)
        in_progress, done, queued = await pipe.execute()
    if in_progress:
        return "in_progress"
    if done:
        return "done"
    if queued:
        return "queued"
    return "missing"


async def dispatch_webhook(
    redis: ArqRedis, job_id: str, run: int, kind: str, version: int, *, unit_id: str
) -> bool:
    """Enqueue one webhook delivery under `unit_id`; False if already queued or done."""
    job = await redis.enqueue_job(
        "webhook",
        job_id,
        run,
        kind,
        version,
        _job_id=unit_id,
        _queue_name=WEBHOOK_QUEUE,
        _expires=7 * 24 * 3600,
    )
    return job is not None
