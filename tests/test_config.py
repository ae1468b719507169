"""`/api/v1/config`: the cluster's config, changed only by events, validated field by field."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from spool.domain import cluster_config
from tests.cluster_api_helpers import FreshApi, assert_envelope, assert_error, fresh_api, register

DEFAULTS = {
    "server": {"max_connections": 100},
    "heartbeat": {"interval": 1, "timeout": 30, "max_missed": 3},
}


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    """Config is cluster-wide: each test gets a cluster of its own."""
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


async def _config_events(api: FreshApi) -> list[str]:
    return [e.type for e in await api.store.read_stream(cluster_config.STREAM_ID)]


async def test_the_config_starts_at_the_defaults(api: FreshApi) -> None:
    answer = await api.client.get("/api/v1/config", headers=api.admin())
    assert answer.status_code == 200
    body = answer.json()
    assert_envelope(body)
    assert body["data"] == {**DEFAULTS, "version": 0}
    server = await api.client.get("/api/v1/config/server", headers=api.admin())
    assert server.json()["data"] == DEFAULTS["server"]
    heartbeat = await api.client.get("/api/v1/config/heartbeat", headers=api.admin())
    assert heartbeat.json()["data"] == DEFAULTS["heartbeat"]


async def test_config_needs_an_admin_key(api: FreshApi) -> None:
    for method, path in [
        ("GET", "/api/v1/config"),
        ("GET", "/api/v1/config/server"),
        ("PUT", "/api/v1/config/server"),
        ("GET", "/api/v1/config/heartbeat"),
        ("PUT", "/api/v1/config/heartbeat"),
        ("POST", "/api/v1/config/reset"),
    ]:
        body = {"max_connections": 5} if method == "PUT" else None
        anonymous = await api.client.request(method, path, json=body)
        assert anonymous.status_code == 401, path
        assert_error(anonymous.json(), "UNAUTHORIZED")
        user = await api.client.request(method, path, json=body, headers=api.user())
        assert user.status_code == 403, path
    assert await _config_events(api) == []


async def test_a_change_is_an_event_and_reads_back(api: FreshApi) -> None:
    answer = await api.client.put(
        "/api/v1/config/server", json={"max_connections": 250}, headers=api.admin()
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"max_connections": 250}
    heartbeat = await api.client.put(
        "/api/v1/config/heartbeat",
        json={"interval": 60, "timeout": 300, "max_missed": 3},
        headers=api.admin(),
    )
    assert heartbeat.json()["data"] == {"interval": 60, "timeout": 300, "max_missed": 3}
    # A partial change keeps the other fields.
    partial = await api.client.put(
        "/api/v1/config/heartbeat", json={"max_missed": 5}, headers=api.admin()
    )
    assert partial.json()["data"] == {"interval": 60, "timeout": 300, "max_missed": 5}

    assert await _config_events(api) == [
        "ServerConfigChanged",
        "HeartbeatConfigChanged",
        "HeartbeatConfigChanged",
    ]
    everything = (await api.client.get("/api/v1/config", headers=api.admin())).json()["data"]
    assert everything["server"] == {"max_connections": 250}
    assert everything["heartbeat"]["max_missed"] == 5
    assert everything["version"] == 3
    # The projection holds the same, for readers that need it fast.
    await api.runner.settle("cluster_config")
    rows = await api.pool.fetch("SELECT section, version FROM cluster_config ORDER BY section")
    assert [(r["section"], r["version"]) for r in rows] == [("heartbeat", 3), ("server", 1)]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/config/server", {"max_connections": 0}, "max_connections"),
        ("/api/v1/config/server", {"max_connections": "many"}, "max_connections"),
        ("/api/v1/config/server", {"max_connections": 10.5}, "max_connections"),
        ("/api/v1/config/server", {"max_connections": True}, "max_connections"),
        ("/api/v1/config/server", {"colour": "blue"}, "colour"),
        ("/api/v1/config/server", {}, "body"),
        ("/api/v1/config/heartbeat", {"interval": 0}, "interval"),
        ("/api/v1/config/heartbeat", {"interval": 60, "timeout": 30}, "timeout"),
        ("/api/v1/config/heartbeat", {"max_missed": -1}, "max_missed"),
    ],
)
async def test_an_invalid_value_names_its_field_and_changes_nothing(
    module_api: FreshApi, path: str, body: dict[str, object], field: str
) -> None:
    api = module_api  # refused, each of them: the config stays unchanged for the next
    answer = await api.client.put(path, json=body, headers=api.admin())
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert_error(error, "VALIDATION_ERROR")
    assert error["error_details"]["field"] == field
    assert await _config_events(api) == []


async def test_a_body_that_is_not_an_object_is_a_validation_error(api: FreshApi) -> None:
    answer = await api.client.put("/api/v1/config/server", json=[1, 2], headers=api.admin())
    assert answer.status_code == 400
    assert_error(answer.json(), "VALIDATION_ERROR")


async def test_reset_brings_back_the_defaults(api: FreshApi) -> None:
    await api.client.put("/api/v1/config/server", json={"max_connections": 7}, headers=api.admin())
    answer = await api.client.post("/api/v1/config/reset", headers=api.admin())
    assert answer.status_code == 200
    assert answer.json()["data"] == {**DEFAULTS, "version": 2}
    assert await _config_events(api) == ["ServerConfigChanged", "ConfigReset"]


async def test_the_heartbeat_timeout_decides_when_a_device_is_offline(api: FreshApi) -> None:
    timeout = 2
    changed = await api.client.put(
        "/api/v1/config/heartbeat", json={"timeout": timeout}, headers=api.admin()
    )
    assert changed.status_code == 200
    await api.runner.settle("cluster_config")
    device = "/api/v1/devices/quiet-box"

    async def status() -> str:
        answer = await api.client.get(device, headers=api.admin())
        found: str = answer.json()["data"]["status"]
        return found

    beat = time.monotonic()
    await register(api.store, api.runner, "quiet-box")
    assert await status() == "online"
    async with asyncio.timeout(30):
        while await status() == "online":  # no heartbeat since
            await asyncio.sleep(0.1)
    assert time.monotonic() - beat >= timeout  # offline once the timeout passed, not before
