"""`/api/health/ws`: machine health over a websocket, after `auth <JWT>` (see `api/tokens.py`).

Commands, one per text message: `sysinfo [node_id]`, `subscribe sysinfo <seconds> [node_id]`,
`unsubscribe`, `network`, `requests`, `logs [N]`. Answers are JSON; `ok` confirms; anything
refused is a text message starting with `error: `.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect

from adapters import sysinfo
from adapters.settings import Settings
from adapters.tokens import TokenClaims, TokenError, verify_token
from adapters.viewer_sessions import ViewerSession
from api.request_log import request_counts
from api.tokens import token_key
from api.viewer_sources import close_viewer, open_viewer

log = logging.getLogger("spool.api.health")

BUFFERED_LOGGERS = ("spool", "api")
"""The loggers whose lines `logs` can show."""

LOG_CAPACITY = 500
LOGS_DEFAULT = 50
SUBSCRIBE_MIN_SECONDS, SUBSCRIBE_MAX_SECONDS = 1, 60

_NODE = """
SELECT node_id, hostname, ip, capabilities, usage, last_heartbeat_at FROM nodes
WHERE node_id = $1 AND removed_at IS NULL
"""

_encode = msgspec.json.Encoder().encode


class LogBuffer(logging.Handler):
    """The last lines logged in this process, kept in memory for `logs`."""

    def __init__(self, capacity: int = LOG_CAPACITY) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def last(self, n: int) -> list[str]:
        return list(self.lines)[-n:] if n > 0 else []


async def start_health(state: State) -> None:
    """Attach this app's log buffer and take psutil's first CPU sample (the next one compares)."""
    buffer = LogBuffer()
    state["log_buffer"] = buffer
    for name in BUFFERED_LOGGERS:
        logging.getLogger(name).addHandler(buffer)
    await asyncio.to_thread(sysinfo.host_report)


async def stop_health(state: State) -> None:
    buffer: LogBuffer | None = state.get("log_buffer")
    if buffer is not None:
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
        },
    }


def _error(text: str) -> str:
    return f"error: {text}"


class HealthSession:
    """One authenticated connection: its commands and its sysinfo subscription."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        claims: TokenClaims,
        viewer: ViewerSession | None = None,
    ) -> None:
        self.socket = socket
        self.claims = claims
        self.viewer = viewer
        self.state: State = socket.app.state
        self._sending = asyncio.Lock()  # the stream and the replies share one socket
        self._stream: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def send(self, text: str) -> None:
        async with self._sending:
            await self.socket.send_text(text)
        if self.viewer is not None:
            self.viewer.add_out(len(text.encode()))

    async def run(self) -> None:
        try:
            while True:
                text = str(await self.socket.receive_data(mode="text"))
                if self.viewer is not None:
                    self.viewer.add_in(len(text.encode()))
                await self.send(await self.answer(text.strip()))
        finally:
            if self._stream is not None:
                self._stream.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._stream

    async def answer(self, text: str) -> str:
        if not text:
            return _error("empty command")
        command, *args = text.split()
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
            return _error(f"wrong arguments for {command!r}")
        return _error(f"unknown command {command!r}")

    async def sysinfo(self, node_id: str | None) -> str:
        if node_id is None:
            return _encode(await asyncio.to_thread(sysinfo.host_report)).decode()
        row = await self.state.pool.fetchrow(_NODE, node_id)
        if row is None:
            return _error(f"unknown node {node_id!r}")
        report = node_report(row)
        if report is None:
            return _error(f"node {node_id!r} has sent no heartbeat yet")
        return _encode(report).decode()

    async def subscribe(self, args: list[str]) -> str:
        if len(args) not in (2, 3) or args[0] != "sysinfo":
            return _error("usage: subscribe sysinfo <seconds> [node_id]")
        try:
            every = int(args[1])
        except ValueError:
            return _error(f"seconds must be a whole number, not {args[1]!r}")
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
        if not self.claims.admin:
            # Log lines speak of every account's requests: the cluster's admins only.
            return _error("logs need a token issued to an admin key")
        try:
            n = LOGS_DEFAULT if count is None else int(count)
        except ValueError:
            return _error(f"N must be a whole number, not {count!r}")
        if not 1 <= n <= LOG_CAPACITY:
            return _error(f"N must be between 1 and {LOG_CAPACITY}")
        buffer: LogBuffer | None = self.state.get("log_buffer")
        return _encode({"lines": buffer.last(n) if buffer else []}).decode()


_REVOKED = "SELECT revoked FROM api_keys WHERE key_id = $1"


async def _authenticate(socket: WebSocket[Any, Any, Any], timeout: float) -> TokenClaims | None:
    """Wait for `auth <JWT>`: the claims, or None once the socket was told why and closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # from connecting: refused commands do not extend it
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            text = str(await asyncio.wait_for(socket.receive_data(mode="text"), left)).strip()
        except TimeoutError:
            await socket.send_text(_error("authentication timed out"))
            await socket.close(code=4408, reason="Authentication timed out")
            return None
        command, _, token = text.partition(" ")
        if command != "auth":
            await socket.send_text(_error("authenticate first: send 'auth <JWT>'"))
            continue
        try:
            claims = verify_token(token_key(socket.app.state), token.strip())
            revoked = await socket.app.state.pool.fetchval(_REVOKED, claims.key_id)
            if revoked is not False:
                raise TokenError("the token's API key is revoked or unknown")
        except TokenError as exc:
            await socket.send_text(_error(str(exc)))
            await socket.close(code=4401, reason="Authentication failed")
            return None
        await socket.send_text("ok")
        return claims


@websocket("/api/health/ws", tags=["health"])
async def health_ws(socket: WebSocket[Any, Any, Any]) -> None:
    """Machine health after `auth <JWT>`: sysinfo, network, requests and logs."""
    await socket.accept()
    settings: Settings = socket.app.state.settings
    with contextlib.suppress(WebSocketDisconnect):
        claims = await _authenticate(socket, settings.health_auth_timeout)
        if claims is not None:
            viewer = await open_viewer(
                socket.app.state,
                socket,
                harness_type="CLUSTER_DATA_CLIENT",
                state_name="CONNECTED",
                stream_key="/api/health/ws",
                application_id=claims.account_id,
            )
            try:
                await HealthSession(socket, claims, viewer).run()
            finally:
                close_viewer(viewer)
