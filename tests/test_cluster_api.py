"""`/api/v1/cluster`: status (the seed's numbers), utilisation over time windows, config."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from spool.domain import node
from tests.cluster_api_helpers import (
    FreshApi,
    append_node,
    assert_envelope,
    assert_error,
    fresh_api,
    heartbeat,
    node_started,
)


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url, host="0.0.0.0", port=8080) as a:
        yield a


async def _two_nodes_and_a_stopped_one(api: FreshApi) -> None:
    await append_node(
        api.store,
        api.runner,
        "laptop-001",
        node_started(
            "laptop-001", role="compute", cpu_count=8, memory_total_gb=16, storage_total_gb=500
        ),
        heartbeat("laptop-001", cpu=20.0),
    )
    await append_node(
        api.store,
        api.runner,
        "phone-001",
        node_started(
            "phone-001",
            role="mobile",
            platform="android",
            cpu_count=4,
            memory_total_gb=6,
            storage_total_gb=128,
        ),
        heartbeat("phone-001", cpu=40.0, muxing=1),
    )
    await append_node(
        api.store,
        api.runner,
        "old-001",
        node_started("old-001", role="storage", platform="windows", cpu_count=2),
        node.NodeStopped(node_id="old-001"),
    )


async def test_cluster_status_has_the_seed_numbers(api: FreshApi) -> None:
    await _two_nodes_and_a_stopped_one(api)
    answer = await api.client.get("/api/v1/cluster/status", headers=api.admin())
    assert answer.status_code == 200
    body = answer.json()
    assert_envelope(body)
    assert body["data"]["cluster_stats"] == {
        "total_devices": 3,
        "online_devices": 2,
        "offline_devices": 1,
        "health_percentage": 66.7,
        # What the online devices bring.
        "total_resources": {"cpu_cores": 12, "memory_gb": 22.0, "storage_gb": 628.0},
        "by_role": {"compute": 1, "mobile": 1, "storage": 1},
        "by_platform": {"android": 1, "linux": 1, "windows": 1},
    }
    server = body["data"]["server_info"]
    assert server["host"] == "0.0.0.0"
    assert server["port"] == 8080
    assert server["version"]
    assert server["uptime"]


async def test_an_empty_cluster_is_all_zeros(api: FreshApi) -> None:
    stats = (await api.client.get("/api/v1/cluster/status", headers=api.admin())).json()["data"]
    assert stats["cluster_stats"]["total_devices"] == 0
    assert stats["cluster_stats"]["health_percentage"] == 0.0


async def test_cluster_metrics_show_use_over_time_windows(api: FreshApi) -> None:
    await _two_nodes_and_a_stopped_one(api)
    await api.runner.settle()
    answer = await api.client.get("/api/v1/cluster/metrics", headers=api.admin())
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["current"]["online_devices"] == 2
    assert data["current"]["muxing"] == 1
    assert data["current"]["busy_slots"] == 3  # each heartbeat: one download, and one mux
    assert data["current"]["total_slots"] == 10
    assert data["current"]["utilisation_percent"] == 30.0
    assert set(data["windows"]) == {"last_1m", "last_5m", "last_15m"}
    for window in data["windows"].values():
        assert window["heartbeats"] == 2
        assert window["avg_cpu_percent"] == 30.0
        assert window["avg_memory_percent"] == 25.0
        assert window["jobs_completed"] == 0
        assert window["tasks_completed"] == 0


CLUSTER_READS = (
    "/api/v1/devices",
    "/api/v1/devices/summary",
    "/api/v1/devices/laptop-001",
    "/api/v1/devices/laptop-001/status",
    "/api/v1/cluster/status",
    "/api/v1/cluster/metrics",
    "/api/v1/cluster/config",
)


async def test_every_cluster_wide_read_needs_an_admin_key(api: FreshApi) -> None:
    await _two_nodes_and_a_stopped_one(api)
    for path in CLUSTER_READS:
        user = await api.client.get(path, headers=api.user())
        assert user.status_code == 403, (path, user.text)
        assert_error(user.json(), "UNAUTHORIZED")
        assert "admin API key" in user.json()["message"]
        # Nothing of the cluster in the refusal: no host name, no device.
        assert "laptop" not in user.text
        nobody = await api.client.get(path)
        assert nobody.status_code == 401, (path, nobody.text)
        assert_error(nobody.json(), "UNAUTHORIZED")
        admin = await api.client.get(path, headers=api.admin())
        assert admin.status_code == 200, (path, admin.text)


async def test_cluster_config_needs_an_admin_key(api: FreshApi) -> None:
    assert (await api.client.get("/api/v1/cluster/config", headers=api.user())).status_code == 403
    answer = await api.client.get("/api/v1/cluster/config", headers=api.admin())
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert data["heartbeat"] == {"interval": 1, "timeout": 30, "max_missed": 3}
    assert data["settings"]["rate_limit_per_minute"] == 100_000
    assert "secret_key" not in str(data)
