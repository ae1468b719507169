"""Hostile input over the websockets: what an attacker or a broken client sends.

Everything runs against the real app served by uvicorn on loopback (the project's one harness,
`tests/fixtures/loopback.py`), with a real websocket client. A refusal is an `error: ...` text
message (the health socket's documented way) or a close with a proper code: 1007 (not UTF-8),
1009 (too big), 1013 (too far behind), 4401 (not authenticated), 4408 (authentication timed
out). Never 1011: that would be the server failing, not the input.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from adapters.tokens import issue_token, signing_key
from api.health_ws import COMMAND_MAX_CHARS
from api.ws_limits import WS_MAX_MESSAGE_BYTES
from tests.cluster_api_helpers import FreshApi, append_node, fresh_api, heartbeat, node_started
from tests.fixtures.loopback import serve_on_loopback

AUTH_TIMEOUT = 1.0
"""The served app's `health_auth_timeout`: short, so the tests of it are quick."""

SECRET = "test-secret-key"
"""`fresh_api`'s server secret: what a forger would need and, in these tests, does not have."""

REFUSING_CLOSE_CODES = {1000, 1007, 1009, 1013, 4401, 4408}


class Served:
    def __init__(self, api: FreshApi, port: int) -> None:
        self.api = api
        self.health = f"ws://127.0.0.1:{port}/api/health/ws"
        self.cluster = f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def served(fresh_database_url: str, redis_url: str) -> AsyncIterator[Served]:
    """The API behind a real uvicorn on loopback, as `tests/test_health_ws.py` serves it."""
    async with (
        fresh_api(fresh_database_url, redis_url, health_auth_timeout=AUTH_TIMEOUT) as api,
        serve_on_loopback(api.app) as port,
    ):
        yield Served(api, port)


async def _token(api: FreshApi, key: str) -> str:
    answer = await api.client.post("/api/auth/token", headers={"x-api-key": key})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


async def _ask(ws: ClientConnection, command: str | bytes, within: float = 10) -> str:
    await ws.send(command)
    reply = await asyncio.wait_for(ws.recv(), within)
    assert isinstance(reply, str), "the health socket answers in text frames"
    return reply


async def _authed(served: Served, *, admin: bool = False, **options: Any) -> ClientConnection:
    api = served.api
    ws = await websockets.connect(served.health, **options)
    assert await _ask(ws, f"auth {await _token(api, api.admin_key if admin else api.key)}") == "ok"
    return ws


async def _close_code(ws: ClientConnection, within: float = 5) -> int | None:
    """The code the server closed with, reading (and dropping) whatever came before it."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


def _claims() -> dict[str, Any]:
    """An admin's claims, as the server would put them in a token."""
    now = int(time.time())
    return {
        "sub": "k",
        "acc": "a",
        "admin": True,
        "aud": "spool-health",
        "iat": now,
        "exp": now + 60,
    }


def _forged() -> str:
    """A token the server did not issue, signed with a key that is not the server's."""
    return jwt.encode(_claims(), b"not-the-server-key" * 2, algorithm="HS256")


def _server_tasks() -> set[asyncio.Task[Any]]:
    """The event loop's tasks: uvicorn serves in this loop, so the app's tasks are among them."""
    return {t for t in asyncio.all_tasks() if not t.done()}


def _server_sockets() -> list[WebSocketsSansIOProtocol]:
    """uvicorn's live websocket connections in this process (it serves in the test's loop)."""
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, WebSocketsSansIOProtocol) and not o.disconnected
    ]


async def _settles(condition: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the server did not settle"
        await asyncio.sleep(0.05)


# -- before and during authentication ------------------------------------------------------


BEFORE_AUTH = ["sysinfo", "network", "requests", "logs 5", "subscribe sysinfo 1", "unsubscribe"]


async def test_no_command_is_answered_before_auth(served: Served) -> None:
    async with websockets.connect(served.health) as ws:
        for command in [*BEFORE_AUTH, "", "AUTH", "authx", "auth\tx"]:
            assert (await _ask(ws, command)).startswith("error: authenticate first"), command
        # The refusals gave nothing away and the socket still waits for `auth`.
        assert await _ask(ws, f"auth {await _token(served.api, served.api.key)}") == "ok"


def _expired() -> str:
    token, _ = issue_token(
        signing_key(SECRET),
        key_id="k",
        account_id="a",
        admin=True,
        ttl_seconds=1,
        now=time.time() - 3600,
    )
    return token


def _alg_none() -> str:
    return jwt.encode(_claims(), None, algorithm="none")


def _hs512_with_the_server_key() -> str:
    return jwt.encode(_claims(), signing_key(SECRET) * 2, algorithm="HS512")


def _signed_with_the_raw_secret() -> str:
    with warnings.catch_warnings():  # PyJWT warns that the key is short: that is the point
        warnings.simplefilter("ignore")
        return jwt.encode(_claims(), SECRET.encode(), algorithm="HS256")


BAD_TOKENS = {
    "expired": _expired,
    "forged": _forged,
    "alg none": _alg_none,
    "alg none with a signature glued on": lambda: _alg_none() + _forged().rsplit(".", 1)[1],
    "HS512": _hs512_with_the_server_key,
    "signed with the raw secret": _signed_with_the_raw_secret,
    "empty": lambda: "",
    "not a JWT": lambda: "not.a.jwt",
    "binary junk": lambda: "\x00\x01\x02 \u202e\ufffd",
    "a long one": lambda: "eyJ" + "A" * 1000,
}


async def test_a_token_the_server_did_not_issue_is_refused_and_the_socket_closed_4401(
    served: Served,
) -> None:
    for name, token in BAD_TOKENS.items():
        async with websockets.connect(served.health) as ws:
            reply = await _ask(ws, f"auth {token()}")
            assert reply.startswith("error: "), (name, reply)
            assert len(reply) < 200, f"{name}: a refusal does not echo what it was sent"
            assert await _close_code(ws) == 4401, name


async def test_a_genuine_user_token_with_admin_flipped_is_refused(served: Served) -> None:
    genuine = await _token(served.api, served.api.key)
    header, _, signature = genuine.split(".")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    tampered = jwt.encode({**claims, "admin": True}, b"x" * 32, algorithm="HS256").split(".")[1]
    async with websockets.connect(served.health) as ws:
        reply = await _ask(ws, f"auth {header}.{tampered}.{signature}")
        assert reply == "error: invalid token signature"
        assert await _close_code(ws) == 4401


async def test_a_user_token_cannot_read_the_logs(served: Served) -> None:
    logging.getLogger("spool.test").warning("a line about another account's request")
    ws = await _authed(served)
    for command in ("logs", "logs 1", "logs 500", "logs -1", "logs 99999999"):
        reply = await _ask(ws, command)
        assert reply == "error: logs need a token issued to an admin key", command
    await ws.close()


async def test_sockets_that_never_authenticate_are_all_closed_after_the_timeout(
    served: Served,
) -> None:
    started = time.monotonic()
    sockets = [await websockets.connect(served.health) for _ in range(20)]
    # Half of them keep sending commands that are not `auth`: that must not extend their time.
    for ws in sockets[::2]:
        for _ in range(5):
            await ws.send("sysinfo")
    codes = await asyncio.gather(*(_close_code(ws, AUTH_TIMEOUT + 5) for ws in sockets))
    assert codes == [4408] * len(sockets)
    assert time.monotonic() - started < AUTH_TIMEOUT + 4
    await _settles(lambda: not _server_sockets())


# -- frames that are not what the protocol expects ------------------------------------------


async def test_a_message_over_the_limit_closes_the_socket_with_1009(served: Served) -> None:
    for authed in (False, True):
        ws = await (_authed(served) if authed else websockets.connect(served.health))
        await ws.send("sysinfo " + "a" * WS_MAX_MESSAGE_BYTES)
        assert await _close_code(ws) == 1009


async def test_a_long_command_under_the_limit_is_refused_without_echoing_it(
    served: Served,
) -> None:
    async with websockets.connect(served.health) as ws:
        reply = await _ask(ws, "auth " + "A" * 20_000)
        assert reply == f"error: a command is at most {COMMAND_MAX_CHARS} characters"
        assert await _ask(ws, f"auth {await _token(served.api, served.api.key)}") == "ok"
    ws = await _authed(served)
    for command in ("x" * (WS_MAX_MESSAGE_BYTES - 10), "sysinfo " + "a " * 20_000):
        reply = await _ask(ws, command)
        assert reply == f"error: a command is at most {COMMAND_MAX_CHARS} characters"
    # Still usable.
    assert json.loads(await _ask(ws, "requests"))["total"] >= 1
    await ws.close()


async def test_binary_frames_are_refused_as_not_text(served: Served) -> None:
    async with websockets.connect(served.health) as ws:
        token = await _token(served.api, served.api.key)
        # `auth` in a binary frame does not authenticate.
        assert await _ask(ws, f"auth {token}".encode()) == "error: commands are text frames"
        assert await _ask(ws, f"auth {token}") == "ok"
        assert await _ask(ws, b"sysinfo") == "error: commands are text frames"
        assert await _ask(ws, b"\xff\x00") == "error: commands are text frames"


async def test_invalid_utf8_in_a_text_frame_closes_the_socket_with_1007(served: Served) -> None:
    for authed in (False, True):
        ws = await (_authed(served) if authed else websockets.connect(served.health))
        await ws.send(b"sysinfo \xff\xfe", text=True)
        assert await _close_code(ws) == 1007


# -- arguments out of range ----------------------------------------------------------------

REFUSED = [
    "logs -1",
    "logs 0",
    "logs 501",
    "logs 99999999",
    "logs " + "9" * 5000,
    "logs NaN",
    "logs 1.5",
    "logs 0x10",
    "logs 5 6",
    "subscribe sysinfo 0",
    "subscribe sysinfo -1",
    "subscribe sysinfo NaN",
    "subscribe sysinfo inf",
    "subscribe sysinfo 1e3",
    "subscribe sysinfo 99999999999999999999",
    "subscribe sysinfo " + "9" * 5000,
    "subscribe sysinfo",
    "subscribe logs 1",
    "subscribe sysinfo 1 a b",
    "unsubscribe now",
    "sysinfo no-such-node",
    "sysinfo ';DROP TABLE nodes;--",
    "sysinfo ' OR '1'='1",
    "sysinfo a\x00b",
    "sysinfo %00",
    "sysinfo ../../etc/passwd",
    "sysinfo \u202enode",
    "sysinfo " + "n" * 1000,
    "subscribe sysinfo 1 a\x00b",
    "subscribe sysinfo 1 ' OR '1'='1",
    "network eth0",
    "requests all",
    "auth again",
    "reboot",
    "\x00",
]


async def test_arguments_out_of_range_are_refused_and_the_socket_goes_on(served: Served) -> None:
    api = served.api
    await append_node(api.store, api.runner, "n1", node_started("n1"), heartbeat("n1"))
    ws = await _authed(served, admin=True)
    for command in REFUSED:
        reply = await _ask(ws, command)
        assert reply.startswith("error: "), (command, reply)
        assert len(reply) < 300, "a refusal does not echo long input back"
    # Nothing was dropped or run: the node is still there, and the socket still answers.
    assert json.loads(await _ask(ws, "sysinfo n1"))["node"]["node_id"] == "n1"
    assert len(json.loads(await _ask(ws, "logs 500"))["lines"]) <= 500
    await ws.close()


async def test_a_session_ends_when_its_token_expires(served: Served) -> None:
    # The token is checked once, at `auth`: without an end, a socket would outlive its
    # short-lived token for good (an admin's would go on reading the logs).
    genuine = await _token(served.api, served.api.admin_key)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    short, _ = issue_token(
        signing_key(SECRET),
        key_id=claims["sub"],
        account_id=claims["acc"],
        admin=True,
        ttl_seconds=2,
    )
    async with websockets.connect(served.health) as ws:
        assert await _ask(ws, f"auth {short}") == "ok"
        assert await _ask(ws, "subscribe sysinfo 1") == "ok"
        seen: list[str] = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(6):
                while True:
                    seen.append(await ws.recv())  # type: ignore[arg-type]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert seen[-1] == "error: token expired: authenticate on a new socket"
        assert all(json.loads(m).keys() == {"cpus", "mem", "disks"} for m in seen[:-1])
