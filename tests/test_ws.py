"""`/ws`: cluster updates pushed as JSON, driven by the event log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from spool.domain import job, node, task
from spool.domain.cluster_config import STREAM_ID, HeartbeatConfig, HeartbeatConfigChanged
from spool.domain.events import NewEvent
from tests.cluster_api_helpers import FreshApi, append_node, fresh_api, heartbeat, node_started
from tests.fixtures.loopback import serve_on_loopback


class Served:
    def __init__(self, api: FreshApi, port: int) -> None:
        self.api = api
        self.url = f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def served(fresh_database_url: str, redis_url: str) -> AsyncIterator[Served]:
    """The API behind a real uvicorn on loopback (websockets need a real server)."""
    async with fresh_api(fresh_database_url, redis_url) as api, serve_on_loopback(api.app) as port:
        yield Served(api, port)


async def _next(
    ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool], within: float = 10
) -> dict[str, Any]:
    """The next message `wanted` accepts, skipping others."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no such update arrived"
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), left))
        if wanted(message):
            return message


async def _connected(ws: ClientConnection) -> None:
    assert (await _next(ws, lambda m: True))["type"] == "connected"


def _job_created(job_id: str, account_id: str) -> job.JobCreated:
    return job.JobCreated(job_id=job_id, account_id=account_id, url="https://example.com/a.mp4")


async def test_a_connection_needs_a_valid_key(served: Served) -> None:
    for url in (served.url, served.url + "?api_key=sk_wrong"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 403


async def test_device_and_job_updates_arrive_as_they_happen(served: Served) -> None:
    api = served.api
    async with websockets.connect(served.url, additional_headers=api.admin()) as ws:
        await _connected(ws)
        await append_node(api.store, None, "ws-node", node_started("ws-node", role="compute"))
        online = await _next(ws, lambda m: m["type"] == "device_online")
        assert online["device_id"] == "ws-node"
        assert online["status"] == "online"
        assert online["reason"] == "registered"
        assert online["role"] == "compute"

        stream = job.stream_id("job-1")
        await api.store.append(stream, [NewEvent(_job_created("job-1", api.account_id))], 0)
        started = job.StageStarted(stage="download", run=1, attempt=1, node_id="ws-node")
        await api.store.append(stream, [NewEvent(started)], 1)
        update = await _next(ws, lambda m: m.get("event_type") == "StageStarted")
        assert update == {
            "type": "job_update",
            "job_id": "job-1",
            "stream_id": stream,
            "event_type": "StageStarted",
            "stage": "download",
            "status": "Processing",
            "node_id": "ws-node",
            "timestamp": update["timestamp"],
        }

        submitted = task.TaskSubmitted(task_id="t-1", account_id=api.account_id, task_type="echo")
        await api.store.append(task.stream_id("t-1"), [NewEvent(submitted)], 0)
        task_update = await _next(ws, lambda m: m["type"] == "task_update")
        assert task_update["task_id"] == "t-1"
        assert task_update["event_type"] == "TaskSubmitted"
        assert task_update["status"] == "queued"

        await append_node(api.store, None, "ws-node", node.NodeStopped(node_id="ws-node"))
        offline = await _next(ws, lambda m: m["type"] == "device_offline")
        assert (offline["device_id"], offline["reason"]) == ("ws-node", "stopped")


async def test_a_user_sees_only_their_own_jobs_and_no_device(served: Served) -> None:
    api = served.api
    async with websockets.connect(f"{served.url}?api_key={api.key}") as ws:
        await _connected(ws)
        # Devices coming and going are a cluster-wide read: an admin's, not a user's.
        await append_node(api.store, None, "users-node", node_started("users-node"))
        await api.store.append(
            job.stream_id("theirs"), [NewEvent(_job_created("theirs", "someone-else"))], 0
        )
        await api.store.append(
            job.stream_id("mine"), [NewEvent(_job_created("mine", api.account_id))], 0
        )
        update = await _next(ws, lambda m: True)  # the first update sent to this user
        assert update["type"] == "job_update"
        assert update["job_id"] == "mine"
        assert update["status"] == "Pending"


async def test_a_device_that_falls_silent_goes_offline(served: Served) -> None:
    api = served.api
    await api.store.append(
        STREAM_ID,
        # A timeout of 5 s, not less: a beat must still be fresh once a loaded machine has
        # projected it and the feed has looked, or the node never shows as back. An event is
        # readable only once every older transaction on the server has ended, and the suite's
        # other processes hold some open now and then (3 s was once too short for that).
        [NewEvent(HeartbeatConfigChanged(heartbeat=HeartbeatConfig(interval=1, timeout=5)))],
        0,
    )
    await api.runner.settle("cluster_config")
    async with websockets.connect(served.url, additional_headers=api.admin()) as ws:
        await _connected(ws)
        await append_node(api.store, api.runner, "quiet", node_started("quiet"), heartbeat("quiet"))
        await _next(ws, lambda m: m["type"] == "device_online")
        offline = await _next(ws, lambda m: m["type"] == "device_offline", within=15)
        assert (offline["device_id"], offline["reason"]) == ("quiet", "heartbeat_timeout")
        # A beat brings it back.
        await append_node(api.store, api.runner, "quiet", heartbeat("quiet"))
        back = await _next(ws, lambda m: m["type"] == "device_online", within=10)
        assert (back["device_id"], back["reason"]) == ("quiet", "heartbeat_resumed")
