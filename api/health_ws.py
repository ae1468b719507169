"""`/api/health/ws`: machine health over a websocket, after `auth <JWT>` (see `api/tokens.py`).

Commands, one per text message: `sysinfo [node_id]`, `subscribe sysinfo <seconds> [node_id]`,
`unsubscribe`, `network`, `requests`, `logs [N]`. Answers are JSON; `ok` confirms; anything
refused is a text message starting with `error: ` (binary frames and commands past
`COMMAND_MAX_CHARS` too). Closes: 4401 (refused token, or the token expired), 4408 (no `auth`
in time); uvicorn's 1009 (past `api.ws_limits.WS_MAX_MESSAGE_BYTES`) and 1007 (not UTF-8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from spool.adapters import sysinfo
from spool.adapters.database import unreachable
from spool.adapters.log_format import TextFormatter
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.tokens import TokenClaims, TokenError, verify_token
from spool.adapters.viewer_sessions import ViewerSession
from spool.api.auth import KEY_CACHE_SECONDS, key_alive, key_gone
from spool.api.cluster_reads import may_read_cluster
from spool.api.errors import client_fault
from spool.api.guards import KEYLESS
from spool.api.request_log import request_counts
from spool.api.services import Services
from spool.api.viewer_sources import close_viewer, open_viewer

log = logging.getLogger("spool.api.health")

BUFFERED_LOGGERS = ("spool", "api")
"""The loggers whose lines `logs` can show."""

LOG_CAPACITY = 500
COMMAND_MAX_CHARS = 1024
"""The longest command answered; a JWT is about 300 characters. Longer ones are refused unread."""
ECHO_MAX_CHARS = 40
"""How much of what a client sent an error message quotes back."""
LOGS_DEFAULT = 50
SUBSCRIBE_MIN_SECONDS, SUBSCRIBE_MAX_SECONDS = 1, 60

_encode = msgspec.json.Encoder().encode


class LogBuffer(logging.Handler):
    """The last lines logged in this process, kept in memory for `logs`."""

    def __init__(self, capacity: int = LOG_CAPACITY) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        # The lines `logs` shows are log lines too: no secret in them either.
        self.setFormatter(TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def last(self, n: int) -> list[str]:
        return list(self.lines)[-n:] if n > 0 else []


async def start_health(buffer: LogBuffer) -> None:
    """Attach this app's log buffer and take psutil's first CPU sample (the next one compares)."""
    for name in BUFFERED_LOGGERS:
        logging.getLogger(name).addHandler(buffer)
    await asyncio.to_thread(sysinfo.host_report)


async def stop_health(buffer: LogBuffer) -> None:
    for name in BUFFERED_LOGGERS:
        logging.getLogger(name).removeHandler(buffer)


def _json(raw: Any) -> dict[str, Any]:
    decoded = msgspec.json.decode(raw) if isinstance(raw, bytes | str) else raw
    return decoded if isinstance(decoded, dict) else {}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def node_report(row: asyncpg.Record) -> dict[str, Any] | None:
    """A node's latest heartbeat in the `sysinfo` shape; None before its first heartbeat.

    A heartbeat carries one CPU figure and no CPU model or swap: each CPU shows the node's
    average and what is not reported is null, rather than invented.
    """
    usage, caps = _json(row["usage"]), _json(row["capabilities"])
    if not usage:
        return None
    state, reason = node_rows.work_of(row)
    cpu = float(usage.get("cpu_percent", 0.0))
    total, used = int(usage.get("memory_total", 0)), int(usage.get("memory_used", 0))
    return {
        "cpus": [
            {"model": None, "name": str(i), "usage": cpu}
            for i in range(1, int(caps.get("cpu_count", 1)) + 1)
        ],
        "mem": {
            "total": total,
            "used": used,
            "free": max(0, total - used),
            "swap_total": None,
            "swap_used": None,
            "swap_free": None,
        },
        "disks": [
            {
                "free": int(usage.get("disk_free", 0)),
                "name": "data",
                "total": int(usage.get("disk_total", 0)),
            }
        ],
        "node": {
            "node_id": row["node_id"],
            "hostname": row["hostname"],
            "ip": row["ip"],
            "last_heartbeat": _iso(row["last_heartbeat_at"]),
            "state": state,
            "state_reason": reason,
        },
    }


def _error(text: str) -> str:
    return f"error: {text}"


def _quoted(text: str) -> str:
    """`text` as an error message quotes it: repr'd, and cut short (an error is not an echo)."""
    return repr(text if len(text) <= ECHO_MAX_CHARS else text[:ECHO_MAX_CHARS] + "...")


CLUSTER_COMMANDS = frozenset({"network", "requests", "logs"})
"""Commands that read the cluster (its network, every account's requests, the logs) whatever
their arguments: admin tokens only (api/cluster_reads.py). `sysinfo` and `subscribe sysinfo`
read it when they name a node; without one they show the API host's own load."""

CLUSTER_REFUSED = "is a cluster-wide read: it needs a token issued to an admin key"


def _reads_cluster(command: str, args: list[str]) -> bool:
    """Whether `command args` reads the cluster rather than the API host's own load."""
    if command == "sysinfo":
        return len(args) == 1
    if command == "subscribe":
        return len(args) == 3
    return command in CLUSTER_COMMANDS


class Refusal(msgspec.Struct, frozen=True):
    """A message that cannot be a command, and the error that answers it."""

    answer: str


NOT_TEXT = Refusal(_error("commands are text frames"))
TOO_LONG = Refusal(_error(f"a command is at most {COMMAND_MAX_CHARS} characters"))


async def _command(
    socket: WebSocket[Any, Any, Any], viewer: ViewerSession | None = None
) -> str | Refusal:
    """The next command, stripped, or the refusal of a message that cannot be one.

    A binary frame is refused rather than read as text (Litestar's `receive_data(mode="text")`
    would make it ""), and a command past `COMMAND_MAX_CHARS` is refused before anything splits
    it: "sysinfo a a a ..." in 64 KiB would otherwise become 32,000 strings.
    """
    event = await socket.receive()
    if event["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="disconnect event", code=event.get("code", 1000))
    text, data = event.get("text"), event.get("bytes")
    if viewer is not None:
        size = len(data) if isinstance(data, bytes) else 0
        viewer.add_in(len(text.encode()) if isinstance(text, str) else size)
    if not isinstance(text, str):
        return NOT_TEXT
    if len(text) > COMMAND_MAX_CHARS:
        return TOO_LONG
    return text.strip()


class HealthSession:
    """One authenticated connection: its commands and its sysinfo subscription."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        services: Services,
        claims: TokenClaims,
        viewer: ViewerSession | None = None,
    ) -> None:
        self.socket = socket
        self.services = services
        self.claims = claims
        self.viewer = viewer
        self._sending = asyncio.Lock()  # the stream and the replies share one socket
        self._stream: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def send(self, text: str) -> None:
        async with self._sending:
            await self.socket.send_text(text)
        if self.viewer is not None:
            self.viewer.add_out(len(text.encode()))

    async def run(self) -> None:
        """Answer commands until the client leaves or its token expires.

        The token is checked once, at `auth`; without this bound a socket would outlive its
        short-lived token for good (and an admin's would go on reading the logs).
        """
        loop = asyncio.get_running_loop()
        expires = loop.time() + (self.claims.expires_at - time.time())
        watcher = asyncio.create_task(self._watch_key(), name="health-ws-key")
        try:
            async with asyncio.timeout_at(expires):
                while True:
                    command = await _command(self.socket, self.viewer)
                    if isinstance(command, Refusal):
                        await self.send(command.answer)
                    else:
                        await self.send(await self.answer(command))
        except TimeoutError:
            await self._end_stream()
            expired = _error("token expired: authenticate on a new socket")
            await _goodbye(self.socket, expired, 4401, "Token expired")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            await self._end_stream()

    async def _watch_key(self) -> None:
        """End the session within `KEY_RECHECK_SECONDS` of its API key being revoked or expiring.

        A token outlives nothing but its key: without this, revoking a key left its open
        sessions (an admin's reading the logs, say) running until their tokens expired.
        """
        await key_gone(self.services.pool, self.claims.key_id, KEY_RECHECK_SECONDS)
        await self._end_stream()
        gone = _error("the token's API key was revoked or has expired")
        await _goodbye(self.socket, gone, 4401, "API key revoked")

    async def _end_stream(self) -> None:
        """Cancel the stream where it is (perhaps blocked sending to a client that stopped)."""
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._stream
            self._stream = None

    async def answer(self, text: str) -> str:
        """The answer to one command; what only hostile input causes is an error, not a crash."""
        try:
            return await self._answer(text)
        except Exception as exc:
            fault = client_fault(exc)
            if fault is not None:
                return _error(fault)
            if unreachable(exc):
                return _error("the database is unavailable, try again")
            raise

    async def _answer(self, text: str) -> str:
        if not text:
            return _error("empty command")
        command, *args = text.split()
        if _reads_cluster(command, args) and not may_read_cluster(self.claims.admin):
            return _error(f"{_quoted(command)} {CLUSTER_REFUSED}")
        if command == "sysinfo" and len(args) <= 1:
            return await self.sysinfo(args[0] if args else None)
        if command == "subscribe":
            return await self.subscribe(args)
        if command == "unsubscribe" and not args:
            await self.unsubscribe()
            return "ok"
        if command == "network" and not args:
            return _encode({"interfaces": await asyncio.to_thread(sysinfo.network_report)}).decode()
        if command == "requests" and not args:
            by_method = {k: v for k, v in request_counts.items() if k != "total"}
            return _encode({"total": request_counts["total"], "by_method": by_method}).decode()
        if command == "logs" and len(args) <= 1:
            return self.logs(args[0] if args else None)
        if command == "auth":
            return _error("already authenticated")
        if command in ("sysinfo", "unsubscribe", "network", "requests", "logs"):
            return _error(f"wrong arguments for {_quoted(command)}")
        return _error(f"unknown command {_quoted(command)}")

    async def sysinfo(self, node_id: str | None) -> str:
        if node_id is None:
            return _encode(await asyncio.to_thread(sysinfo.host_report)).decode()
        row = await node_rows.registration(self.services.pool, node_id)
        if row is None:
            return _error(f"unknown node {_quoted(node_id)}")
        report = node_report(row)
        if report is None:
            return _error(f"node {_quoted(node_id)} has sent no heartbeat yet")
        return _encode(report).decode()

    async def subscribe(self, args: list[str]) -> str:
        if len(args) not in (2, 3) or args[0] != "sysinfo":
            return _error("usage: subscribe sysinfo <seconds> [node_id]")
        try:
            every = int(args[1])
        except ValueError:
            return _error(f"seconds must be a whole number, not {_quoted(args[1])}")
        if not SUBSCRIBE_MIN_SECONDS <= every <= SUBSCRIBE_MAX_SECONDS:
            return _error(
                f"seconds must be between {SUBSCRIBE_MIN_SECONDS} and {SUBSCRIBE_MAX_SECONDS}"
            )
        node_id = args[2] if len(args) == 3 else None
        first = await self.sysinfo(node_id)
        if first.startswith("error: "):
            return first
        await self.unsubscribe()
        self._stop = asyncio.Event()
        self._stream = asyncio.create_task(self._streaming(every, node_id, self._stop))
        return "ok"

    async def _streaming(self, every: int, node_id: str | None, stop: asyncio.Event) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while not stop.is_set():
                report = await self.sysinfo(node_id)
                if stop.is_set():
                    return  # `unsubscribe` came while this was read: it promised no more
                await self.send(report)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)

    async def unsubscribe(self) -> None:
        """Stop the stream; once this returns, no more of its messages will be sent."""
        self._stop.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream
            self._stream = None

    def logs(self, count: str | None) -> str:
        try:
            n = LOGS_DEFAULT if count is None else int(count)
        except ValueError:
            return _error(f"N must be a whole number, not {_quoted(str(count))}")
        if not 1 <= n <= LOG_CAPACITY:
            return _error(f"N must be between 1 and {LOG_CAPACITY}")
        return _encode({"lines": self.services.log_buffer.last(n)}).decode()


KEY_RECHECK_SECONDS = KEY_CACHE_SECONDS
"""How often an open session asks whether its key still works: as long as an HTTP request
trusts a verified key."""


GOODBYE_SECONDS = 2.0
"""How long a refused socket's last words may take: a client that does not read gets no more."""


async def _goodbye(socket: WebSocket[Any, Any, Any], text: str, code: int, reason: str) -> None:
    """Tell the client why and close; give up after `GOODBYE_SECONDS` (uvicorn then drops it)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(GOODBYE_SECONDS):
            await socket.send_text(text)
            await socket.close(code=code, reason=reason)


async def _authenticate(
    socket: WebSocket[Any, Any, Any], services: Services, timeout: float
) -> TokenClaims | None:
    """Wait for `auth <JWT>`: the claims, or None once the socket was told why and closed.

    The timeout runs from connecting and bounds the whole exchange, answers included: refused
    commands do not extend it, nor does a client that sends and never reads the refusals.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                command = await _command(socket)
                if isinstance(command, Refusal):
                    await socket.send_text(command.answer)
                    continue
                verb, _, token = command.partition(" ")
                if verb != "auth":
                    await socket.send_text(_error("authenticate first: send 'auth <JWT>'"))
                    continue
                try:
                    claims = verify_token(services.token_key, token.strip())
                    if not await key_alive(services.pool, claims.key_id):
                        raise TokenError("the token's API key is revoked, expired or unknown")
                except TokenError as exc:
                    refused = _error(str(exc))
                    break
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    unavailable = _error("the database is unavailable, try again")
                    await _goodbye(socket, unavailable, 1013, "Try again later")
                    return None
                await socket.send_text("ok")
                return claims
    except TimeoutError:
        await _goodbye(socket, _error("authentication timed out"), 4408, "Authentication timed out")
        return None
    await _goodbye(socket, refused, 4401, "Authentication failed")
    return None


@websocket("/api/health/ws", tags=["health"], opt=KEYLESS)
async def health_ws(socket: WebSocket[Any, Any, Any], services: Services) -> None:
    """Machine health after `auth <JWT>`: sysinfo, network, requests and logs.

    Keyless to its surface's guard: the token comes in band, after the socket is accepted (seed
    003), so `_authenticate` checks it here.
    """
    await socket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        claims = await _authenticate(socket, services, services.settings.health_auth_timeout)
        if claims is not None:
            viewer = await open_viewer(
                services.viewers,
                socket,
                harness_type="CLUSTER_DATA_CLIENT",
                state_name="CONNECTED",
                stream_key="/api/health/ws",
                application_id=claims.account_id,
            )
            try:
                await HealthSession(socket, services, claims, viewer).run()
            finally:
                close_viewer(viewer)
