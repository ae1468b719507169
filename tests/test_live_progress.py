"""Live progress goes from a node to the API beside the log (adapters/live_progress.py): the job
shows its running stage's latest progress at every heartbeat, while its history keeps at most
one `StageProgressed` per tenth of a stage; histories written with one every second still fold.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters import live_progress
from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs, load_job
from spool.adapters.queue import connect, webhook_for
from spool.adapters.read_models.jobs import ROWS
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.domain import job
from spool.domain.events import Metadata, NewEvent
from spool.reactors.projection import ProjectionRunner
from spool.reactors.worker.node import Node
from spool.reactors.worker.unit import RunningUnit
from spool.replay import load_timeline, render_text
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture
async def node(database_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Node]:
    """A node that runs no worker: the test hands it units and beats for it (`Node.tick`)."""
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        node_id=f"live-{uuid.uuid4().hex[:8]}",
        secret_key="test-secret-key",
    )
    redis = await connect(redis_url)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield Node(
            store=EventStore(pool), redis=redis, storage=LocalStorage(tmp_path), settings=settings
        )
    finally:
        await pool.close()
        await redis.aclose()


async def _created(client: httpx.AsyncClient, key: str) -> str:
    answer = await client.post(
        "/jobs", json={"url": "https://media.test/live.mp4"}, headers=_auth(key)
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def _started(node: Node, job_id: str, attempt: int = 1) -> RunningUnit:
    """The job's download started by `node` (at `attempt`), as the node's running unit."""
    meta = Metadata(actor=f"node:{node.node_id}", node_id=node.node_id)
    done = await jobs(node.store).execute(
        job_id, lambda s: job.start_stage(s, "download", 1, attempt, node.node_id), meta
    )
    assert done.state is not None
    unit = RunningUnit(job_id, "download", 1, attempt, done.state, done.state.version, meta)
    node.running[f"{job_id}:download:{attempt}"] = unit
    return unit


def _at(percent: float) -> job.Progress:
    return job.Progress(
        stage="download",
        percent=percent,
        bytes=int(percent * 1_000),
        total_bytes=100_000,
        speed=1_000.0,
        eta=100 - percent,
    )


async def _shown(client: httpx.AsyncClient, key: str, job_id: str) -> Any:
    answer = await client.get(f"/jobs/{job_id}", headers=_auth(key))
    assert answer.status_code == 200, answer.text
    return answer.json()["progress"]


async def _listed(
    client: httpx.AsyncClient, runner: ProjectionRunner, key: str, job_id: str
) -> Any:
    """The job's progress in the list (`GET /jobs`, from the projection once it caught up)."""
    await runner.settle("jobs")
    answer = await client.get("/jobs", params={"limit": 100}, headers=_auth(key))
    assert answer.status_code == 200, answer.text
    return next(j["progress"] for j in answer.json()["jobs"] if j["id"] == job_id)


async def _history(store: EventStore, job_id: str) -> list[Any]:
    return [e.data for e in await store.read_stream(job.stream_id(job_id))]


async def _rows(store: EventStore, job_id: str) -> list[tuple[int, str, int]]:
    rows = await store.pool.fetch(
        "SELECT run, stage, attempt FROM live_progress WHERE job_id = $1", job_id
    )
    return [tuple(r) for r in rows]


async def test_progress_history_keeps_at_most_twelve_events_per_stage_while_the_job_shows_each_beat(
    client: httpx.AsyncClient, api_key: str, node: Node, runner: ProjectionRunner
) -> None:
    job_id = await _created(client, api_key)
    unit = await _started(node, job_id)

    for percent in range(101):
        unit.progress = _at(percent)
        await node.tick()
        shown = await _shown(client, api_key, job_id)
        assert (shown["stage"], shown["percent"], shown["bytes"]) == (
            "download",
            percent,
            percent * 1_000,
        )
        if percent % 25 == 0:
            listed = await _listed(client, runner, api_key, job_id)
            assert listed["percent"] == percent

    history = await _history(store=node.store, job_id=job_id)
    recorded = [e.progress.percent for e in history if isinstance(e, job.StageProgressed)]
    assert recorded == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert len([e for e in history if not isinstance(e, job.JobCreated)]) <= 12
    # A progress webhook follows each recorded step: the start and each tenth, not each beat.
    events = await node.store.read_stream(job.stream_id(job_id))
    hooks = [webhook_for(job_id, e.data, e.version, progress=True) for e in events]
    assert [h.kind for h in hooks if h is not None] == ["job.progress"] * 11


async def test_a_recording_without_a_percent_keeps_no_progress_event_yet_shows_its_bytes(
    client: httpx.AsyncClient, api_key: str, node: Node
) -> None:
    job_id = await _created(client, api_key)
    unit = await _started(node, job_id)

    for second in range(30):
        unit.progress = job.Progress(stage="download", bytes=second * 500_000, speed=500_000.0)
        await node.tick()

    shown = await _shown(client, api_key, job_id)
    assert (shown["percent"], shown["bytes"]) == (None, 29 * 500_000)
    history = await _history(node.store, job_id)
    assert not [e for e in history if isinstance(e, job.StageProgressed)]


async def test_a_finished_job_shows_no_live_progress_and_its_row_goes_at_the_next_beat(
    client: httpx.AsyncClient, api_key: str, node: Node, runner: ProjectionRunner
) -> None:
    job_id = await _created(client, api_key)
    unit = await _started(node, job_id)
    unit.progress = _at(42)
    await node.tick()
    assert (await _shown(client, api_key, job_id))["percent"] == 42

    cancelled = await client.delete(f"/jobs/{job_id}", headers=_auth(api_key))
    assert cancelled.status_code == 200
    assert await _shown(client, api_key, job_id) is None
    assert await _listed(client, runner, api_key, job_id) is None

    await node.tick()  # the node sees the cancel and stops the unit
    assert unit.cancel.is_set()
    node.running.clear()
    await node.tick()
    assert await _rows(node.store, job_id) == []


async def test_live_progress_of_an_attempt_the_job_moved_off_is_not_shown(
    client: httpx.AsyncClient, api_key: str, node: Node, runner: ProjectionRunner
) -> None:
    job_id = await _created(client, api_key)
    old = await _started(node, job_id)
    old.progress = _at(5)
    await node.tick()
    # The job moves on without this node: its attempt is interrupted and another node starts
    # the next one; the first node still sends what it had.
    meta = Metadata(actor="test")
    await jobs(node.store).execute(
        job_id, lambda s: job.interrupt_stage(s, "download", 1, 1, node_id=node.node_id), meta
    )
    await jobs(node.store).execute(
        job_id, lambda s: job.start_stage(s, "download", 1, 2, "another-node"), meta
    )
    old.progress = _at(60)
    node.running.clear()
    node.running["stale"] = old  # the node has not noticed yet
    await node.tick()

    assert (1, "download", 1) in await _rows(node.store, job_id)
    shown = await _shown(client, api_key, job_id)
    assert shown["percent"] == 0  # the new attempt's start, not the old attempt's 60
    assert (await _listed(client, runner, api_key, job_id))["percent"] == 0

    new = live_progress.Sent(job_id, 1, "download", 2, _at(30))
    await live_progress.publish(
        node.store.pool, "another-node", [new], live_progress.fresh_within(node.settings)
    )
    assert (await _shown(client, api_key, job_id))["percent"] == 30


async def test_another_account_cannot_read_a_jobs_live_progress(
    client: httpx.AsyncClient, api_key: str, other_api_key: str, node: Node
) -> None:
    job_id = await _created(client, api_key)
    unit = await _started(node, job_id)
    unit.progress = _at(33)
    await node.tick()

    assert (await client.get(f"/jobs/{job_id}", headers=_auth(other_api_key))).status_code == 404
    theirs = await client.get("/jobs", params={"limit": 100}, headers=_auth(other_api_key))
    assert job_id not in {j["id"] for j in theirs.json()["jobs"]}


async def test_a_history_with_a_progress_event_every_second_still_folds_and_replays(
    store: EventStore, runner: ProjectionRunner
) -> None:
    job_id = str(uuid.uuid4())
    meta = Metadata(actor="node:old")
    created = job.create(
        job_id=job_id,
        account_id="acct-old",
        url="https://media.test/hour.mp4",
        options=job.JobOptions(),
    )
    started = job.StageStarted(stage="download", run=1, attempt=1, node_id="old")
    # An hour of a download written before milestones: one event a second.
    every_second = [
        job.StageProgressed(run=1, attempt=1, progress=_at(second / 36)) for second in range(3_600)
    ]
    await store.append(
        job.stream_id(job_id), [NewEvent(e, meta) for e in [*created, started, *every_second]], 0
    )
    events = await store.read_stream(job.stream_id(job_id))
    folded: job.JobState | None = None
    for e in events:
        folded = job.evolve(folded, e.data, e.recorded_at, e.version)
    assert folded is not None and folded.progress == _at(3_599 / 36)

    assert await load_job(store, job_id) == folded
    await runner.settle("jobs")
    row = await store.pool.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
    assert ROWS.decode(row) == folded
    timeline = await load_timeline(store, "job", job.stream_id(job_id))
    assert timeline is not None and timeline.status == folded.status == "Processing"
    assert len(timeline.entries) == 3_602
    assert len(list(render_text(timeline))) < 10  # the progress lines are folded away


def test_a_milestone_is_each_new_tenth_of_a_stage_and_none_without_a_percent() -> None:
    started = job.Progress(stage="download", percent=0.0)
    assert not job.progress_milestone(started, _at(9.9))
    assert job.progress_milestone(started, _at(10))
    assert job.progress_milestone(started, _at(37))  # a jump past several tenths is one event
    assert not job.progress_milestone(_at(37), _at(39.5))
    assert job.progress_milestone(_at(95), _at(100))
    assert not job.progress_milestone(_at(60), _at(40))  # a percent going back records nothing
    assert job.progress_milestone(None, _at(12))
    mux = job.Progress(stage="mux", percent=15.0)
    assert job.progress_milestone(_at(90), mux)  # the last recorded was another stage's
    recording = job.Progress(stage="download", bytes=10_000_000, speed=2_000_000.0)
    assert not job.progress_milestone(started, recording)


async def test_a_real_download_shows_its_progress_live_and_records_only_its_tenths(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    size = (media_dir / "clip.mp4").stat().st_size
    # About five seconds of download: several heartbeats' worth of progress.
    job_id = await cluster.create(media_server.slow_url("clip.mp4", chunk=size // 100))
    seen: set[float] = set()

    async def finished() -> Any:
        body = await cluster.job(job_id)
        if body["step"] == "Downloading" and body["progress"] is not None:
            seen.add(body["progress"]["percent"])
        return body["status"] in ("Completed", "Failed") and body

    done = await until(finished, seconds=90, every=0.2)

    assert done["status"] == "Completed", done
    assert done["progress"] is None
    assert len({p for p in seen if 0 < p < 100}) >= 3  # it moved as the test watched
    events = await cluster.store.read_stream(job.stream_id(job_id))
    for stage in ("download", "mux", "upload"):
        recorded = [
            e.data.progress.percent
            for e in events
            if isinstance(e.data, job.StageProgressed) and e.data.progress.stage == stage
        ]
        assert len(recorded) <= 10, (stage, recorded)
        steps = [int(p // 10) for p in recorded if p is not None]
        assert steps == sorted(set(steps)), (stage, recorded)  # one per tenth at most
    assert await until(lambda: _gone(cluster.store, job_id), seconds=10)


async def _gone(store: EventStore, job_id: str) -> bool:
    return await _rows(store, job_id) == []
