"""`/api/v1/devices`: Spool's worker nodes, listed, filtered, paged, inspected and removed."""

from __future__ import annotations

import httpx
import msgspec

from spool.adapters.event_store import EventStore
from spool.domain import node
from spool.domain.node_health import UnitFailure, quarantine_reason
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import (
    append_node,
    assert_envelope,
    assert_error,
    heartbeat,
    node_started,
    register,
    unique,
)

DEVICE_FIELDS = {
    "device_id",
    "role",
    "platform",
    "status",
    "state",
    "state_reason",
    "ip_address",
    "last_heartbeat",
    "uptime",
    "capabilities",
    "tags",
}


async def _three(store: EventStore, runner: ProjectionRunner) -> tuple[str, str, str, str]:
    """A tag shared by three devices: an online GPU compute box, a windows storage box, and a
    compute box that stopped."""
    tag = unique("fleet")
    a, b, c = unique("gpu-box"), unique("store-box"), unique("old-box")
    await register(store, runner, a, role="compute", tags=(tag, "gpu-capable"), has_gpu=True)
    await register(store, runner, b, role="storage", platform="windows", tags=(tag,))
    await register(store, runner, c, role="compute", tags=(tag,))
    await append_node(store, runner, c, node.NodeStopped(node_id=c))
    return tag, a, b, c


async def _ids(client: httpx.AsyncClient, key: str, **params: object) -> list[str]:
    answer = await client.get("/api/v1/devices", params=params, headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text
    return sorted(d["device_id"] for d in answer.json()["data"])


async def test_the_device_list_has_the_seed_shape(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    tag, a, _, _ = await _three(store, runner)
    answer = await client.get(
        "/api/v1/devices", params={"tags": tag}, headers={"X-API-Key": admin_key}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert_envelope(body)
    assert body["pagination"] == {
        "page": 1,
        "page_size": 20,
        "total_items": 3,
        "total_pages": 1,
        "has_next": False,
        "has_previous": False,
    }
    gpu = next(d for d in body["data"] if d["device_id"] == a)
    assert set(gpu) == DEVICE_FIELDS
    assert gpu["role"] == "compute"
    assert gpu["platform"] == "linux"
    assert gpu["status"] == "online"
    assert gpu["state"] == "active"
    assert gpu["ip_address"] == "192.168.1.101"
    assert gpu["last_heartbeat"].endswith("Z")
    assert gpu["uptime"].endswith(("s", "m"))
    assert gpu["capabilities"] == {
        "cpu_count": 8,
        "memory_total_gb": 16.0,
        "storage_total_gb": 500.0,
        "has_gpu": True,
    }
    assert sorted(gpu["tags"]) == sorted([tag, "gpu-capable"])


async def test_devices_filter_by_status_role_platform_and_tags(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    tag, a, b, c = await _three(store, runner)
    assert await _ids(client, admin_key, tags=tag, status="online") == sorted([a, b])
    assert await _ids(client, admin_key, tags=tag, status="offline") == [c]
    assert await _ids(client, admin_key, tags=tag, status="all") == sorted([a, b, c])
    assert await _ids(client, admin_key, tags=tag, role="compute") == sorted([a, c])
    assert await _ids(client, admin_key, tags=tag, platform="windows") == [b]
    # A device must have every tag asked for: as a comma list, or repeated.
    assert await _ids(client, admin_key, tags=f"{tag},gpu-capable") == [a]
    assert await _ids(client, admin_key, tags=[tag, "gpu-capable"]) == [a]
    assert await _ids(client, admin_key, tags=[tag, unique("nobody")]) == []


async def test_devices_are_paged(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    tag, *devices = await _three(store, runner)
    headers = {"Authorization": f"Bearer {admin_key}"}
    first = (
        await client.get("/api/v1/devices", params={"tags": tag, "page_size": 2}, headers=headers)
    ).json()
    second = (
        await client.get(
            "/api/v1/devices", params={"tags": tag, "page_size": 2, "page": 2}, headers=headers
        )
    ).json()
    assert len(first["data"]) == 2 and len(second["data"]) == 1
    assert first["pagination"]["has_next"] and not first["pagination"]["has_previous"]
    assert second["pagination"]["has_previous"] and not second["pagination"]["has_next"]
    assert second["pagination"]["total_pages"] == 2
    seen = [d["device_id"] for d in first["data"] + second["data"]]
    assert sorted(seen) == sorted(devices)


async def test_bad_list_parameters_name_the_field(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    headers = {"X-API-Key": admin_key}
    too_big = await client.get("/api/v1/devices", params={"page_size": 101}, headers=headers)
    assert too_big.status_code == 400
    assert_error(too_big.json(), "VALIDATION_ERROR")
    assert too_big.json()["error_details"]["field"] == "page_size"
    status = await client.get("/api/v1/devices", params={"status": "asleep"}, headers=headers)
    assert status.status_code == 400
    assert status.json()["error_details"]["field"] == "status"


async def test_the_device_api_needs_a_key(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/devices")
    assert answer.status_code == 401
    assert_error(answer.json(), "UNAUTHORIZED")
    wrong = await client.get("/api/v1/devices", headers={"X-API-Key": "sk_not_a_key"})
    assert wrong.status_code == 401


async def test_an_unknown_device_is_device_not_found(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    for path in ("/api/v1/devices/nope", "/api/v1/devices/nope/status"):
        answer = await client.get(path, headers={"X-API-Key": admin_key})
        assert answer.status_code == 404
        assert_error(answer.json(), "DEVICE_NOT_FOUND")


async def test_one_device_and_its_status(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    device_id = unique("laptop")
    await append_node(
        store,
        runner,
        device_id,
        node_started(device_id, tags=("development",)),
        heartbeat(device_id, cpu=42.0, muxing=1),
    )
    headers = {"X-API-Key": admin_key}
    one = (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).json()
    assert_envelope(one)
    assert one["data"]["device_id"] == device_id
    assert one["data"]["hostname"] == f"host-{device_id}"
    assert one["data"]["status"] == "online"
    status = (await client.get(f"/api/v1/devices/{device_id}/status", headers=headers)).json()
    data = status["data"]
    assert data["status"] == "online"
    assert data["health"] == "healthy"
    assert 0 <= data["heartbeat_age_seconds"] < 30
    assert data["current"] == {
        "downloading": 1,
        "muxing": 1,
        "uploading": 0,
        "running": ["job-x:1:download:1"],
    }
    assert data["usage"]["cpu_percent"] == 42.0
    assert data["usage"]["memory_percent"] == 25.0
    assert data["usage"]["disk_percent"] == 20.0


async def test_the_summary_counts_devices(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    headers = {"X-API-Key": admin_key}
    before = (await client.get("/api/v1/devices/summary", headers=headers)).json()["data"]
    await _three(store, runner)
    after = (await client.get("/api/v1/devices/summary", headers=headers)).json()["data"]
    assert after["total_devices"] == before["total_devices"] + 3
    assert after["online_devices"] == before["online_devices"] + 2
    assert after["by_status"]["offline"] == before["by_status"]["offline"] + 1
    assert after["by_role"]["storage"] == before["by_role"].get("storage", 0) + 1
    assert after["by_platform"]["windows"] == before["by_platform"].get("windows", 0) + 1


async def test_removing_a_device_needs_an_admin_key(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    api_key: str,
    admin_key: str,
) -> None:
    device_id = unique("keep-me")
    await register(store, runner, device_id)
    answer = await client.delete(f"/api/v1/devices/{device_id}", headers={"X-API-Key": api_key})
    assert answer.status_code == 403
    assert_error(answer.json(), "UNAUTHORIZED")
    still = await client.get(f"/api/v1/devices/{device_id}", headers={"X-API-Key": admin_key})
    assert still.status_code == 200


async def test_a_removed_device_stays_gone_until_it_registers_again(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    admin_key: str,
) -> None:
    device_id = unique("retired")
    await register(store, runner, device_id)
    removed = await client.delete(f"/api/v1/devices/{device_id}", headers={"X-API-Key": admin_key})
    assert removed.status_code == 200, removed.text
    assert removed.json()["data"]["removed"] is True
    events = await store.read_stream(node.stream_id(device_id))
    assert events[-1].type == "NodeRemoved"  # appended, nothing rewritten

    await runner.settle("nodes")
    headers = {"X-API-Key": admin_key}
    assert (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).status_code == 404
    assert device_id not in await _ids(client, admin_key)
    again = await client.delete(f"/api/v1/devices/{device_id}", headers={"X-API-Key": admin_key})
    assert again.status_code == 404

    # Its heartbeats alone do not bring it back...
    await append_node(store, runner, device_id, heartbeat(device_id))
    assert (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).status_code == 404
    # ...registering does.
    await append_node(store, runner, device_id, node_started(device_id), heartbeat(device_id))
    back = await client.get(f"/api/v1/devices/{device_id}", headers=headers)
    assert back.status_code == 200
    assert back.json()["data"]["status"] == "online"


async def _state(client: httpx.AsyncClient, key: str, device_id: str) -> str:
    answer = await client.get(f"/api/v1/devices/{device_id}", headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text
    state: str = answer.json()["data"]["state"]
    return state


async def test_a_drained_device_shows_draining_until_it_is_undrained(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    device_id = unique("maintained")
    await register(store, runner, device_id)
    headers = {"X-API-Key": admin_key, "x-request-id": unique("drain-request")}
    drained = await client.post(f"/api/v1/devices/{device_id}/drain", headers=headers)
    assert drained.status_code == 200, drained.text
    assert_envelope(drained.json())
    data = drained.json()["data"]
    assert data["device_id"] == device_id and data["state"] == "draining"
    assert data["draining_since"].endswith("Z")

    # Twice is once: nothing more is recorded, and the drain keeps its start.
    again = await client.post(f"/api/v1/devices/{device_id}/drain", headers=headers)
    assert again.status_code == 200 and again.json()["data"] == data
    events = await store.read_stream(node.stream_id(device_id))
    drains = [e for e in events if isinstance(e.data, node.NodeDrainRequested)]
    assert len(drains) == 1
    # Who asked: the admin's key, on the request that asked.
    assert drains[0].metadata.actor is not None and drains[0].metadata.actor.startswith("key:")
    assert drains[0].metadata.request_id == headers["x-request-id"]

    await runner.settle("nodes")
    assert await _state(client, admin_key, device_id) == "draining"
    listed = await client.get("/api/v1/devices", params={"status": "online"}, headers=headers)
    shown = next(d for d in listed.json()["data"] if d["device_id"] == device_id)
    assert shown["state"] == "draining" and shown["status"] == "online"
    status = await client.get(f"/api/v1/devices/{device_id}/status", headers=headers)
    assert status.json()["data"]["state"] == "draining"
    # A restart keeps the drain: only an undrain ends it.
    await append_node(store, runner, device_id, node_started(device_id), heartbeat(device_id))
    assert await _state(client, admin_key, device_id) == "draining"

    undrained = await client.post(f"/api/v1/devices/{device_id}/undrain", headers=headers)
    assert undrained.status_code == 200, undrained.text
    assert undrained.json()["data"] == {
        "device_id": device_id,
        "state": "active",
        "draining_since": None,
        "quarantined_since": None,
    }
    assert (await client.post(f"/api/v1/devices/{device_id}/undrain", headers=headers)).json()[
        "data"
    ]["state"] == "active"
    types = [e.type for e in await store.read_stream(node.stream_id(device_id))]
    assert types.count("NodeUndrained") == 1
    await runner.settle("nodes")
    assert await _state(client, admin_key, device_id) == "active"


async def test_draining_an_unknown_or_removed_device_is_device_not_found(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    headers = {"X-API-Key": admin_key}
    ghost = unique("never-was")
    for action in ("drain", "undrain", "release"):
        answer = await client.post(f"/api/v1/devices/{ghost}/{action}", headers=headers)
        assert answer.status_code == 404, answer.text
        assert_error(answer.json(), "DEVICE_NOT_FOUND")
    assert await store.read_stream(node.stream_id(ghost)) == []  # a refusal records nothing

    retired = unique("retired")
    await register(store, runner, retired)
    await client.delete(f"/api/v1/devices/{retired}", headers=headers)
    for action in ("drain", "release"):
        answer = await client.post(f"/api/v1/devices/{retired}/{action}", headers=headers)
        assert answer.status_code == 404
        assert_error(answer.json(), "DEVICE_NOT_FOUND")


async def test_draining_a_device_needs_an_admin_key(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    api_key: str,
    admin_key: str,
) -> None:
    device_id = unique("busy")
    await register(store, runner, device_id)
    await _quarantine(store, runner, device_id)
    for action in ("drain", "undrain", "release"):
        answer = await client.post(
            f"/api/v1/devices/{device_id}/{action}", headers={"X-API-Key": api_key}
        )
        assert answer.status_code == 403
        assert_error(answer.json(), "UNAUTHORIZED")
    for action in ("drain", "release"):
        nobody = await client.post(f"/api/v1/devices/{device_id}/{action}")
        assert nobody.status_code == 401
    types = [e.type for e in await store.read_stream(node.stream_id(device_id))]
    assert "NodeDrainRequested" not in types and "NodeReleased" not in types
    assert await _state(client, admin_key, device_id) == "quarantined"


async def _quarantine(store: EventStore, runner: ProjectionRunner, device_id: str) -> None:
    """The node health reactor's decision, as it records it (reactors/node_health.py)."""
    failures = [UnitFailure(unit=f"job-{i}:1:mux:1", reason="Internal error") for i in range(5)]
    reason = quarantine_reason(failures)
    quarantined = node.NodeQuarantined(node_id=device_id, reason=reason, failures=failures)
    await append_node(store, runner, device_id, quarantined)


async def test_a_quarantined_device_shows_why_until_an_admin_releases_it(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    headers = {"X-API-Key": admin_key}
    before = (await client.get("/api/v1/devices/summary", headers=headers)).json()["data"]
    device_id = unique("failing")
    await register(store, runner, device_id)
    await _quarantine(store, runner, device_id)
    after = (await client.get("/api/v1/devices/summary", headers=headers)).json()["data"]
    assert after["by_state"]["quarantined"] == before["by_state"]["quarantined"] + 1
    shown = (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).json()["data"]
    assert shown["state"] == "quarantined"
    assert shown["state_reason"].startswith("quarantined: 5 units failed in a row")
    status = await client.get(f"/api/v1/devices/{device_id}/status", headers=headers)
    assert status.json()["data"]["state"] == "quarantined"
    # A drain on top shows the quarantine first: it is what keeps the node idle after undrain.
    await client.post(f"/api/v1/devices/{device_id}/drain", headers=headers)
    await runner.settle("nodes")
    reason = (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).json()["data"][
        "state_reason"
    ]
    assert reason.startswith("quarantined: ") and "; draining: " in reason

    released = await client.post(f"/api/v1/devices/{device_id}/release", headers=headers)
    assert released.status_code == 200, released.text
    assert released.json()["data"]["state"] == "draining"
    assert released.json()["data"]["quarantined_since"] is None
    again = await client.post(f"/api/v1/devices/{device_id}/release", headers=headers)
    assert again.json()["data"] == released.json()["data"]
    events = await store.read_stream(node.stream_id(device_id))
    releases = [e.data for e in events if isinstance(e.data, node.NodeReleased)]
    assert [r.by for r in releases] == ["admin"]  # twice is once
    await client.post(f"/api/v1/devices/{device_id}/undrain", headers=headers)
    await runner.settle("nodes")
    assert await _state(client, admin_key, device_id) == "active"


async def test_a_device_below_its_disk_floor_shows_disk_floor_with_the_reason(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, admin_key: str
) -> None:
    device_id = unique("full-disk")
    await register(store, runner, device_id)
    why = "free disk 1.0 GB is below the floor of 25.0 GB"
    low = msgspec.structs.replace(heartbeat(device_id), disk_floor=why)
    await append_node(store, runner, device_id, low)
    headers = {"X-API-Key": admin_key}
    shown = (await client.get(f"/api/v1/devices/{device_id}", headers=headers)).json()["data"]
    assert (shown["state"], shown["state_reason"]) == ("disk_floor", f"disk floor: {why}")
    # The next heartbeat above the floor lifts it: nothing to release.
    await append_node(store, runner, device_id, heartbeat(device_id))
    assert await _state(client, admin_key, device_id) == "active"
