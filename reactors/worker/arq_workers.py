"""A node's arq workers: their queues and limits, and their restart when Redis drops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from spool.adapters.queue import DOWNLOAD_QUEUE, UNIT_EXPIRES, WEBHOOK_QUEUE, node_queue
from spool.reactors.tasks import run_task
from spool.reactors.webhooks import deliver_webhook
from spool.reactors.worker.entry_points import download, mux, ping, upload

if TYPE_CHECKING:
    from spool.reactors.worker.node import Node

log = logging.getLogger("spool.node")

STAGE_TIMEOUT = 6 * 3600
"""arq's own limit; stalls are caught much sooner by the node's progress watchdog."""


CLAIM = """
local claimed = {}
for i = 5, #ARGV do
  if #claimed >= 2 * tonumber(ARGV[4]) then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[1])
     and redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('PSETEX', ARGV[3] .. id, ARGV[2], '1')
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = score
  end
end
return claimed
"""
"""Claims queued units for a worker, as arq's per-unit transaction does: KEYS[1] the queue;
ARGV: now (ms), the in-progress mark's lifetime (ms), the mark's key prefix, how many to claim
at most, then the candidate unit ids in queue order (those running elsewhere, or a dead
worker's until their mark expires, are passed over). Returns the claimed ids, each followed by
its score."""


class PromptWorker(Worker):
    """An arq worker that looks at its queue when woken, not only at its next poll.

    arq's loop sleeps `poll_delay` between looks at the queue: every unit waited for it, and a
    worker at its `max_jobs` let a freed slot idle until then too. This one looks again as soon
    as `wake` is set (a unit was enqueued on its queue: adapters/queue.py `enqueue`) or one of
    its own units ended, and polls every `poll_delay` as a fallback (a wake-up can be lost with
    its connection; a deferred unit falls due unannounced).
    """

    def __init__(self, *args: Any, wake: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        while True:
            # Cleared before the look: a wake-up that comes during it means a look again.
            self.wake.clear()
            await self._poll_iteration()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await self.wake.wait()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots' worth of `job_ids` in one round trip, and run them.

        arq claims one unit at a time (a watched transaction, four round trips each), and a
        look finds the worker's own running units first (a unit stays in its queue until it
        ends): under load the claims, not the units, set the pace. The claim is the same one
        arq makes (not running anywhere, due, marked in progress for `in_progress_timeout_s`),
        made for all of them at once by `CLAIM`, atomic in Redis as arq's transaction is.
        """
        free = self.max_jobs - self.job_counter
        candidates = [u for u in (j.decode() for j in job_ids) if u not in self.tasks]
        if free <= 0 or not candidates:
            return
        claimed: list[bytes] = await self.pool.eval(  # type: ignore[misc]
            CLAIM,
            1,
            self.queue_name,
            str(timestamp_ms()),
            str(int(self.in_progress_timeout_s * 1000)),
            in_progress_key_prefix,
            str(free),
            *candidates,
        )
        for job_id, score in zip(claimed[::2], claimed[1::2], strict=True):
            await self.sem.acquire()  # never waits: no more are claimed than slots are free
            self.job_counter += 1
            unit = job_id.decode()
            task = self.loop.create_task(self.run_job(unit, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[unit] = task

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()  # a slot is free: what waits in the queue need not wait for the poll


def arq_workers(node: Node) -> list[PromptWorker]:
    """The node's three workers: the shared download queue, its own queue, webhooks; each woken
    by `node.wakes[its queue]`."""
    common: dict[str, Any] = {
        "redis_pool": node.redis,
        "handle_signals": False,
        "ctx": {"node": node, "webhooks": node.webhooks},
        "job_timeout": STAGE_TIMEOUT,
        "keep_result": UNIT_EXPIRES,
        "poll_delay": node.settings.queue_poll,
        "max_tries": 1000,
    }
    s = node.settings
    own = node_queue(node.node_id)
    return [
        PromptWorker(
            [func(download, name="download")],
            queue_name=DOWNLOAD_QUEUE,
            max_jobs=s.download_concurrency,
            wake=node.wakes[DOWNLOAD_QUEUE],
            **common,
        ),
        PromptWorker(
            [
                func(mux, name="mux"),
                func(upload, name="upload"),
                func(ping, name="ping", keep_result=60, timeout=10, max_tries=1),
                func(run_task, name="task"),
            ],
            queue_name=own,
            wake=node.wakes[own],
            # One slot more than the stages' own limits (their semaphores still gate them):
            # a ping must not wait behind a long mux.
            max_jobs=s.mux_concurrency + s.upload_concurrency + 1 + s.task_concurrency,
            **common,
        ),
        PromptWorker(
            [func(deliver_webhook, name="webhook", max_tries=s.webhook_attempts)],
            queue_name=WEBHOOK_QUEUE,
            max_jobs=10,
            wake=node.wakes[WEBHOOK_QUEUE],
            **{**common, "job_timeout": 60},
        ),
    ]


WORKER_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)
"""Seconds before an arq worker that died is started again: the first tries, then each later."""


async def keep_working(worker: Worker, stop: asyncio.Event) -> None:
    """Run an arq worker until `stop`; one whose poll loop dies (Redis gone) starts again.

    arq's loop ends at the first Redis error. Without this the node went on beating, so the
    cluster took it for alive, while it took no more work from that queue, ever. The jobs the
    worker was running carry on (their results go to PostgreSQL; the reconciler re-dispatches
    whatever the queue lost), and the same worker, its limits counting them, polls again.
    """
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await worker.async_run()
            return  # stopped on purpose (`handle_sig`)
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started > 60:
                failures = 0  # it ran fine for a while: this is a new outage
            delay = WORKER_RESTART_DELAYS[min(failures, len(WORKER_RESTART_DELAYS) - 1)]
            failures += 1
            log.warning(
                "arq worker of %s stopped (%s: %s); polling again in %g s",
                worker.queue_name,
                type(exc).__name__,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
