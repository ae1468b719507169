"""`/api/health/ws` and `POST /api/auth/token`: a real websocket client over a real port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from spool.adapters.tokens import issue_token, signing_key
from spool.domain import account
from spool.domain.events import NewEvent
from tests.cluster_api_helpers import FreshApi, append_node, fresh_api, heartbeat, node_started
from tests.fixtures.databases import Databases
from tests.fixtures.loopback import serve_on_loopback

AUTH_TIMEOUT = 1.0
"""The served app's `health_auth_timeout`: short, so the test of it is quick."""


class Served:
    def __init__(self, api: FreshApi, port: int) -> None:
        self.api = api
        self.url = f"ws://127.0.0.1:{port}/api/health/ws"


@contextlib.asynccontextmanager
async def _serving(database_url: str, redis_url: str) -> AsyncIterator[Served]:
    """The API behind a real uvicorn on loopback, as `tests/test_ws.py` serves it."""
    async with (
        fresh_api(database_url, redis_url, health_auth_timeout=AUTH_TIMEOUT) as api,
        serve_on_loopback(api.app) as port,
    ):
        yield Served(api, port)


@pytest.fixture(scope="module")
async def served(databases: Databases, redis_url: str) -> AsyncIterator[Served]:
    """One served API for the module's tests that leave its keys as they found them."""
    name, url = await databases.take()
    try:
        async with _serving(url, redis_url) as serving:
            yield serving
    finally:
        databases.give_back(name)


@pytest.fixture
async def served_alone(fresh_database_url: str, redis_url: str) -> AsyncIterator[Served]:
    """A served API of the test's own, for a test that revokes one of its keys."""
    async with _serving(fresh_database_url, redis_url) as serving:
        yield serving


async def _token(api: FreshApi, key: str) -> str:
    answer = await api.client.post("/api/auth/token", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


async def _ask(ws: ClientConnection, command: str) -> str:
    await ws.send(command)
    reply = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(reply, str)
    return reply


async def _authed(served: Served, *, admin: bool = True) -> ClientConnection:
    api = served.api
    ws = await websockets.connect(served.url)
    token = await _token(api, api.admin_key if admin else api.key)
    assert await _ask(ws, f"auth {token}") == "ok"
    return ws


async def _closed(ws: ClientConnection, within: float = 5) -> None:
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), within)


def _past_token(secret: str) -> str:
    token, _ = issue_token(
        signing_key(secret),
        key_id="k",
        account_id="a",
        admin=True,
        ttl_seconds=60,
        now=time.time() - 3600,
    )
    return token


async def test_an_api_key_gets_a_token_with_expiry_subject_and_admin_flag(served: Served) -> None:
    api = served.api
    answer = await api.client.post("/api/auth/token", headers={"x-api-key": api.admin_key})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["admin"] is True
    assert claims["sub"]
    assert claims["exp"] - claims["iat"] == 900


async def test_a_token_needs_a_valid_api_key(served: Served) -> None:
    api = served.api
    missing = await api.client.post("/api/auth/token")
    assert missing.status_code == 401
    assert missing.json() == {"message": "Missing API key"}
    wrong = await api.client.post("/api/auth/token", headers={"x-api-key": "sk_wrong"})
    assert wrong.status_code == 401
    assert wrong.json() == {"message": "Invalid API key"}


async def test_a_valid_token_authenticates(served: Served) -> None:
    ws = await _authed(served, admin=False)
    await ws.close()


async def test_an_expired_token_is_refused_and_the_socket_closed(served: Served) -> None:
    async with websockets.connect(served.url) as ws:
        assert await _ask(ws, f"auth {_past_token('test-secret-key')}") == "error: token expired"
        await _closed(ws)


async def test_a_forged_token_is_refused(served: Served) -> None:
    forged, _ = issue_token(
        signing_key("not-the-server-secret"), key_id="k", account_id="a", admin=True, ttl_seconds=60
    )
    async with websockets.connect(served.url) as ws:
        assert await _ask(ws, f"auth {forged}") == "error: invalid token signature"
        await _closed(ws)


async def test_an_unsigned_alg_none_token_is_refused(served: Served) -> None:
    genuine = await _token(served.api, served.api.admin_key)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")
    async with websockets.connect(served.url) as ws:
        assert (await _ask(ws, f"auth {unsigned}")).startswith("error: invalid token")
        await _closed(ws)


async def test_a_malformed_token_is_refused(served: Served) -> None:
    async with websockets.connect(served.url) as ws:
        assert (await _ask(ws, "auth not.a.jwt")).startswith("error: invalid token")
        await _closed(ws)


async def test_a_token_of_a_revoked_key_is_refused(served_alone: Served) -> None:
    api = served_alone.api
    token = await _token(api, api.key)
    key_id = jwt.decode(token, options={"verify_signature": False})["sub"]
    revoked = account.ApiKeyRevoked(key_id=key_id)
    result = await api.store.append(account.stream_id(api.account_id), [NewEvent(revoked)], 1)
    await api.runner.wait_until("api_keys", result.checkpoint)
    async with websockets.connect(served_alone.url) as ws:
        assert (
            await _ask(ws, f"auth {token}")
            == "error: the token's API key is revoked, expired or unknown"
        )
        await _closed(ws)


async def test_a_command_before_auth_is_refused_and_auth_still_works(served: Served) -> None:
    api = served.api
    async with websockets.connect(served.url) as ws:
        assert (await _ask(ws, "sysinfo")).startswith("error: authenticate first")
        assert await _ask(ws, f"auth {await _token(api, api.key)}") == "ok"


async def test_an_unauthenticated_socket_is_closed_after_the_timeout(served: Served) -> None:
    async with websockets.connect(served.url) as ws:
        started = time.monotonic()
        reply = await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT + 5)
        assert reply == "error: authentication timed out"
        await _closed(ws)
        assert time.monotonic() - started >= AUTH_TIMEOUT * 0.9


async def test_sysinfo_has_the_seed_shape(served: Served) -> None:
    ws = await _authed(served)
    info = json.loads(await _ask(ws, "sysinfo"))
    await ws.close()
    assert info.keys() == {"cpus", "mem", "disks"}
    assert info["cpus"]
    for cpu in info["cpus"]:
        assert cpu.keys() == {"name", "model", "usage"}
        assert isinstance(cpu["usage"], float)
    assert [c["name"] for c in info["cpus"]] == [str(i + 1) for i in range(len(info["cpus"]))]
    mem = info["mem"]
    assert mem.keys() == {"total", "used", "free", "swap_total", "swap_used", "swap_free"}
    assert mem["used"] + mem["free"] == mem["total"]
    for disk in info["disks"]:
        assert disk.keys() == {"name", "total", "free"}
        assert 0 <= disk["free"] <= disk["total"]


async def test_sysinfo_of_a_node_comes_from_its_latest_heartbeat(served: Served) -> None:
    api = served.api
    await append_node(
        api.store, api.runner, "hw-node", node_started("hw-node", cpu_count=4), heartbeat("hw-node")
    )
    await append_node(api.store, api.runner, "hw-node", heartbeat("hw-node", cpu=61.5))
    ws = await _authed(served)
    info = json.loads(await _ask(ws, "sysinfo hw-node"))
    unknown = await _ask(ws, "sysinfo no-such-node")
    await ws.close()
    assert [c["usage"] for c in info["cpus"]] == [61.5] * 4
    gb = 1024**3
    assert info["mem"]["total"] == 16 * gb
    assert info["mem"]["used"] == 4 * gb
    assert info["mem"]["free"] == 12 * gb
    assert info["disks"] == [{"free": 400 * gb, "name": "data", "total": 500 * gb}]
    assert info["node"]["hostname"] == "host-hw-node"
    assert unknown == "error: unknown node 'no-such-node'"


async def test_subscribe_streams_sysinfo_until_unsubscribe(served: Served) -> None:
    ws = await _authed(served)
    assert await _ask(ws, "subscribe sysinfo 1") == "ok"
    for _ in range(2):
        streamed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert streamed.keys() == {"cpus", "mem", "disks"}
    await ws.send("unsubscribe")
    # A report sent before the unsubscribe arrived may still come first; then "ok", then nothing.
    while (reply := await asyncio.wait_for(ws.recv(), 5)) != "ok":
        assert json.loads(reply).keys() == {"cpus", "mem", "disks"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 2.5)
    await ws.close()


async def test_subscribe_refuses_intervals_outside_one_to_sixty_seconds(served: Served) -> None:
    ws = await _authed(served)
    for seconds in ("0", "61", "soon"):
        assert (await _ask(ws, f"subscribe sysinfo {seconds}")).startswith("error: ")
    await ws.close()


async def test_network_requests_and_logs_answer(served: Served) -> None:
    ws = await _authed(served)
    network = json.loads(await _ask(ws, "network"))
    assert network["interfaces"]
    assert {"name", "bytes_in", "bytes_out"} <= network["interfaces"][0].keys()

    requests = json.loads(await _ask(ws, "requests"))
    assert requests["total"] >= 1  # at least the token request
    assert requests["by_method"]["POST"] >= 1

    logging.getLogger("spool.test").warning("a line for the health websocket")
    logs: dict[str, Any] = json.loads(await _ask(ws, "logs 5"))
    assert 1 <= len(logs["lines"]) <= 5
    assert logs["lines"][-1].endswith("a line for the health websocket")
    assert (await _ask(ws, "logs 501")).startswith("error: ")
    await ws.close()


async def test_a_user_token_reads_the_api_hosts_load_and_nothing_of_the_cluster(
    served: Served,
) -> None:
    api = served.api
    await append_node(
        api.store, api.runner, "hw-user", node_started("hw-user"), heartbeat("hw-user")
    )
    ws = await _authed(served, admin=False)
    own = json.loads(await _ask(ws, "sysinfo"))
    assert own.keys() == {"cpus", "mem", "disks"}
    assert await _ask(ws, "subscribe sysinfo 1") == "ok"
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)).keys() == {"cpus", "mem", "disks"}
    await ws.send("unsubscribe")
    while (reply := await asyncio.wait_for(ws.recv(), 5)) != "ok":
        assert json.loads(reply).keys() == {"cpus", "mem", "disks"}
    refused = {
        command: await _ask(ws, command)
        for command in (
            "sysinfo hw-user",
            "subscribe sysinfo 1 hw-user",
            "network",
            "requests",
            "logs",
            "logs 5",
        )
    }
    await ws.close()
    rule = "is a cluster-wide read: it needs a token issued to an admin key"
    assert refused == {
        "sysinfo hw-user": f"error: 'sysinfo' {rule}",
        "subscribe sysinfo 1 hw-user": f"error: 'subscribe' {rule}",
        "network": f"error: 'network' {rule}",
        "requests": f"error: 'requests' {rule}",
        "logs": f"error: 'logs' {rule}",
        "logs 5": f"error: 'logs' {rule}",
    }


async def test_an_unknown_command_is_an_error(served: Served) -> None:
    ws = await _authed(served)
    assert await _ask(ws, "reboot") == "error: unknown command 'reboot'"
    await ws.close()


async def test_an_open_session_ends_soon_after_its_key_is_revoked(
    served_alone: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spool.api.health_ws.KEY_RECHECK_SECONDS", 0.2)
    api = served_alone.api
    ws = await _authed(served_alone, admin=False)
    assert (await _ask(ws, "sysinfo")).startswith("{")
    key_id = await api.pool.fetchval(
        "SELECT key_id FROM api_keys WHERE account_id = $1", api.account_id
    )
    revoked = account.ApiKeyRevoked(key_id=key_id)
    result = await api.store.append(account.stream_id(api.account_id), [NewEvent(revoked)], 1)
    await api.runner.wait_until("api_keys", result.checkpoint)
    goodbye = await asyncio.wait_for(ws.recv(), 5)
    assert goodbye == "error: the token's API key was revoked or has expired"
    await _closed(ws)
    assert ws.close_code == 4401
