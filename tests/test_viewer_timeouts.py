"""Viewers that go silent are closed by the timeout reactor, at the version it saw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.domain import viewer
from spool.domain.events import NewEvent
from spool.reactors.projection import ProjectionRunner
from spool.reactors.viewer_timeouts import LOCK_KEY, ViewerTimeouts

TIMEOUT = 30.0
"""Long enough that "just now" stays true on a loaded machine: no test waits it out."""
AT_ONCE = 0.0
"""A timeout every viewer is past as soon as it has been silent at all: the judgement of a
viewer silent for longer than the timeout, without waiting the timeout out."""


@pytest.fixture
async def own_pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: a short timeout would close every other test's viewers too."""
    pool = await create_pool(fresh_database_url, max_size=5)
    yield pool
    await pool.close()


async def open_viewer(store: EventStore, viewer_id: str) -> None:
    ev = viewer.ViewerConnected(
        viewer_id=viewer_id, harness_type="RTMP_VIEWER", state="PLAYING", started_at=1
    )
    await store.append(viewer.stream_id(viewer_id), [NewEvent(ev)], 0)


async def report(store: EventStore, viewer_id: str, version: int, total: int) -> None:
    ev = viewer.ViewerStats(
        viewer_id=viewer_id,
        in_bandwidth=0,
        out_bandwidth=10,
        in_total_bytes=7,
        out_total_bytes=total,
    )
    await store.append(viewer.stream_id(viewer_id), [NewEvent(ev)], version)


async def test_a_silent_viewer_is_closed_with_its_last_totals(own_pool: asyncpg.Pool) -> None:
    store = EventStore(own_pool)
    runner = ProjectionRunner(store, all_projections())
    await open_viewer(store, "v_silent")
    await report(store, "v_silent", 1, 1234)
    await runner.settle("viewers")
    timeouts = ViewerTimeouts(store, Settings(viewer_timeout=TIMEOUT))
    assert await timeouts.close_once() == []  # not silent long enough yet
    assert await ViewerTimeouts(store, Settings(viewer_timeout=AT_ONCE)).close_once() == [
        "v_silent"
    ]
    last = (await store.read_stream(viewer.stream_id("v_silent")))[-1].data
    assert isinstance(last, viewer.ViewerDisconnected)
    assert (last.reason, last.in_total_bytes, last.out_total_bytes) == ("timeout", 7, 1234)
    await runner.settle("viewers")
    assert await own_pool.fetchval("SELECT count(*) FROM viewers") == 0


async def test_a_viewer_that_reported_meanwhile_is_left_open(own_pool: asyncpg.Pool) -> None:
    store = EventStore(own_pool)
    runner = ProjectionRunner(store, all_projections())
    await open_viewer(store, "v_late")
    await runner.settle("viewers")
    # It speaks after the projection last saw it: the row's version is behind the stream.
    await report(store, "v_late", 1, 10)
    assert await ViewerTimeouts(store, Settings(viewer_timeout=AT_ONCE)).close_once() == []
    assert await store.stream_version(viewer.stream_id("v_late")) == 2
    await runner.settle("viewers")
    timeouts = ViewerTimeouts(store, Settings(viewer_timeout=TIMEOUT))
    assert await timeouts.close_once() == []  # seen just now: not silent


async def test_only_one_process_closes_at_a_time(own_pool: asyncpg.Pool) -> None:
    store = EventStore(own_pool)
    runner = ProjectionRunner(store, all_projections())
    await open_viewer(store, "v_locked")
    await runner.settle("viewers")
    timeouts = ViewerTimeouts(store, Settings(viewer_timeout=AT_ONCE))
    async with own_pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY)
        try:
            assert await timeouts.close_once() == []
        finally:
            await other.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)
    assert await timeouts.close_once() == ["v_locked"]


async def test_the_reactor_runs_until_stopped(own_pool: asyncpg.Pool) -> None:
    store = EventStore(own_pool)
    runner = ProjectionRunner(store, all_projections())
    await open_viewer(store, "v_loop")
    await runner.settle("viewers")
    stop = asyncio.Event()
    task = asyncio.create_task(
        ViewerTimeouts(store, Settings(viewer_timeout=AT_ONCE), tick=0.1).run(stop)
    )
    try:
        async with asyncio.timeout(10):
            while await store.stream_version(viewer.stream_id("v_loop")) < 2:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
