"""The periodic-pass loop (adapters/periodic.py) that the reconciler, the scheduler's planner,
viewer timeouts and a node's heartbeat all run in."""

from __future__ import annotations

import asyncio
import itertools

from spool.adapters.periodic import run_periodically


async def test_a_pass_that_fails_is_tried_again_at_its_next_turn() -> None:
    stop, second = asyncio.Event(), asyncio.Event()
    calls = 0

    async def pass_() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the database restarted")
        second.set()

    loop = asyncio.create_task(run_periodically(pass_, interval=0.01, stop=stop, what="test pass"))
    await asyncio.wait_for(second.wait(), 5)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert calls >= 2


async def test_a_failed_pass_is_handed_to_on_error() -> None:
    stop = asyncio.Event()
    errors: list[Exception] = []

    async def pass_() -> None:
        raise RuntimeError("Redis went away")

    def on_error(exc: Exception) -> None:
        errors.append(exc)
        stop.set()

    await asyncio.wait_for(
        run_periodically(pass_, interval=60, stop=stop, what="test pass", on_error=on_error), 5
    )
    assert [str(e) for e in errors] == ["Redis went away"]


async def test_a_wake_runs_the_next_pass_without_waiting_out_the_interval() -> None:
    stop, wake, first, second = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def pass_() -> None:
        (second if first.is_set() else first).set()

    loop = asyncio.create_task(
        run_periodically(pass_, interval=3600, stop=stop, wake=wake, what="test pass")
    )
    await asyncio.wait_for(first.wait(), 5)
    wake.set()
    await asyncio.wait_for(second.wait(), 5)  # an hour's interval: only the wake explains it
    stop.set()
    await asyncio.wait_for(loop, 5)


async def test_a_stop_ends_the_wait_at_once() -> None:
    stop, ran = asyncio.Event(), asyncio.Event()

    async def pass_() -> None:
        ran.set()

    loop = asyncio.create_task(run_periodically(pass_, interval=3600, stop=stop, what="test pass"))
    await asyncio.wait_for(ran.wait(), 5)
    stop.set()
    await asyncio.wait_for(loop, 5)  # not an hour


async def test_a_paced_pass_waits_only_what_is_left_of_its_interval() -> None:
    # The clock says each pass took 59.99 of its 60 seconds: the next comes at once (50 ms).
    ticks = itertools.count(step=59.99)
    stop, second = asyncio.Event(), asyncio.Event()
    calls = 0

    async def pass_() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            second.set()

    loop = asyncio.create_task(
        run_periodically(
            pass_,
            interval=60,
            stop=stop,
            what="heartbeat",
            paced=True,
            clock=lambda: float(next(ticks)),
        )
    )
    await asyncio.wait_for(second.wait(), 5)
    stop.set()
    await asyncio.wait_for(loop, 5)
