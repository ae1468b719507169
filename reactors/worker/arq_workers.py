"""A node's arq workers: their queues and limits, and their restart when Redis drops them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from arq.worker import Worker, func

from spool.adapters.queue import DOWNLOAD_QUEUE, WEBHOOK_QUEUE, node_queue
from spool.reactors.tasks import run_task
from spool.reactors.webhooks import deliver_webhook
from spool.reactors.worker.entry_points import download, mux, ping, upload

if TYPE_CHECKING:
    from spool.reactors.worker.node import Node

log = logging.getLogger("spool.node")

STAGE_TIMEOUT = 6 * 3600
"""arq's own limit; stalls are caught much sooner by the node's progress watchdog."""


def arq_workers(node: Node) -> list[Worker]:
    """The node's three workers: the shared download queue, its own queue, webhooks."""
    common: dict[str, Any] = {
        "redis_pool": node.redis,
        "handle_signals": False,
        "ctx": {"node": node, "webhooks": node.webhooks},
        "job_timeout": STAGE_TIMEOUT,
        "keep_result": 7 * 24 * 3600,
        "poll_delay": 0.2,
        "max_tries": 1000,
    }
    s = node.settings
    return [
        Worker(
            [func(download, name="download")],
            queue_name=DOWNLOAD_QUEUE,
            max_jobs=s.download_concurrency,
            **common,
        ),
        Worker(
            [
                func(mux, name="mux"),
                func(upload, name="upload"),
                func(ping, name="ping", keep_result=60, timeout=10, max_tries=1),
                func(run_task, name="task"),
            ],
            queue_name=node_queue(node.node_id),
            # One slot more than the stages' own limits (their semaphores still gate them):
            # a ping must not wait behind a long mux.
            max_jobs=s.mux_concurrency + s.upload_concurrency + 1 + s.task_concurrency,
            **common,
        ),
        Worker(
            [func(deliver_webhook, name="webhook", max_tries=s.webhook_attempts)],
            queue_name=WEBHOOK_QUEUE,
            max_jobs=10,
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
