"""The seed's own calls, over real HTTP: its curl lines and its Python client's cluster status."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
import requests

from tests.cluster_api_helpers import FreshApi, fresh_api, register
from tests.fixtures.loopback import serve_on_loopback


class RetireClusterAPI:
    """The seed's Python client, as printed there."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["X-API-Key"] = api_key

    def get_cluster_status(self) -> Any:
        response = requests.get(f"{self.base_url}/cluster/status", headers=self.headers)
        return response.json()


@pytest.fixture
async def base(fresh_database_url: str, redis_url: str) -> AsyncIterator[tuple[FreshApi, str]]:
    async with fresh_api(fresh_database_url, redis_url) as api, serve_on_loopback(api.app) as port:
        await api.pool.execute(  # as the scheduler leaves it, so /health can say healthy
            "INSERT INTO checkpoints (name, position) VALUES ('scheduler', 0)"
        )
        yield api, f"http://127.0.0.1:{port}"


async def _curl(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec("curl", "-s", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    body: dict[str, Any] = json.loads(out)
    return body


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_the_seeds_curl_lines(base: tuple[FreshApi, str]) -> None:
    api, url = base
    await register(api.store, api.runner, "laptop-001")
    health = await _curl(f"{url}/health")
    assert health["status"] == "healthy"
    status = await _curl("-H", f"X-API-Key: {api.admin_key}", f"{url}/api/v1/cluster/status")
    assert status["status"] == "success"
    assert status["data"]["cluster_stats"]["online_devices"] == 1
    devices = await _curl("-H", f"Authorization: Bearer {api.admin_key}", f"{url}/api/v1/devices")
    assert [d["device_id"] for d in devices["data"]] == ["laptop-001"]
    assert devices["pagination"]["total_items"] == 1
    config = await _curl("-H", f"X-API-Key: {api.admin_key}", f"{url}/api/v1/cluster/config")
    assert config["status"] == "success"
    anonymous = await _curl(f"{url}/api/v1/cluster/status")
    assert anonymous["error_code"] == "UNAUTHORIZED"


async def test_the_seeds_python_client_reads_the_cluster_status(
    base: tuple[FreshApi, str],
) -> None:
    api, url = base
    await register(api.store, api.runner, "laptop-001")
    client = RetireClusterAPI(f"{url}/api/v1", api_key=api.admin_key)
    status = await asyncio.to_thread(client.get_cluster_status)
    assert status["status"] == "success"
    assert status["data"]["cluster_stats"]["total_devices"] == 1
    assert set(status["data"]["server_info"]) == {"version", "uptime", "host", "port"}
