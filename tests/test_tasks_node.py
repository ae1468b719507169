"""A node running tasks: its own timeout, a cancel that stops the work, refusals, replays."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spool.adapters.event_store import EventStore
from spool.adapters.queue import node_queue
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.task_store import load_task
from spool.domain import task
from spool.domain.account import hash_key
from spool.domain.events import NewEvent
from spool.reactors.scheduler import enqueue
from spool.reactors.tasks import TaskRunner
from tests.fixtures.cluster import Cluster, StartCluster
from tests.test_tasks_cluster import settled, start_scheduler, submit

BASE = "/api/v1/tasks"


async def test_the_node_enforces_a_tasks_timeout(start_cluster: StartCluster) -> None:
    async with start_cluster(task_concurrency=1) as cluster:
        start_scheduler(cluster)
        task_id = await submit(
            cluster, task_type="sleep", payload={"seconds": 30}, requirements={"timeout_seconds": 1}
        )
        done = await settled(cluster, task_id, "timeout", "success", "failed", seconds=30)
        assert done.status == "timeout" and done.device_id == cluster.settings.node_id
        answer = await cluster.client.get(
            f"{BASE}/{task_id}/result", headers={"X-API-Key": cluster.key}
        )
        assert answer.json()["data"]["error"] == "Exceeded its timeout of 1 s"


async def _echo_completes_soon(cluster: Cluster) -> None:
    follow_up = await submit(cluster, task_type="echo", payload={"n": 1})
    done = await settled(cluster, follow_up, "success", seconds=20)
    assert done.result_data == {"echo": {"n": 1}}


async def test_cancelling_a_running_task_stops_it_and_frees_its_slot(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster(task_concurrency=1) as cluster:
        start_scheduler(cluster)
        task_id = await submit(
            cluster, task_type="sleep", payload={"seconds": 60}, requirements={"max_retries": 3}
        )
        await settled(cluster, task_id, "running", seconds=30)
        started = time.monotonic()
        answer = await cluster.client.post(
            f"{BASE}/{task_id}/cancel", headers={"X-API-Key": cluster.admin_key}
        )
        assert answer.status_code == 200 and answer.json()["data"]["status"] == "cancelled"
        await _echo_completes_soon(cluster)  # the only slot came back long before 60 s
        assert time.monotonic() - started < 20
        state = await load_task(cluster.store, task_id)
        assert state is not None and state.status == "cancelled"


async def test_priorities_are_honoured_when_slots_are_scarce(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster(with_node=False) as cluster:
        low = [
            await submit(cluster, task_type="echo", priority="low", payload={"i": i})
            for i in range(3)
        ]
        urgent = await submit(cluster, cluster.admin_key, task_type="echo", priority="urgent")
        high = await submit(cluster, task_type="echo", priority="high")
        start_scheduler(cluster)
        cluster.start_node(task_concurrency=1)
        for task_id in [urgent, high, *low]:
            await settled(cluster, task_id, "success", seconds=30)
        started = {
            task_id: (await load_task(cluster.store, task_id)).started_at  # type: ignore[union-attr]
            for task_id in [urgent, high, *low]
        }
        order = sorted(started, key=lambda t: started[t])  # type: ignore[arg-type, return-value]
        assert order == [urgent, high, *low]


@dataclass
class Host:
    store: EventStore
    settings: Settings
    node_id: str
    guard: UrlGuard
    workroot: Path


async def _assigned(store: EventStore, task_type: str, device: str, **payload: Any) -> str:
    task_id = str(uuid.uuid4())
    events = task.submit(task_id=task_id, account_id="acc", task_type=task_type, payload=payload)
    await store.append(task.stream_id(task_id), [NewEvent(e) for e in events], 0)
    await store.append(
        task.stream_id(task_id), [NewEvent(task.TaskAssigned(device_id=device, attempt=1))], 1
    )
    return task_id


async def test_a_node_refuses_a_code_running_type_it_did_not_opt_into(
    store: EventStore, tmp_path: Path
) -> None:
    host = Host(store, Settings(data_dir=tmp_path), "cautious-node", UrlGuard(), tmp_path)
    task_id = await _assigned(store, "python_eval", "cautious-node", expression="1 + 1")
    assert await TaskRunner(host).run(task_id, 1) == "refused"
    state = await load_task(store, task_id)
    assert state is not None and state.status == "failed"
    assert state.error == "Node cautious-node does not run python_eval tasks"


async def test_an_attempt_runs_once_however_often_it_is_delivered(
    store: EventStore, tmp_path: Path, redis_url: str
) -> None:
    host = Host(store, Settings(data_dir=tmp_path), "n1", UrlGuard(), tmp_path)
    task_id = await _assigned(store, "echo", "n1", message="once")
    runner = TaskRunner(host)
    outcomes = await asyncio.gather(runner.run(task_id, 1), runner.run(task_id, 1))
    assert outcomes.count("success") == 1  # the other saw it taken
    assert await runner.run(task_id, 1) == "stale"
    events = [e.type for e in await store.read_stream(task.stream_id(task_id))]
    assert events.count("TaskStarted") == 1 and events.count("TaskSucceeded") == 1


async def test_a_replayed_assignment_enqueues_nothing_twice(redis_url: str) -> None:
    from spool.adapters.queue import connect

    redis = await connect(redis_url)
    try:
        node_id = f"replay-{uuid.uuid4().hex[:6]}"
        task_id = str(uuid.uuid4())
        assert await enqueue(redis, task_id, 1, node_id) is True
        assert await enqueue(redis, task_id, 1, node_id) is False
        assert await redis.zcard(node_queue(node_id)) == 1
        assert await enqueue(redis, task_id, 2, node_id) is True  # a new attempt is new work
    finally:
        await redis.delete(node_queue(node_id))
        await redis.aclose()


async def test_a_granted_accounts_command_sees_no_spool_variable_only_the_ones_it_may_name(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a node's environment typically holds: its settings, keys and storage credentials.
    monkeypatch.setenv("SPOOL_SECRET_KEY", "node-secret")
    monkeypatch.setenv("SPOOL_DATABASE_URL", "postgresql://spool:pw@db/spool")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    monkeypatch.setenv("TENANT_TOKEN", "for-the-tenant")
    async with start_cluster(allow_command_tasks=True) as cluster:
        admin = {"X-API-Key": cluster.admin_key}
        account_id = await cluster.pool.fetchval(
            "SELECT account_id FROM api_keys WHERE key_hash = $1", hash_key(cluster.key)
        )
        grants = f"/admin/accounts/{account_id}/grants"
        grant = {"task_types": ["command"], "env": ["TENANT_TOKEN"]}
        assert (await cluster.client.put(grants, json=grant, headers=admin)).status_code == 200
        # Submitted under the grant, then the grant is revoked before any node runs it.
        queued = await submit(
            cluster, task_type="command", payload={"command": "env", "env": ["TENANT_TOKEN"]}
        )
        assert (await cluster.client.delete(grants, headers=admin)).status_code == 200
        start_scheduler(cluster)
        refused = await settled(cluster, queued, "failed", "success", seconds=30)
        assert refused.status == "failed" and "revoked" in (refused.error or "")
        assert refused.result_data is None

        assert (await cluster.client.put(grants, json=grant, headers=admin)).status_code == 200
        named = await submit(
            cluster, task_type="command", payload={"command": "env", "env": ["TENANT_TOKEN"]}
        )
        plain = await submit(cluster, task_type="command", payload={"command": ["env"]})
        outputs = {}
        for task_id in (named, plain):
            done = await settled(cluster, task_id, "success", "failed", seconds=30)
            assert done.status == "success", done.error
            outputs[task_id] = done.result_data["stdout"].splitlines()
        for lines in outputs.values():
            assert not [v for v in lines if v.startswith(("SPOOL_", "AWS_"))], lines
            assert not [v for v in lines if "secret" in v or "pw@" in v], lines
            assert any(v.startswith("PATH=") for v in lines)
        assert "TENANT_TOKEN=for-the-tenant" in outputs[named]
        assert not [v for v in outputs[plain] if v.startswith("TENANT_TOKEN")]
