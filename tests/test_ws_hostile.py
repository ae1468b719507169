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
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from spool.adapters.tokens import issue_token, signing_key
from spool.api.cluster_ws import QUEUE_SIZE, ClusterFeed, Update
from spool.api.health_ws import CLUSTER_REFUSED, COMMAND_MAX_CHARS
from spool.api.services import services_of
from spool.api.ws_limits import WS_MAX_MESSAGE_BYTES
from spool.domain import job
from spool.domain.events import NewEvent
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
        o for o in gc.get_objects() if type(o) is WebSocketsSansIOProtocol and not o.disconnected
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
        assert reply == f"error: 'logs' {CLUSTER_REFUSED}", command
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
    assert json.loads(await _ask(ws, "sysinfo")).keys() == {"cpus", "mem", "disks"}
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


# -- floods, clients that never read, clients that vanish ----------------------------------


def _buffered(protocol: WebSocketsSansIOProtocol) -> tuple[int, int]:
    """What uvicorn holds for one connection: messages not yet read by the app, bytes unsent."""
    return protocol.queue.qsize(), protocol.transport.get_write_buffer_size()


async def test_a_flood_of_commands_is_answered_in_order_and_other_sockets_stay_quick(
    served: Served,
) -> None:
    # `requests` (in order, by its count) is an admin's: the flood is any token's to send.
    flooder, other = await _authed(served, admin=True), await _authed(served, admin=True)
    n = 3000
    sending = asyncio.create_task(_send_all(flooder, ["requests"] * n))
    # While the flood is read and answered, another socket's answers stay quick.
    for _ in range(10):
        started = time.monotonic()
        assert json.loads(await _ask(other, "requests")).keys() == {"total", "by_method"}
        assert time.monotonic() - started < 1.0
    await sending
    totals = [json.loads(await asyncio.wait_for(flooder.recv(), 10))["total"] for _ in range(n)]
    assert totals == sorted(totals), "answered one by one, in order"
    await flooder.close()
    await other.close()


async def _send_all(ws: ClientConnection, commands: list[str]) -> None:
    for command in commands:
        await ws.send(command)


async def test_a_client_that_never_reads_is_not_buffered_without_bound(served: Served) -> None:
    # `logs 500` answers about 65 KB: a thousand of them unread are 65 MB, past what the
    # kernel's socket buffers hold (32 MB here). The server must stop answering (and reading)
    # rather than keep answering into its own memory.
    for i in range(600):
        logging.getLogger("spool.test").warning("line %d %s", i, "x" * 80)
    before = set(_server_sockets())
    # No compression: the lines are alike, and deflated answers would fit the kernel's buffers.
    stalled = await _authed(served, admin=True, max_queue=1, compression=None)
    (protocol,) = set(_server_sockets()) - before
    try:
        for _ in range(1000):
            await stalled.send("logs 500")
        held_back = False
        for _ in range(40):
            await asyncio.sleep(0.05)
            unread, unsent = _buffered(protocol)
            # uvicorn stops reading once a message waits for the app; the frames of the chunk
            # it had read by then (asyncio reads 256 KiB at most) are queued: 14 bytes each.
            assert unread * len(b"logs 500" + b"\x81\x88mask") <= 256 * 1024
            assert unsent <= 256 * 1024, "uvicorn holds its high-water mark and one answer"
            held_back = held_back or not protocol.writable.is_set()
        assert held_back, "the server never had to wait for the client"
        # Another socket is served meanwhile.
        other = await _authed(served, admin=True)
        assert len(json.loads(await _ask(other, "logs 1"))["lines"]) == 1
        await other.close()
    finally:
        stalled.transport.abort()  # the stalled client vanishes without a goodbye
    await _settles(lambda: protocol.disconnected)


async def test_a_subscriber_that_never_reads_is_not_buffered_without_bound(
    served: Served,
) -> None:
    before = set(_server_sockets())
    ws = await _authed(served, max_queue=1)
    (protocol,) = set(_server_sockets()) - before
    try:
        assert await _ask(ws, "subscribe sysinfo 1") == "ok"
        await asyncio.sleep(3.5)  # three more reports, none read
        unread, unsent = _buffered(protocol)
        assert unread == 0
        assert unsent <= 64 * 1024
    finally:
        ws.transport.abort()
    await _settles(lambda: protocol.disconnected)


async def test_a_cluster_listener_that_falls_behind_is_closed_1013_and_its_queue_bounded(
    served: Served,
) -> None:
    api = served.api
    async with websockets.connect(f"{served.cluster}?api_key={api.admin_key}") as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        feed: ClusterFeed = services_of(api.app).feed
        (sub,) = feed.subscribers
        # Three queues' worth at once, faster than any socket drains: what a burst of events
        # does to a listener that reads slowly.
        for i in range(3 * QUEUE_SIZE):
            feed.publish(Update({"type": "device_offline", "device_id": f"d{i}"}))
            assert sub.queue.qsize() <= QUEUE_SIZE
        assert await _close_code(ws) == 1013
    await _settles(lambda: not feed.subscribers)


async def test_vanishing_clients_leave_no_task_subscriber_or_connection_behind(
    served: Served,
) -> None:
    api = served.api
    # The cluster feed is one task for the process, started by the first listener.
    async with websockets.connect(f"{served.cluster}?api_key={api.key}") as ws:
        await ws.recv()
    feed = services_of(api.app).feed
    await _settles(lambda: not _server_sockets())
    tasks = len(_server_tasks())
    health = [await _authed(served, admin=True) for _ in range(5)]
    for ws in health:
        assert await _ask(ws, "subscribe sysinfo 1") == "ok"
    cluster = [await websockets.connect(f"{served.cluster}?api_key={api.key}") for _ in range(5)]
    half_open = [await websockets.connect(served.health) for _ in range(5)]  # never authed
    for ws in cluster:
        await ws.recv()
    assert len(feed.subscribers) == 5
    for ws in [*health, *cluster, *half_open]:
        ws.transport.abort()  # no close frame: a cable pulled mid-subscription
    await _settles(lambda: not _server_sockets() and not feed.subscribers)
    await _settles(lambda: len(_server_tasks()) <= tasks)


# -- the cluster socket ----------------------------------------------------------------------


async def test_a_cluster_socket_refuses_hostile_keys_with_403(served: Served) -> None:
    for key in ["", "sk_\x00", "\x00", "sk_" + "a" * 4000, "' OR '1'='1", "sk_\u202e", "sk_\udcff"]:
        quoted = quote(key, errors="surrogatepass")
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(f"{served.cluster}?api_key={quoted}"):
                pass
        assert refused.value.response.status_code == 403, key
    for header in ({"x-api-key": "sk_\t"}, {"authorization": "Bearer"}, {"authorization": "x"}):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(served.cluster, additional_headers=header):
                pass
        assert refused.value.response.status_code == 403, header


async def test_what_a_cluster_listener_sends_is_ignored_and_bounded(served: Served) -> None:
    api = served.api
    url = f"{served.cluster}?api_key={api.key}"
    async with websockets.connect(url) as ws:
        await ws.recv()
        for junk in ["subscribe everything", "\x00" * 1000, b"\xff" * 1000, "{" * 5000]:
            await ws.send(junk)
        # Still listening: its own job's update arrives.
        await api.store.append(
            "job-mine",
            [NewEvent(job.JobCreated(job_id="mine", account_id=api.account_id, url="https://x/"))],
            0,
        )
        update = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (update["type"], update["job_id"]) == ("job_update", "mine")
    for too_much in (b"\x00" * (WS_MAX_MESSAGE_BYTES + 1), "a" * (WS_MAX_MESSAGE_BYTES + 1)):
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(too_much)
            assert await _close_code(ws) == 1009
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.send(b"\xff\xfe", text=True)
        assert await _close_code(ws) == 1007


# -- any sequence of frames ----------------------------------------------------------------

WORDS = ["sysinfo", "subscribe", "unsubscribe", "network", "requests", "logs", "auth", "SYSINFO"]
ARGS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(
        ["sysinfo", "n1", "NaN", "inf", "-0", "1e3", "0x10", "' OR 1=1--", "\x00", "%00", "../.."]
    ),
    st.text(max_size=30),
)
COMMANDS = st.builds(
    lambda word, args, sep: sep.join([word, *args]),
    st.sampled_from(WORDS),
    st.lists(ARGS, max_size=3),
    st.sampled_from([" ", "  ", "\t", " \n "]),
)
FRAMES = st.lists(
    st.one_of(COMMANDS, st.text(max_size=200), st.binary(max_size=64)), min_size=1, max_size=8
)

SHAPES = [
    {"cpus", "mem", "disks"},  # sysinfo, and what a subscription streams
    {"cpus", "mem", "disks", "node"},  # sysinfo of a node
    {"interfaces"},  # network
    {"total", "by_method"},  # requests
]


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=FRAMES)
async def test_any_frames_get_seed_shaped_answers_and_nothing_of_another_account(
    served: Served, frames: list[str | bytes]
) -> None:
    api = served.api
    if not api.app.state.get("prop_ready"):
        await append_node(api.store, api.runner, "n1", node_started("n1"), heartbeat("n1"))
        api.app.state["prop_ready"] = True
    # What only the cluster's admins may read: a log line about another account's request.
    secret = f"another-account-{uuid.uuid4().hex}"
    logging.getLogger("spool.api").warning("request of %s", secret)
    ws = await _authed(served)  # a user's token
    try:
        for frame in frames:
            await ws.send(frame)
        # A command no frame can be: its answer marks the end of the answers to `frames`.
        end = f"end-{uuid.uuid4().hex}"
        await ws.send(end)
        while (reply := await asyncio.wait_for(ws.recv(), 10)) != f"error: unknown command {end!r}":
            assert isinstance(reply, str)
            assert secret not in reply
            if reply == "ok" or reply.startswith("error: "):
                continue
            assert json.loads(reply).keys() in SHAPES, reply
    except ConnectionClosed as closed:
        # Closing is a proper answer to some input (a bad `auth` cannot come: it is authed);
        # failing is not: 1011 and Litestar's 4500 are the server's own errors.
        assert closed.rcvd is not None and closed.rcvd.code in REFUSING_CLOSE_CODES, closed
    finally:
        await ws.close()
