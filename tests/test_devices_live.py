"""Devices against a real running node: a ping's round trip, and coming back after removal."""

from __future__ import annotations

import time
from typing import Any

from spool.domain import node
from tests.cluster_api_helpers import append_node, assert_error, heartbeat, node_started, unique
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.waiting import until


async def _online(c: Cluster, device_id: str) -> dict[str, Any]:
    async def online() -> dict[str, Any] | None:
        d = await c.device(device_id)
        return d if d is not None and d["status"] == "online" else None

    found: dict[str, Any] = await until(online, seconds=20)
    return found


async def test_ping_is_a_round_trip_to_the_node(start_cluster: StartCluster) -> None:
    async with start_cluster() as c:
        node_id = c.settings.node_id
        await _online(c, node_id)
        admin = {"X-API-Key": c.admin_key}
        answer = await c.client.post(f"/api/v1/devices/{node_id}/ping", headers=admin)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert data["device_id"] == node_id
        assert data["reachable"] is True
        assert 0 < data["latency_ms"] < 5000

        not_admin = await c.client.post(f"/api/v1/devices/{node_id}/ping", headers=c.headers())
        assert not_admin.status_code == 403

        # Once the node has stopped, a ping says so at once instead of waiting.
        await c.stop_node()

        async def offline() -> bool:
            d = await c.device(node_id)
            return d is not None and d["status"] == "offline"

        await until(offline, seconds=20)
        dead = await c.client.post(f"/api/v1/devices/{node_id}/ping", headers=admin)
        assert dead.status_code == 503
        assert_error(dead.json(), "INTERNAL_ERROR")
        assert dead.json()["error_details"]["reason"] == "device_offline"


async def test_a_node_that_never_answers_times_out_clearly(start_cluster: StartCluster) -> None:
    async with start_cluster(with_node=False) as c:
        # Its heartbeat says online, but no worker reads its queue.
        ghost = unique("ghost")
        await append_node(c.store, None, ghost, node_started(ghost), heartbeat(ghost))
        await _online(c, ghost)
        started = time.monotonic()
        answer = await c.client.post(
            f"/api/v1/devices/{ghost}/ping",
            params={"timeout": 0.5},
            headers={"X-API-Key": c.admin_key},
        )
        assert answer.status_code == 503
        assert_error(answer.json(), "INTERNAL_ERROR")
        assert answer.json()["error_details"]["reason"] == "ping_timeout"
        assert time.monotonic() - started < 5
        # The unanswered ping left nothing queued for when the node comes back.
        assert await c.redis.zcard(f"spool:queue:node:{ghost}") == 0


async def test_a_removed_node_registers_again_by_itself(start_cluster: StartCluster) -> None:
    async with start_cluster() as c:
        node_id = c.settings.node_id
        await _online(c, node_id)
        removed = await c.client.delete(
            f"/api/v1/devices/{node_id}", headers={"X-API-Key": c.admin_key}
        )
        assert removed.status_code == 200, removed.text

        # The running node notices on a heartbeat tick and registers anew.
        async def registered_again() -> list[str] | None:
            types = [e.type for e in await c.store.read_stream(node.stream_id(node_id))]
            after = types[types.index("NodeRemoved") :]
            return types if "NodeStarted" in after else None

        types = await until(registered_again, seconds=20)
        await _online(c, node_id)

        # A few more beats since (each in a stream of the day's beats): it registers once, not
        # on every beat.
        events = await c.store.read_stream(node.stream_id(node_id))
        registered_at = events[-1].position

        async def beat_thrice_since() -> bool:
            beats: int = await c.pool.fetchval(
                "SELECT count(*) FROM events WHERE stream_id LIKE $1 AND position > $2",
                f"{node.HEARTBEAT_PREFIX}%-{node_id}",
                registered_at,
            )
            return beats >= 3

        await until(beat_thrice_since, seconds=20)
        types = [e.type for e in await c.store.read_stream(node.stream_id(node_id))]
        assert types.count("NodeStarted") == 2  # at start, and once after the removal


async def test_a_node_given_its_address_reports_that_address(start_cluster: StartCluster) -> None:
    async with start_cluster(node_address="203.0.113.7") as c:
        device = await _online(c, c.settings.node_id)

        assert device["ip_address"] == "203.0.113.7"
