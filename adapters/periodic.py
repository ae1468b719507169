"""The one loop of every periodic pass: run, survive a failure, wait for the next turn or a stop.

The reconciler, the scheduler's planner, viewer timeouts and a node's heartbeat each run a pass
every so often until told to stop, and each must outlive a database or Redis hiccup: that loop
is written here once. (The health websocket's sysinfo stream is not one of them: it must end
with its client, not outlive a failure.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("spool.periodic")

Clock = Callable[[], float]


async def first_of(*events: asyncio.Event, seconds: float) -> None:
    """Wait until any of `events` is set, or `seconds` pass.

    Cancellation-safe: the waiters are cancelled however this ends (asyncio.wait_for on an
    event that fires as the task is cancelled swallows the cancel on Python 3.11).
    """
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def run_periodically(
    pass_: Callable[[], Awaitable[object]],
    *,
    interval: float,
    stop: asyncio.Event,
    what: str,
    wake: asyncio.Event | None = None,
    on_error: Callable[[Exception], None] | None = None,
    paced: bool = False,
    clock: Clock = time.monotonic,
    logger: logging.Logger = log,
) -> None:
    """Run `pass_` until `stop` is set, `interval` seconds apart.

    A pass that raises is logged as "`what` failed, will retry" (and handed to `on_error`); the
    loop goes on. Between passes it waits for `stop`, for `wake` when given (cleared before each
    pass, so a wake during a pass calls for another), or `interval` seconds: counted from the
    end of the pass, or from its start when `paced` (a heartbeat keeps its rhythm however long
    a beat takes; at least 50 ms apart all the same).
    """
    while not stop.is_set():
        started = clock()
        if wake is not None:
            wake.clear()
        try:
            await pass_()
        except Exception as exc:  # a hiccup of the database or Redis must not end the part
            logger.warning("%s failed, will retry: %s", what, exc)
            if on_error is not None:
                on_error(exc)
        wait = max(0.05, interval - (clock() - started)) if paced else interval
        await first_of(stop, *([wake] if wake is not None else []), seconds=wait)
