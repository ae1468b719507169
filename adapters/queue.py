"""The arq queues on Redis: where units of work wait. Redis is a transport, never the truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, Job
from redis.exceptions import RedisError

from spool.domain import job
from spool.domain.events import Event
from spool.domain.job import Stage, arq_job_id

log = logging.getLogger("spool.queue")

DOWNLOAD_QUEUE = "spool:queue:download"
"""Downloads go to any node."""


WEBHOOK_QUEUE = "spool:queue:webhook"
"""Webhook deliveries go to any node, beside (not behind) the media work."""


def node_queue(node_id: str) -> str:
    """Mux and upload go to the node that downloaded: the files are on its disk."""
    return f"spool:queue:node:{node_id}"


CONNECT_DEADLINE = 3.0
"""Seconds a start gives Redis to answer (two tries, a second apart) before it gives up."""


async def connect(redis_url: str, *, deadline: float = CONNECT_DEADLINE) -> ArqRedis:
    """An arq Redis pool for `redis_url`, or RuntimeError with one line saying why not.

    Bounded by `deadline`: a start against a Redis that refuses, or that accepts and never
    answers (arq's own retries wait on a reply with no timeout), ends saying so. The line names
    the host and port, never the URL's password.
    """
    settings = RedisSettings.from_dsn(redis_url)
    settings.conn_retries = 1
    try:
        async with asyncio.timeout(deadline):
            return await create_pool(settings)
    except (RedisError, OSError, TimeoutError) as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
            reason = f"no answer within {deadline:g} s"
        else:
            reason = str(exc)
        where = f"{settings.host}:{settings.port}"
        raise RuntimeError(f"cannot reach Redis at {where}: {reason}") from None


UNIT_EXPIRES = 7 * 24 * 3600
"""Seconds a queued unit (and its result) stays in Redis: the reconciler re-dispatches what
expires unrun."""


def wake_channel(queue: str) -> str:
    """The pub/sub channel that tells the workers of `queue` to look at it now."""
    return f"spool:wake:{queue}"


async def enqueue(
    redis: ArqRedis,
    function: str,
    *args: Any,
    queue: str,
    unit_id: str,
    defer: float | None = None,
    due_ms: int | None = None,
    expires: float = UNIT_EXPIRES,
    **kwargs: Any,
) -> Job | None:
    """Enqueue one unit under its id, then wake its queue's workers; None when Redis already
    holds that id (queued, running or done), which is how a replay enqueues nothing twice.

    The wake-up spares the unit the workers' poll: a unit due now is taken within a round trip
    of its enqueue. A deferred one waits for the poll that finds it due. `due_ms` (not later
    than now) places the unit in its queue, which workers take in order of due time.
    """
    queued = await redis.enqueue_job(
        function,
        *args,
        _job_id=unit_id,
        _queue_name=queue,
        _defer_by=defer or None,
        _defer_until=None if due_ms is None else datetime.fromtimestamp(due_ms / 1000, UTC),
        _expires=expires,
        **kwargs,
    )
    if queued is not None and not defer:
        await redis.publish(wake_channel(queue), b"")
    return queued


WAKE_RETRIES = (1.0, 2.0, 5.0)
"""Seconds before a wake-up listener whose Redis connection failed subscribes again: the first
tries, then each later one (the workers' poll goes on meanwhile). Only the first failure of an
outage is logged as a warning."""


async def listen_for_wakeups(
    redis: ArqRedis, wakes: Mapping[str, asyncio.Event], stop: asyncio.Event
) -> None:
    """Set `wakes[queue]` whenever a unit is enqueued on `queue`, until `stop`.

    One subscription for all of a node's queues. A wake-up lost with a connection costs one
    poll interval, never the unit: every event is also set after each (re)subscription.
    """
    by_channel = {wake_channel(q): e for q, e in wakes.items()}
    failures = 0
    while not stop.is_set():
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*by_channel)
            failures = 0
            for e in by_channel.values():
                e.set()
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    channel = message["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else channel
                    if (wake := by_channel.get(name)) is not None:
                        wake.set()
        except (RedisError, OSError) as exc:
            delay = WAKE_RETRIES[min(failures, len(WAKE_RETRIES) - 1)]
            log.log(
                logging.WARNING if failures == 0 else logging.DEBUG,
                "queue wake-ups lost (%s); subscribing again in %g s",
                exc,
                delay,
            )
            failures += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


class Dispatch(NamedTuple):
    """One unit of work to enqueue."""

    job_id: str
    run: int
    stage: Stage
    attempt: int
    node_id: str | None = None
    defer: float = 0.0
    correlation_id: str | None = None
    """The request the work follows from; the worker's events carry it on."""
    causation_id: str | None = None
    """The event that called for this unit (`domain.events.event_id`)."""
    due_ms: int | None = None
    """Its place in its queue (ms since the epoch, not later than now), where units sent
    together must be taken in the order they were sent: the line's downloads."""

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
    queued = await enqueue(
        redis,
        d.stage,
        d.job_id,
        d.run,
        d.attempt,
        queue=d.queue,
        unit_id=d.unit_id,
        defer=d.defer,
        due_ms=d.due_ms,
        # Kept from when it is due, however long it waits (media not out yet: days).
        expires=UNIT_EXPIRES + d.defer,
        correlation_id=d.correlation_id,
        causation_id=d.causation_id,
    )
    return queued is not None


def unit_for(job_id: str, ev: Event) -> Dispatch | None:
    """The unit of work a job event calls for, if any (the pipeline's dispatch rule). A result
    whose node went straight on to the next stage (`chained`) calls for none: it runs; nor does
    a paused job's result (`paused`): its `JobResumed` (`due`) dispatches the next stage."""
    if isinstance(ev, job.JobCreated):
        return None if ev.held else Dispatch(job_id, 1, "download", 1)
    if isinstance(ev, job.JobReleased):
        return Dispatch(job_id, 1, "download", 1)
    if isinstance(ev, job.JobRetried):
        # From mux or upload: to the node that holds the last run's files.
        return Dispatch(job_id, ev.run, ev.from_stage, 1, ev.node_id)
    if isinstance(ev, job.DownloadCompleted | job.MuxCompleted) and not (ev.chained or ev.paused):
        nxt = job.stage_after(ev)
        assert nxt is not None
        return Dispatch(job_id, ev.run, nxt, 1, ev.node_id)
    if isinstance(ev, job.StageFailed) and ev.retry_stage and ev.retry_attempt:
        return Dispatch(job_id, ev.run, ev.retry_stage, ev.retry_attempt, ev.node_id, ev.retry_in)
    if isinstance(ev, job.StageInterrupted):
        return Dispatch(job_id, ev.run, ev.stage, ev.attempt + 1, ev.node_id)
    if isinstance(ev, job.MediaNotReady):
        # Any node may try again, when the wait is over.
        return Dispatch(job_id, ev.run, "download", ev.attempt + 1, defer=ev.retry_in)
    if isinstance(ev, job.JobResumed) and ev.due:
        return Dispatch(job_id, ev.run, ev.stage, ev.attempt, ev.node_id)
    return None


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


async def enqueued_at(redis: ArqRedis, unit_id: str) -> datetime | None:
    """When the unit Redis holds under `unit_id` (queued, in progress or done) was enqueued,
    by the clock of the process that enqueued it; None when Redis holds nothing of it."""
    try:
        info = await Job(unit_id, redis).info()
    except DeserializationError:
        return None  # not written by arq: nothing to tell from it
    return None if info is None else info.enqueue_time


async def forget(redis: ArqRedis, unit_id: str) -> None:
    """Drop all Redis holds under a unit's id (its job, in-progress mark and result): until
    then arq enqueues nothing under that id. A worker still holding it finds it gone."""
    await redis.delete(
        job_key_prefix + unit_id, in_progress_key_prefix + unit_id, result_key_prefix + unit_id
    )


WEBHOOK_KINDS: dict[type[Event], str] = {
    job.JobCompleted: "job.completed",
    job.JobFailed: "job.failed",
    job.StageStarted: "job.progress",
    job.StageProgressed: "job.progress",
}
"""The job events that send a webhook, and the webhook's `event`."""


class WebhookDispatch(NamedTuple):
    """One webhook delivery to enqueue."""

    job_id: str
    run: int
    kind: str
    version: int
    """The version of the job event that called for it."""
    correlation_id: str | None = None
    causation_id: str | None = None

    @property
    def unit_id(self) -> str:
        if self.kind == "job.progress":
            return f"{self.job_id}:{self.run}:webhook:progress:{self.version}"
        return f"{self.job_id}:{self.run}:webhook:{self.kind}"


def webhook_for(job_id: str, ev: Event, version: int, *, progress: bool) -> WebhookDispatch | None:
    """The delivery a job event calls for, for a job with a webhook URL (`progress`: also the
    progress webhooks)."""
    kind = WEBHOOK_KINDS.get(type(ev))
    if kind is None or (kind == "job.progress" and not progress):
        return None
    return WebhookDispatch(job_id, getattr(ev, "run", 1), kind, version)


async def dispatch_webhook(redis: ArqRedis, d: WebhookDispatch) -> bool:
    """Enqueue one webhook delivery under its id; False if already queued or done."""
    queued = await enqueue(
        redis,
        "webhook",
        d.job_id,
        d.run,
        d.kind,
        d.version,
        queue=WEBHOOK_QUEUE,
        unit_id=d.unit_id,
        correlation_id=d.correlation_id,
        causation_id=d.causation_id,
    )
    return queued is not None
