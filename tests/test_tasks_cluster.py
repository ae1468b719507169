"""Scheduled tasks on a real cluster: `spool worker` processes with different tags and types,
the scheduler placing tasks on the right one, a node killed mid-task, and the seed's client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from spool.adapters.task_store import load_task
from spool.api.app import create_app
from spool.domain import task
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.processes import SpoolProcesses

BASE = "/api/v1/tasks"


# The seed's Python client, verbatim (hence unformatted).
# fmt: off
import requests  # noqa: E402


class RetireClusterAPI:
    def __init__(self, base_url, api_key=None):
        self.base_url = base_url
        self.headers = {'Content-Type': 'application/json'}
        if api_key:
            self.headers['X-API-Key'] = api_key

    def get_cluster_status(self):
        response = requests.get(
            f"{self.base_url}/cluster/status",
            headers=self.headers
        )
        return response.json()

    def submit_task(self, task_type, payload, **kwargs):
        data = {
            'task_type': task_type,
            'payload': payload,
            **kwargs
        }
        response = requests.post(
            f"{self.base_url}/tasks",
            json=data,
            headers=self.headers
        )
        return response.json()
# fmt: on


# -- harness ---------------------------------------------------------------------------------


def start_scheduler(cluster: Cluster, **options: Any) -> None:
    """Run the scheduler beside the cluster's other reactors (stopped with them)."""
    cluster.start_scheduler(**options)


async def nodes_running(cluster: Cluster, *node_ids: str, seconds: float = 60) -> None:
    """Wait until every node advertises its task types as an online node."""
    deadline = time.monotonic() + seconds
    while True:
        rows = await cluster.pool.fetch(
            "SELECT node_id FROM nodes WHERE stopped_at IS NULL "
            "AND last_heartbeat_at > now() - interval '5 seconds' "
            "AND capabilities ? 'task_types'"
        )
        if set(node_ids) <= {r[0] for r in rows}:
            return
        assert time.monotonic() < deadline, f"nodes never came up: {rows}"
        await asyncio.sleep(0.2)


async def submit(cluster: Cluster, key: str | None = None, **body: Any) -> str:
    """Submit a task with the cluster's user key (or `key`); its id."""
    body.setdefault("payload", {})
    answer = await cluster.client.post(BASE, json=body, headers={"X-API-Key": key or cluster.key})
    assert answer.status_code == 201, answer.text
    task_id: str = answer.json()["data"]["task_id"]
    return task_id


async def settled(
    cluster: Cluster, task_id: str, *statuses: str, seconds: float = 60
) -> task.TaskState:
    """Poll the task's stream until its status is one of `statuses`."""
    deadline = time.monotonic() + seconds
    while True:
        state = await load_task(cluster.store, task_id)
        assert state is not None
        if state.status in statuses:
            return state
        assert time.monotonic() < deadline, f"task stuck: {state}"
        await asyncio.sleep(0.1)


async def history(cluster: Cluster, task_id: str) -> list[str]:
    return [e.type for e in await cluster.store.read_stream(task.stream_id(task_id))]


@asynccontextmanager
async def served(cluster: Cluster) -> AsyncIterator[str]:
    """The cluster's API over a real loopback port (uvicorn), for clients outside the loop."""
    app = create_app(
        pool=cluster.pool, store=cluster.store, settings=cluster.settings, storage=cluster.storage
    )
    async with serve_on_loopback(app) as port:
        yield f"http://127.0.0.1:{port}/api/v1"


# -- the cluster -----------------------------------------------------------------------------


async def test_tasks_with_requirements_land_on_the_right_node(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    async with start_cluster(with_node=False) as cluster:
        start_scheduler(cluster)
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        procs.worker(
            "gpu-box", "--role", "compute", "--tag", "gpu-capable", SPOOL_ALLOW_PYTHON_EVAL="1"
        )
        procs.worker("plain-box", "--role", "worker", "--tag", "edge")
        try:
            await nodes_running(cluster, "gpu-box", "plain-box")

            tagged = [
                await submit(
                    cluster, task_type="echo", requirements={"required_tags": ["gpu-capable"]}
                )
                for _ in range(3)
            ]
            by_role = [
                await submit(cluster, task_type="echo", requirements={"required_role": "worker"})
                for _ in range(3)
            ]
            evaluated = await submit(  # code runs only for an admin key or a grant
                cluster, cluster.admin_key, task_type="python_eval", payload={"expression": "6 * 7"}
            )
            impossible = await submit(
                cluster, task_type="echo", requirements={"min_memory_gb": 100_000}
            )

            for task_id in tagged:
                done = await settled(cluster, task_id, "success", "failed", "timeout")
                assert (done.status, done.device_id) == ("success", "gpu-box"), procs.logs()
            for task_id in by_role:
                done = await settled(cluster, task_id, "success", "failed", "timeout")
                assert (done.status, done.device_id) == ("success", "plain-box")
            done = await settled(cluster, evaluated, "success", "failed")
            assert done.device_id == "gpu-box"  # the only node that opted in
            assert done.result_data == {"expression": "6 * 7", "result": 42}

            waiting = await settled(cluster, impossible, "queued")
            deadline = time.monotonic() + 10
            while waiting.reason is None or "plain-box" not in waiting.reason:
                assert time.monotonic() < deadline, waiting
                await asyncio.sleep(0.1)
                waiting = await settled(cluster, impossible, "queued")
            status = await cluster.client.get(
                f"{BASE}/{impossible}/status", headers={"X-API-Key": cluster.admin_key}
            )
            reason = status.json()["data"]["reason"]
            assert reason.startswith("No online node meets the requirements")
            assert "gpu-box has" in reason and "GB memory, needs 100000" in reason
            # The task's owner learns why it waits, not which nodes there are nor what they have.
            owner = {"X-API-Key": cluster.key}
            seen = [
                (await cluster.client.get(f"{BASE}/{impossible}/status", headers=owner)).json(),
                (await cluster.client.get(f"{BASE}/{impossible}", headers=owner)).json(),
            ]
            listed = (await cluster.client.get(BASE, headers=owner)).json()["data"]
            assert [v["data"]["reason"] for v in seen] == [
                "No online node meets the requirements"
            ] * 2
            assert [t["reason"] for t in listed if t["task_id"] == impossible] == [
                "No online node meets the requirements"
            ]
            assert "plain-box" not in str(seen) and "gpu-box" not in str(seen)

            types = await cluster.client.get(
                f"{BASE}/types", headers={"X-API-Key": cluster.admin_key}
            )
            data = types.json()["data"]
            assert data["by_type"]["python_eval"] == ["gpu-box"]
            assert data["by_type"]["echo"] == ["gpu-box", "plain-box"]
            assert "command" not in data["task_types"]
            # A user is told which types it may submit, not which nodes there are.
            mine = await cluster.client.get(f"{BASE}/types", headers={"X-API-Key": cluster.key})
            assert mine.json()["data"] == {
                "task_types": data["task_types"],
                "known_task_types": data["known_task_types"],
            }

            # The seed's own client, over a real port, from another thread.
            async with served(cluster) as base_url:
                api = RetireClusterAPI(base_url, api_key=cluster.key)
                answer = await asyncio.to_thread(api.submit_task, "echo", {"message": "Hello"})
                assert answer["status"] == "success", answer
                task_id = answer["data"]["task_id"]
                assert answer["data"]["task"]["status"] == "queued"
                await settled(cluster, task_id, "success")
                result = await asyncio.to_thread(
                    requests.get, f"{base_url}/tasks/{task_id}/result", headers=api.headers
                )
                body = result.json()["data"]
                assert body["result_data"] == {"echo": {"message": "Hello"}}
                assert body["worker_device_id"] in ("gpu-box", "plain-box")
                assert body["execution_time_seconds"] >= 0
        finally:
            procs.stop_all()


async def test_a_node_killed_mid_task_times_out_and_is_retried_per_its_settings(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    async with start_cluster(with_node=False) as cluster:
        start_scheduler(cluster, online_seconds=3.0)
        procs = SpoolProcesses.like(cluster.settings, tmp_path)
        procs.worker("doomed")
        try:
            await nodes_running(cluster, "doomed")
            retried = await submit(
                cluster,
                task_type="sleep",
                payload={"seconds": 1},
                requirements={"timeout_seconds": 4, "max_retries": 1},
                metadata={"note": "first attempt dies with its node"},
            )
            given_up = await submit(
                cluster,
                task_type="sleep",
                payload={"seconds": 1},
                requirements={"timeout_seconds": 4, "max_retries": 0},
            )
            for task_id in (retried, given_up):
                assert (await settled(cluster, task_id, "running")).device_id == "doomed"

            procs.kill("doomed")
            procs.worker("survivor")

            ended = await settled(cluster, given_up, "timeout", "success", "failed", seconds=60)
            assert ended.status == "timeout"
            assert ended.error == "Exceeded its timeout of 4 s"

            done = await settled(cluster, retried, "success", "timeout", "failed", seconds=90)
            assert (done.status, done.device_id, done.retry_count) == ("success", "survivor", 1)
            events = await history(cluster, retried)
            assert events.count("TaskTimedOut") == 1 and events.count("TaskSucceeded") == 1
            assert "TaskRetried" in events
        finally:
            procs.stop_all()
