"""Two `spool reactors` processes follow the same projections and run the same process managers
(pipeline, scheduler, reconciler) at once: no unit of work is done twice, no event counts twice,
and when one is SIGKILLed the other carries on alone."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

from spool.adapters.task_store import load_task
from spool.domain import job, task
from tests.faults.checks import assert_nothing_lost
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.processes import SpoolProcesses


async def _submit_task(cluster: Cluster) -> str:
    answer = await cluster.client.post(
        "/api/v1/tasks",
        json={"task_type": "sleep", "payload": {"seconds": 0.5}},
        headers=cluster.headers(),
    )
    assert answer.status_code == 201, answer.text
    task_id: str = answer.json()["data"]["task_id"]
    return task_id


async def _task_ended(cluster: Cluster, task_id: str) -> str:
    deadline = time.monotonic() + 120
    while True:
        state = await load_task(cluster.store, task_id)
        if state is not None and state.terminal:
            return state.status
        assert time.monotonic() < deadline, f"task stuck: {state}"
        await asyncio.sleep(0.1)


_RUNNING = re.compile(r"spool reactors (are )?running")


async def _running(procs: SpoolProcesses, *names: str) -> None:
    """Wait until each process has caught up and started its reactors (it logs so)."""
    deadline = time.monotonic() + 90
    while not all(_RUNNING.search(procs.log(n)) for n in names):
        assert time.monotonic() < deadline, procs.logs()
        await asyncio.sleep(0.2)


async def test_two_reactor_processes_do_each_unit_once_and_one_carries_on_when_the_other_dies(
    start_cluster: StartCluster, media_server: MediaServer, tmp_path: Path
) -> None:
    # The API and the node run here; every reactor runs only in the two processes. The node
    # timeout is the production order of magnitude: on a starved machine, a 3 s one lets a
    # reconciler in another process take a late heartbeat for a dead node and retry a unit
    # that is still running (RELIABILITY.md).
    async with start_cluster(with_reactors=False, node_timeout=10.0) as cluster:
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        procs.start("reactors-a", "reactors")
        procs.start("reactors-b", "reactors")
        try:
            await _running(procs, "reactors-a", "reactors-b")
            slow = media_server.slow_url("clip.mp4", chunk=16384, interval=0.05)
            job_ids = [await cluster.create(slow, filename=f"both{i}") for i in range(3)]
            task_ids = [await _submit_task(cluster) for _ in range(2)]
            await cluster.wait(job_ids[0], until=lambda j: j["step"] == "Downloading", seconds=90)

            procs.kill("reactors-a")
            job_ids += [
                await cluster.create(media_server.url("clip.mp4"), filename=f"alone{i}")
                for i in range(2)
            ]
            task_ids.append(await _submit_task(cluster))

            finished = [await cluster.wait(j, *job.TERMINAL, seconds=120) for j in job_ids]
            ended = [await _task_ended(cluster, t) for t in task_ids]
        finally:
            procs.stop_all()

        assert [j["status"] for j in finished] == ["Completed"] * 5, procs.logs()
        assert ended == ["success"] * 3
        for job_id in job_ids:
            events = await cluster.store.read_stream(job.stream_id(job_id))
            started = Counter(
                (e.data.stage, e.data.run, e.data.attempt)
                for e in events
                if isinstance(e.data, job.StageStarted)
            )
            assert [e.data for e in events if isinstance(e.data, job.StageFailed)] == []
            # Each stage ran once: a unit dispatched twice would start (or fail) twice.
            assert sorted(started.values()) == [1, 1, 1], started
        for task_id in task_ids:
            types = [e.type for e in await cluster.store.read_stream(task.stream_id(task_id))]
            assert (types.count("TaskAssigned"), types.count("TaskStarted")) == (1, 1), types
        # Projections applied every event once: `replay verify` compares every row (usage
        # counters included) with the fold of the log.
        await assert_nothing_lost(cluster, job_ids, task_ids)
