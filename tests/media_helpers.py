"""Helpers for the playback tests: finished jobs written straight to the log, viewers read back."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from spool.adapters.event_store import EventStore
from spool.adapters.storage import ObjectStorage
from spool.domain import job, viewer
from spool.domain.aggregate import steps
from spool.domain.events import Event, NewEvent


def _apply(state: job.JobState | None, events: list[Event]) -> job.JobState:
    at = datetime.now(UTC)
    version = state.version if state else 0
    for e in events:
        version += 1
        state = job.evolve(state, e, at, version)
    assert state is not None
    return state


async def finished_job(
    store: EventStore,
    storage: ObjectStorage,
    account_id: str,
    media: Path,
    *,
    duration: float,
    key: str | None = None,
) -> str:
    """A Completed job of `account_id` whose output is `media`, stored at `key` in `storage`."""
    job_id = str(uuid.uuid4())
    key = key or f"{job_id}.mp4"
    stored = await storage.put_file(key, media)
    events: list[Event] = list(
        job.create(
            job_id=job_id, account_id=account_id, url="http://m/a.mp4", options=job.JobOptions()
        )
    )
    state = _apply(None, events)
    for stage in ("download", "mux", "upload"):
        started = job.start_stage(state, stage, 1, 1, "n1")
        state = _apply(state, started)
        events += started
        done: Event
        if stage == "download":
            files = [job.MediaFile(path="/w/a.mp4", kind="av", size=stored.size)]
            done = job.DownloadCompleted(
                run=1, attempt=1, node_id="n1", files=files, bytes=stored.size, seconds=0.1
            )
        elif stage == "mux":
            output = job.MediaFile(path="/w/o.mp4", kind="av", size=stored.size)
            done = job.MuxCompleted(
                run=1, attempt=1, node_id="n1", output=output, seconds=0.1, duration=duration
            )
        else:
            done = job.JobCompleted(
                run=1,
                attempt=1,
                node_id="n1",
                key=stored.key,
                storage=storage.description,
                size=stored.size,
                seconds=0.1,
            )
        state = _apply(state, [done])
        events.append(done)
    assert state.status == "Completed"
    await store.append(job.stream_id(job_id), [NewEvent(e) for e in events], 0)
    return job_id


async def pending_job(store: EventStore, account_id: str) -> str:
    """A job of `account_id` that has not run yet."""
    job_id = str(uuid.uuid4())
    events = job.create(
        job_id=job_id, account_id=account_id, url="http://m/a.mp4", options=job.JobOptions()
    )
    await store.append(job.stream_id(job_id), [NewEvent(e) for e in events], 0)
    return job_id


class Viewer(msgspec.Struct):
    """One viewer stream read back: how it connected and where it stands now."""

    connected: viewer.ViewerConnected
    state: viewer.ViewerState
    reason: str | None


async def viewers(store: EventStore) -> list[Viewer]:
    """Every viewer stream in the log, oldest first."""
    rows = await store.pool.fetch(
        "SELECT stream_id FROM events WHERE stream_id LIKE 'viewer-%' AND version = 1 "
        "ORDER BY position"
    )
    found = []
    for row in rows:
        recorded = await store.read_stream(row["stream_id"], 1)
        events = [e.data for e in recorded]
        state = viewer.fold(steps(recorded))
        first = events[0]
        assert state is not None and isinstance(first, viewer.ViewerConnected)
        last = events[-1]
        reason = last.reason if isinstance(last, viewer.ViewerDisconnected) else None
        found.append(Viewer(first, state, reason))
    return found


async def wait_for_viewer(
    store: EventStore,
    harness_type: str,
    stream_key: str,
    *,
    closed: bool = True,
    within: float = 15.0,
) -> Viewer:
    """The one viewer of that harness and stream key, once it is (closed / open)."""
    deadline = time.monotonic() + within
    while True:
        found = [
            v
            for v in await viewers(store)
            if v.connected.harness_type == harness_type and v.connected.stream_key == stream_key
        ]
        if found and all(v.state.closed == closed for v in found):
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no {'closed' if closed else 'open'} viewer: {found}"
        await asyncio.sleep(0.1)
