"""A drained node finishes what it runs and takes nothing new; undrained, it takes work again.

Against an in-process cluster (real PostgreSQL, Redis, S3, media server). Nothing here proves a
negative by waiting: a job submitted after the drain runs on the other node, or, with no other
node, is still untouched after the drained node finished a whole job of its own.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from arq.worker import Retry

from spool.adapters.job_store import load_job
from spool.adapters.task_store import load_task
from spool.domain import job, node, task
from spool.domain.errors import NotFound
from spool.domain.node import Capabilities
from spool.reactors.scheduler import Scheduler
from tests.cluster_api_helpers import append_node, heartbeat, node_started, unique
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until


async def _shows(c: Cluster, device_id: str, status: str, state: str) -> None:
    async def shown() -> bool:
        d = await c.device(device_id)
        return d is not None and d["status"] == status and d["state"] == state

    # The devices API allows an admin key 60 requests a minute: a slow start must not spend them.
    await until(shown, every=1.0)


async def _post(c: Cluster, device_id: str, action: str) -> dict[str, Any]:
    answer = await c.client.post(
        f"/api/v1/devices/{device_id}/{action}", headers=c.headers(c.admin_key)
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


async def _node_of(c: Cluster, job_id: str) -> str | None:
    state = await load_job(c.store, job_id)
    assert state is not None
    return state.node_id


async def _downloading(c: Cluster, url: str) -> str:
    """A job whose download is under way (held by the media server until released)."""
    job_id = await c.create(url)
    await c.wait(job_id, until=lambda b: b["step"] == "Downloading")
    return job_id


async def test_a_drained_node_finishes_its_job_while_new_jobs_run_on_another_node(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster() as c:
        drained = c.settings.node_id
        await _shows(c, drained, "online", "active")
        url, release = media_server.held_url("clip.mp4")
        running = await _downloading(c, url)
        assert await _node_of(c, running) == drained

        answer = await _post(c, drained, "drain")
        assert answer["state"] == "draining"
        await _shows(c, drained, "online", "draining")
        other = f"{drained}-other"
        c.start_other_node("other-node", node_id=other)
        await _shows(c, other, "online", "active")

        later = [await c.create(media_server.url("clip.mp4")) for _ in range(3)]
        for job_id in later:
            await c.wait(job_id, "Completed")
            assert await _node_of(c, job_id) == other

        release.set()
        done = await c.wait(running, "Completed")
        assert done["status"] == "Completed"
        # Every stage of the running job stayed on the drained node, which still shows draining.
        assert await _node_of(c, running) == drained
        events = await c.store.read_stream(job.stream_id(running))
        assert {e.metadata.node_id for e in events if e.type == "StageStarted"} == {drained}
        await _shows(c, drained, "online", "draining")


async def test_a_lone_drained_node_leaves_new_jobs_waiting_until_undrained(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster() as c:
        node_id = c.settings.node_id
        await _shows(c, node_id, "online", "active")
        url, release = media_server.held_url("clip.mp4")
        running = await _downloading(c, url)
        await _post(c, node_id, "drain")
        await _shows(c, node_id, "online", "draining")
        waiting = await c.create(media_server.url("clip.mp4"))
        release.set()
        await c.wait(running, "Completed")
        # The node downloaded, muxed and uploaded a whole job since: a node taking work would
        # have started the waiting job's download long before.
        assert "StageStarted" not in await c.event_types(waiting)
        assert (await c.job(waiting))["status"] == "Pending"

        await _post(c, node_id, "undrain")
        await c.wait(waiting, "Completed")
        assert await _node_of(c, waiting) == node_id
        await _shows(c, node_id, "online", "active")


async def test_a_download_taken_just_before_the_drain_goes_back_to_the_queue(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster() as c:
        node_id = c.settings.node_id
        await _shows(c, node_id, "online", "active")
        assert c.node is not None
        await _post(c, node_id, "drain")
        await _shows(c, node_id, "online", "draining")
        # The unit as the download worker would hand it over had it picked it before the drain.
        job_id = await c.create(media_server.url("clip.mp4"))
        with pytest.raises(Retry):
            await c.node.run_stage("download", job_id, 1, 1)
        assert "StageStarted" not in await c.event_types(job_id)
        await _post(c, node_id, "undrain")
        await c.wait(job_id, "Completed")


async def test_the_scheduler_places_no_task_on_a_drained_node(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster() as c:
        node_id = c.settings.node_id
        await _shows(c, node_id, "online", "active")
        await _post(c, node_id, "drain")
        await _shows(c, node_id, "online", "draining")
        c.start_scheduler()
        answer = await c.client.post(
            "/api/v1/tasks",
            json={"task_type": "echo", "payload": {"message": "hello"}},
            headers=c.headers(c.admin_key),
        )
        assert answer.status_code == 201, answer.text
        task_id = answer.json()["data"]["task_id"]

        async def waits_for_the_drain() -> str | None:
            state = await load_task(c.store, task_id)
            assert state is not None and state.status == "queued", state
            return state.reason if state.reason and "is draining" in state.reason else None

        assert node_id in await until(waits_for_the_drain)
        await _post(c, node_id, "undrain")

        async def succeeded() -> task.TaskState | None:
            state = await load_task(c.store, task_id)
            return state if state is not None and state.status == "success" else None

        assert (await until(succeeded)).device_id == node_id


async def test_a_task_assigned_to_a_node_that_is_then_drained_goes_back_to_the_queue(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster(with_node=False) as c:
        # A node that says it runs echo tasks, but whose queue nobody reads: its assignment
        # stays unstarted for as long as the test looks.
        ghost = unique("ghost")
        started = node_started(ghost)
        started = msgspec.structs.replace(
            started,
            capabilities=msgspec.structs.replace(started.capabilities, task_types=["echo"]),
            concurrency={"task": 1},
        )
        await append_node(c.store, c.runner, ghost, started, heartbeat(ghost))
        scheduler = Scheduler(c.store, c.redis)
        answer = await c.client.post(
            "/api/v1/tasks", json={"task_type": "echo", "payload": {}}, headers=c.headers()
        )
        assert answer.status_code == 201, answer.text
        task_id = answer.json()["data"]["task_id"]

        async def assigned_to_ghost() -> bool:
            await scheduler.pass_once()  # once the `tasks` table shows the task
            state = await load_task(c.store, task_id)
            return state is not None and (state.status, state.device_id) == ("assigned", ghost)

        await until(assigned_to_ghost)

        await _post(c, ghost, "drain")
        await _shows(c, ghost, "online", "draining")

        async def taken_back() -> bool:
            await scheduler.pass_once()
            events = await c.store.read_stream(task.stream_id(task_id))
            return any(
                isinstance(e.data, task.TaskUnassigned)
                and e.data.reason == f"Node {ghost} was drained before starting the task"
                for e in events
            )

        await until(taken_back)

        async def placed_nowhere_saying_why() -> str | None:
            await scheduler.pass_once()  # once the `tasks` table shows it queued again
            waiting = await load_task(c.store, task_id)
            assert waiting is not None and waiting.status == "queued", waiting
            return waiting.reason if waiting.reason and "is draining" in waiting.reason else None

        assert f"{ghost} is draining" in await until(placed_nowhere_saying_why)


def test_drain_is_decided_on_the_nodes_own_facts() -> None:
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    started = node.NodeStarted(
        node_id="n", hostname="h", ip="127.0.0.1", role="worker", tags=[],
        capabilities=Capabilities(cpu_count=1, memory_total_gb=1.0, storage_total_gb=1.0),
        concurrency={},
    )  # fmt: skip
    state = node.fold([(started, at, 1)])
    assert state is not None
    [drained_event] = node.drain(state)
    drained = node.evolve(state, drained_event, at, 2)
    assert drained is not None and drained.draining_since == at
    assert node.drain(drained) == []  # twice is once
    assert node.undrain(state) == []  # nothing to undrain
    [undrained_event] = node.undrain(drained)
    undrained = node.evolve(drained, undrained_event, at, 3)
    assert undrained is not None and undrained.draining_since is None
    removed = node.evolve(state, node.NodeRemoved(node_id="n"), at, 2)
    assert removed is not None
    with pytest.raises(NotFound):
        node.drain(removed)
