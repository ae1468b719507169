"""`spool replay`: a job's history as a timeline and as JSON Lines, and `replay verify`."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner, Result

from spool.adapters.read_models import all_projections
from spool.cli import main
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer


async def _spool(database_url: str, *args: str) -> Result:
    """Run `spool ...` in a thread of its own (its own event loop; the cluster keeps running)."""
    command = [*args, "--database-url", database_url]
    return await asyncio.to_thread(CliRunner().invoke, main, command, env={"SPOOL_API_KEY": None})


async def _caught_up(cluster: Cluster, *names: str, seconds: float = 30) -> None:
    """Wait until the cluster's projections have applied every event of theirs so far."""
    runner = ProjectionRunner(cluster.store, all_projections())
    async with asyncio.timeout(seconds):
        while any([await runner.pending(n) for n in names]):
            await asyncio.sleep(0.1)


async def test_replay_job_tells_what_happened_when_where_and_on_whose_request(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = cluster.settings.database_url
    assert url is not None
    done = await cluster.create(media_server.url("clip.mp4"))
    await cluster.wait(done, "Completed", "Failed", seconds=90)
    slow = await cluster.create(media_server.slow_url("clip.mp4"))
    await cluster.wait(slow, "Processing", seconds=30)
    cancel = await cluster.client.delete(f"/jobs/{slow}", headers=cluster.headers())
    assert cancel.status_code == 200
    history = await cluster.client.get(
        f"/jobs/{slow}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    canceller = next(
        e["metadata"]["actor"] for e in history.json()["events"] if e["type"] == "JobCancelled"
    )

    text = await _spool(url, "replay", "job", done)
    lines = await _spool(url, "replay", "job", done, "--json")
    cancelled = await _spool(url, "replay", "job", slow)

    assert text.exit_code == 0, text.stderr
    out = text.stdout
    assert f"job-{done}" in out.splitlines()[0]
    for fragment in ("JobCreated", "StageStarted", "DownloadCompleted", "JobCompleted"):
        assert fragment in out
    for stage in ("download", "mux", "upload"):
        assert f"{stage} took " in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("status Completed; stages: download ")
    assert f"nodes: {cluster.settings.node_id}" in summary
    assert "retries: none" in summary

    assert lines.exit_code == 0, lines.stderr
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "JobCreated" and events[0]["metadata"]["actor"]
    completed = next(e for e in events if e["type"] == "JobCompleted")
    assert completed["stage"] == "upload" and completed["stage_seconds"] >= 0
    assert completed["metadata"]["node_id"] == cluster.settings.node_id

    assert cancelled.exit_code == 0, cancelled.stderr
    [line] = [x for x in cancelled.stdout.splitlines() if "JobCancelled" in x]
    assert f"by key {canceller} (user)" in line
    assert cancelled.stdout.strip().splitlines()[-1].startswith("status Cancelled")


async def test_replay_of_an_unknown_or_malformed_id_is_a_clear_error(database_url: str) -> None:
    url = database_url
    missing = await _spool(url, "replay", "job", "6f1c1a51-8a1f-4d4e-9b8a-3f0c1f6b2a10")
    malformed = await _spool(url, "replay", "task", "nope")

    assert missing.exit_code == 1 and "no job" in missing.stderr
    assert malformed.exit_code == 2 and "not a task id" in malformed.stderr


async def test_verify_passes_on_a_healthy_log_and_catches_a_row_changed_by_hand(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = cluster.settings.database_url
    assert url is not None
    job_id = await cluster.create(media_server.url("clip.mp4"))
    await cluster.wait(job_id, "Completed", "Failed", seconds=90)
    bulk = await cluster.client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": media_server.url("clip.mp4")}], "paused": True},
        headers=cluster.headers(),
    )
    task = await cluster.client.post(
        "/api/v1/tasks", json={"task_type": "echo", "payload": {}}, headers=cluster.headers()
    )
    assert bulk.status_code == task.status_code == 201
    await _caught_up(cluster, "jobs", "tasks")

    healthy = await _spool(url, "replay", "verify")

    assert healthy.exit_code == 0, healthy.stdout + healthy.stderr
    assert "no differences" in healthy.stdout
    assert "2 jobs" in healthy.stdout and "1 batches" in healthy.stdout
    assert "1 tasks" in healthy.stdout

    await cluster.pool.execute("UPDATE jobs SET status = 'Failed' WHERE job_id = $1", job_id)
    await cluster.pool.execute(
        "UPDATE usage_daily SET jobs_completed = jobs_completed + 5 WHERE jobs_completed > 0"
    )
    task_id = task.json()["data"]["task_id"]
    await cluster.pool.execute("DELETE FROM tasks WHERE task_id = $1", task_id)
    broken = await _spool(url, "replay", "verify")

    assert broken.exit_code == 1
    assert f"job-{job_id} status: projection 'Failed' != folded 'Completed'" in broken.stdout
    assert "jobs_completed: projection 6 != folded 1" in broken.stdout
    assert f"task-{task_id} row: projection '<no row>' != folded 'present'" in broken.stdout
    assert "3 differences" in broken.stderr
