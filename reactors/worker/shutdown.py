"""A node's stop: running stages are interrupted and recorded, waiting units go back to Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Collection, Mapping, Sequence

from arq.worker import Worker

from spool.reactors.worker.unit import RunningUnit

INTERRUPT_GRACE = 4.0
"""Seconds a stopping node gives its running stages to stop and record the interruption: the
download thread, FFmpeg and an upload each notice their cancel event well within it."""

CANCEL_GRACE = 1.0
"""Seconds, after that, for the stages still running to unwind once their tasks are cancelled."""


async def interrupt_running(running: Mapping[str, RunningUnit], grace: float) -> list[RunningUnit]:
    """Tell every running stage to stop; the units still running after `grace` seconds."""
    for unit in running.values():
        unit.interrupted = True
        unit.cancel.set()
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return list(running.values())


async def stop_workers(
    workers: Sequence[Worker],
    loops: list[asyncio.Task[None]],
    cancel_grace: float,
    chains: Collection[asyncio.Task[str]] = (),
) -> None:
    """Stop the arq workers; their jobs are cancelled (arq queues them again) within the grace,
    as are the stages the node went straight on to (`chains`: no queue holds those; the node
    records them as interrupted)."""
    for w in workers:
        w.handle_sig(signal.SIGTERM)  # cancels its jobs (arq queues them again) and its loop
    for t in [*loops, *chains]:
        t.cancel()  # a worker stopped before its poll loop began has nothing to signal
    jobs = [j for w in workers for j in w.tasks.values()]
    await asyncio.wait([*loops, *jobs, *chains], timeout=cancel_grace)
