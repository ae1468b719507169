"""`/api/v1/tasks`: submit, read, list, cancel, retry, statistics and types, in the seed's shape."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from spool.adapters.event_store import EventStore
from spool.domain import task
from spool.domain.events import NewEvent
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner

BASE = "/api/v1/tasks"


@pytest.fixture
async def admin_key(store: EventStore, runner: ProjectionRunner) -> str:
    issued = await issue(store, name=f"admin-{uuid.uuid4().hex[:6]}", admin=True)
    await runner.wait_until("api_keys", issued.at)
    return issued.key


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def submit(client: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    body.setdefault("task_type", "echo")
    body.setdefault("payload", {"message": "Hello World"})
    answer = await client.post(BASE, json=body, headers=h(key))
    assert answer.status_code == 201, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


async def test_submitting_a_task_answers_the_seeds_shape(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await client.post(
        BASE,
        json={
            "task_type": "echo",
            "payload": {"message": "Hello World"},
            "priority": "normal",
            "requirements": {
                "min_cpu_cores": 2,
                "min_memory_gb": 4,
                "required_platform": "linux",
                "timeout_seconds": 300,
            },
            "metadata": {"created_by": "api_user"},
        },
        headers=h(api_key),
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["status"] == "success" and body["request_id"] and body["timestamp"]
    data = body["data"]
    assert set(data) == {"task_id", "task"}
    assert data["task"] == {
        "task_id": data["task_id"],
        "task_type": "echo",
        "status": "queued",
        "priority": "normal",
        "created_at": data["task"]["created_at"],
    }
    assert data["task"]["created_at"].endswith("Z")

    one = (await client.get(f"{BASE}/{data['task_id']}", headers=h(api_key))).json()["data"]
    assert one["payload"] == {"message": "Hello World"}
    assert one["metadata"] == {"created_by": "api_user"}
    assert one["requirements"] == {
        "min_cpu_cores": 2,
        "min_memory_gb": 4.0,
        "min_storage_gb": 0.0,
        "required_platform": "linux",
        "required_role": None,
        "required_tags": [],
        "gpu_required": False,
        "internet_required": False,
        "timeout_seconds": 300,
        "max_retries": 0,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "task_type"),
        ({"task_type": "launch_missiles"}, "task_type"),
        ({"task_type": "echo", "priority": "asap"}, "priority"),
        (
            {"task_type": "echo", "requirements": {"min_cpu_cores": "two"}},
            "requirements.min_cpu_cores",
        ),
        ({"task_type": "echo", "requirements": {"min_cpu": 2}}, "requirements.min_cpu"),
        (
            {"task_type": "echo", "requirements": {"timeout_seconds": 0}},
            "requirements.timeout_seconds",
        ),
        ({"task_type": "echo", "requirements": {"max_retries": -1}}, "requirements.max_retries"),
        ({"task_type": "echo", "payload": [1, 2]}, "payload"),
    ],
)
async def test_invalid_input_is_a_validation_error_naming_the_field(
    client: httpx.AsyncClient, api_key: str, body: dict[str, Any], field: str
) -> None:
    answer = await client.post(BASE, json=body, headers=h(api_key))
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["status"] == "error" and error["error_code"] == "VALIDATION_ERROR"
    assert error["error_details"]["field"] == field, error


async def test_a_request_without_a_key_is_unauthorized(client: httpx.AsyncClient) -> None:
    answer = await client.get(BASE)
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "UNAUTHORIZED"


async def test_unknown_and_foreign_tasks_are_not_found(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    mine = await submit(client, api_key)
    for path in ("", "/status", "/result"):
        foreign = await client.get(f"{BASE}/{mine['task_id']}{path}", headers=h(other_api_key))
        assert foreign.status_code == 404
        assert foreign.json()["error_code"] == "TASK_NOT_FOUND"
    for bad in (str(uuid.uuid4()), "not-a-uuid"):
        answer = await client.get(f"{BASE}/{bad}", headers=h(api_key))
        assert answer.status_code == 404 and answer.json()["error_code"] == "TASK_NOT_FOUND"


async def test_the_list_is_newest_first_filtered_and_paginated(
    client: httpx.AsyncClient, runner: ProjectionRunner, store: EventStore
) -> None:
    issued = await issue(store, name="lister", admin=False)
    await runner.wait_until("api_keys", issued.at)
    key = issued.key
    ids = [
        (await submit(client, key, priority=p))["task_id"]
        for p in ("low", "high", "high", "low", "normal")
    ]
    await runner.settle("tasks")

    first = (await client.get(BASE, params={"page_size": 2}, headers=h(key))).json()
    assert [t["task_id"] for t in first["data"]] == ids[::-1][:2]
    assert first["pagination"] == {
        "page": 1,
        "page_size": 2,
        "total_items": 5,
        "total_pages": 3,
        "has_next": True,
        "has_previous": False,
    }
    last = (await client.get(BASE, params={"page": 3, "page_size": 2}, headers=h(key))).json()
    assert [t["task_id"] for t in last["data"]] == [ids[0]]
    assert last["pagination"]["has_previous"] and not last["pagination"]["has_next"]

    high = (await client.get(BASE, params={"priority": "high"}, headers=h(key))).json()
    assert sorted(t["task_id"] for t in high["data"]) == sorted(ids[1:3])
    queued = (await client.get(BASE, params={"status": "queued"}, headers=h(key))).json()
    assert queued["pagination"]["total_items"] == 5
    none = (await client.get(BASE, params={"task_type": "sleep"}, headers=h(key))).json()
    assert none["data"] == [] and none["pagination"]["total_items"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_size": 101}, "page_size"),
        ({"page": 0}, "page"),
        ({"status": "done"}, "status"),
        ({"priority": "asap"}, "priority"),
    ],
)
async def test_bad_list_parameters_are_validation_errors(
    client: httpx.AsyncClient, api_key: str, params: dict[str, Any], field: str
) -> None:
    answer = await client.get(BASE, params=params, headers=h(api_key))
    assert answer.status_code == 400
    assert answer.json()["error_details"]["field"] == field


async def test_another_account_never_sees_my_tasks_in_lists_but_an_admin_does(
    client: httpx.AsyncClient,
    api_key: str,
    other_api_key: str,
    admin_key: str,
    runner: ProjectionRunner,
) -> None:
    mine = await submit(client, api_key)
    await runner.settle("tasks")
    theirs = (await client.get(BASE, params={"page_size": 100}, headers=h(other_api_key))).json()
    assert mine["task_id"] not in [t["task_id"] for t in theirs["data"]]
    everyone = (await client.get(BASE, params={"page_size": 100}, headers=h(admin_key))).json()
    assert everyone["pagination"]["total_items"] >= 1
    seen = await client.get(f"{BASE}/{mine['task_id']}", headers=h(admin_key))
    assert seen.status_code == 200


async def test_an_owner_cancels_and_retries_its_own_task_and_another_account_gets_404(
    client: httpx.AsyncClient, api_key: str, other_api_key: str, admin_key: str
) -> None:
    created = await submit(client, api_key)
    task_id = created["task_id"]
    # Another account learns nothing, not even that the task exists.
    for action in ("cancel", "retry"):
        hidden = await client.post(f"{BASE}/{task_id}/{action}", headers=h(other_api_key))
        assert hidden.status_code == 404 and hidden.json()["error_code"] == "TASK_NOT_FOUND"

    cancelled = await client.post(
        f"{BASE}/{task_id}/cancel", headers={"Authorization": f"Bearer {api_key}"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["status"] == "cancelled"
    again = await client.post(f"{BASE}/{task_id}/cancel", headers=h(api_key))
    assert again.status_code == 400 and again.json()["error_code"] == "VALIDATION_ERROR"

    retried = await client.post(f"{BASE}/{task_id}/retry", headers=h(api_key))
    assert retried.status_code == 200 and retried.json()["data"]["status"] == "queued"
    not_failed = await client.post(f"{BASE}/{task_id}/retry", headers=h(api_key))
    assert not_failed.status_code == 400
    # An admin may act on any account's task.
    by_admin = await client.post(f"{BASE}/{task_id}/cancel", headers=h(admin_key))
    assert by_admin.status_code == 200 and by_admin.json()["data"]["status"] == "cancelled"
    missing = await client.post(f"{BASE}/{uuid.uuid4()}/cancel", headers=h(admin_key))
    assert missing.status_code == 404 and missing.json()["error_code"] == "TASK_NOT_FOUND"


async def _finish(
    store: EventStore, task_id: str, device: str, result: Any, seconds: float
) -> None:
    """Play a node's part: assign, start and succeed, as the scheduler and a node would."""
    for decide in (
        lambda s: task.assign(s, device),
        lambda s: task.start(s, device, s.attempt),
        lambda s: task.succeed(s, device, s.attempt, result, seconds),
    ):
        events = await store.read_stream(task.stream_id(task_id))
        state = task.fold([(e.data, e.recorded_at, e.version) for e in events])
        assert state is not None
        await store.append(
            task.stream_id(task_id), [NewEvent(e) for e in decide(state)], state.version
        )


async def test_status_and_result_of_a_finished_task(
    client: httpx.AsyncClient, api_key: str, store: EventStore
) -> None:
    created = await submit(client, api_key)
    task_id = created["task_id"]
    pending = (await client.get(f"{BASE}/{task_id}/result", headers=h(api_key))).json()
    assert pending["data"]["result_data"] is None and "no result yet" in pending["message"]

    await _finish(store, task_id, "laptop-001", {"echo": {"message": "Hello World"}}, 0.05)

    result = (await client.get(f"{BASE}/{task_id}/result", headers=h(api_key))).json()["data"]
    assert result == {
        "task_id": task_id,
        "status": "success",
        "result_data": {"echo": {"message": "Hello World"}},
        "execution_time_seconds": 0.05,
        "worker_device_id": "laptop-001",
        "started_at": result["started_at"],
        "completed_at": result["completed_at"],
        "error": None,
    }
    status = (await client.get(f"{BASE}/{task_id}/status", headers=h(api_key))).json()["data"]
    assert status["status"] == "success" and status["device_id"] == "laptop-001"
    assert status["progress"]["timeout_seconds"] == 300


async def test_statistics_count_by_status_and_time_by_type(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner
) -> None:
    issued = await issue(store, name="stats", admin=False)
    await runner.wait_until("api_keys", issued.at)
    key = issued.key
    for seconds in (1.0, 2.0, 3.0, 4.0):
        created = await submit(client, key)
        await _finish(store, created["task_id"], "n1", {}, seconds)
    await submit(client, key, task_type="sleep", payload={"seconds": 1})
    await runner.settle("tasks")

    stats = (await client.get(f"{BASE}/statistics", headers=h(key))).json()["data"]
    assert stats["total_tasks"] == 5
    assert stats["by_status"]["success"] == 4 and stats["by_status"]["queued"] == 1
    assert set(stats["by_status"]) == set(task.STATUSES)
    assert stats["success_rate"] == 100.0
    echo = stats["by_type"]["echo"]
    assert echo["mean_execution_time_seconds"] == 2.5
    assert echo["p95_execution_time_seconds"] == pytest.approx(3.85)
    assert stats["by_type"]["sleep"]["total"] == 1


async def test_types_are_the_union_over_online_nodes(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await client.get(f"{BASE}/types", headers=h(api_key))
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert set(data["known_task_types"]) == set(task.TASK_TYPES)
    assert isinstance(data["task_types"], list)
