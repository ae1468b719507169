"""`/ws`: cluster updates pushed as JSON, from one follower of the event log per API process.

The follower reads the log from its head onwards (`adapters/subscription.py`: woken by the
store's NOTIFY, polling as a fallback; it keeps no checkpoint: a listener sees what happens
while it listens) and fans each update out to every connection's queue. Devices going offline
by silence leave no event, so it also compares the `nodes` table's online set once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
from litestar import WebSocket, websocket
from litestar.connection import ASGIConnection
from litestar.exceptions import WebSocketDisconnect, WebSocketException
from litestar.handlers.base import BaseRouteHandler

from spool.adapters.event_store import Checkpoint, EventStore
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.subscription import LogSubscription, Look
from spool.adapters.viewer_sessions import ViewerSession
from spool.api.auth import KEY_CACHE_SECONDS, Principal, key_gone, lookup
from spool.api.cluster_reads import may_read_cluster
from spool.api.envelope import timestamp
from spool.api.guards import ADMITTED, keep_admitted
from spool.api.services import Services, services_of
from spool.api.viewer_sources import close_viewer, open_viewer
from spool.domain import job, node, task
from spool.domain.events import RecordedEvent

log = logging.getLogger("spool.api.ws")

QUEUE_SIZE = 1000
"""Updates a connection may have unsent; a client that falls further behind is closed."""

POLL_SECONDS = 1.0
"""How often the follower looks without a NOTIFY, and re-checks devices' heartbeat age."""

JOB_EVENTS: frozenset[str] = frozenset(
    cls.__name__
    for cls in (
        job.JobCreated,
        job.StageStarted,
        job.DownloadCompleted,
        job.MuxCompleted,
        job.JobCompleted,
        job.JobSkipped,
        job.StageFailed,
        job.StageInterrupted,
        job.MediaNotReady,
        job.JobFailed,
        job.JobCancelled,
        job.JobRetried,
    )
)
NODE_EVENTS: frozenset[str] = frozenset(
    cls.__name__ for cls in (node.NodeStarted, node.NodeStopped, node.NodeRemoved)
)
FOLLOWED: frozenset[str] = JOB_EVENTS | NODE_EVENTS | task.EVENT_TYPES

# A task event's status, for events that do not carry one themselves.
TASK_STATUS = {
    task.TaskSubmitted.__name__: "queued",
    task.TaskWaiting.__name__: "queued",
    task.TaskAssigned.__name__: "assigned",
    task.TaskUnassigned.__name__: "queued",
    task.TaskStarted.__name__: "running",
    task.TaskSucceeded.__name__: "success",
    task.TaskFailed.__name__: "failed",
    task.TaskTimedOut.__name__: "timeout",
    task.TaskCancelled.__name__: "cancelled",
    task.TaskRetried.__name__: "queued",
}

# A job event's status on the wire (the job's status names, as `GET /jobs/{id}` shows them).
JOB_STATUS = {
    job.JobCreated.__name__: "Pending",
    job.StageStarted.__name__: "Processing",
    job.JobCompleted.__name__: "Completed",
    job.JobSkipped.__name__: "Skipped",
    job.JobFailed.__name__: "Failed",
    job.JobCancelled.__name__: "Cancelled",
    job.JobRetried.__name__: "Pending",
    job.MediaNotReady.__name__: "Pending",  # waits for its media (domain/not_ready.py)
}


class Update(msgspec.Struct, frozen=True):
    """One update and whose it is (None: the cluster's, for those who may read the cluster)."""

    message: dict[str, Any]
    account_id: str | None = None


class Subscriber:
    """One connection's queue of updates."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def offer(self, update: Update) -> None:
        if update.account_id is None:
            if not may_read_cluster(self.principal.admin):
                return  # devices coming and going are a cluster-wide read
        elif update.account_id != self.principal.account_id and not self.principal.admin:
            return  # a user sees only their own jobs and tasks
        try:
            self.queue.put_nowait(update.message)
        except asyncio.QueueFull:
            self.overflowed = True


class ClusterFeed:
    """The one log follower of this API process, fanning updates out to subscribers."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.subscribers: set[Subscriber] = set()
        self._subscription = LogSubscription(
            store, what="cluster feed", poll_interval=POLL_SECONDS, logger=log
        )
        self._at = Checkpoint()
        self._last_look = 0.0
        self._task: asyncio.Task[None] | None = None
        self._accounts: dict[str, str] = {}
        self._announced: dict[str, bool] = {}  # what listeners were last told per device
        self._table: dict[str, bool] = {}  # the nodes table's online set at the last look
        self.ready = asyncio.Event()

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-ws-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def subscribe(self, principal: Principal) -> AsyncIterator[Subscriber]:
        sub = Subscriber(principal)
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    def publish(self, update: Update) -> None:
        for sub in list(self.subscribers):
            sub.offer(update)

    # -- following the log ---------------------------------------------------------------

    async def _run(self) -> None:
        # Runs until cancelled (`stop`): the feed lives as long as its app.
        await self._subscription.follow(self._catch_up, asyncio.Event(), on_listen=self._listening)

    async def _listening(self) -> None:
        """Start from the readable head: a listener sees what happens while it listens."""
        self._at = await self.store.readable_head()
        self._table = await self._online()
        self._announced = dict(self._table)
        self.ready.set()
        self._last_look = time.monotonic()

    async def _catch_up(self, _look: Look) -> None:
        async for batch in self._subscription.batches(self._at, FOLLOWED, 500):
            for e in batch.events:
                update = await self._update(e)
                if update is not None:
                    self.publish(update)
            self._at = batch.horizon  # past the events it does not follow too
        if time.monotonic() - self._last_look >= POLL_SECONDS:
            await self._devices()
            self._last_look = time.monotonic()

    async def _account(self, stream_id: str) -> str | None:
        """The account a job or task stream belongs to: its first event says."""
        found = self._accounts.get(stream_id)
        if found is None:
            first = await self.store.read_stream(stream_id, 1, limit=1)
            found = getattr(first[0].data, "account_id", None) if first else None
            if found is not None:
                if len(self._accounts) > 10_000:
                    self._accounts.clear()
                self._accounts[stream_id] = found
        return found

    async def _update(self, e: RecordedEvent) -> Update | None:
        ev = e.data
        at = e.recorded_at.isoformat().replace("+00:00", "Z")
        if isinstance(ev, node.NodeStarted):
            self._announced[ev.node_id] = True
            return Update(
                _device(
                    ev.node_id,
                    True,
                    "registered",
                    at,
                    role=ev.role,
                    platform=ev.capabilities.platform,
                )
            )
        if isinstance(ev, node.NodeStopped | node.NodeRemoved):
            self._announced[ev.node_id] = False
            reason = "stopped" if isinstance(ev, node.NodeStopped) else "removed"
            return Update(_device(ev.node_id, False, reason, at))
        if e.stream_id.startswith("task-"):
            data = msgspec.to_builtins(ev)
            return Update(
                {
                    "type": "task_update",
                    "task_id": e.stream_id.removeprefix("task-"),
                    "stream_id": e.stream_id,
                    "event_type": e.type,
                    "status": data.get("status") or TASK_STATUS.get(e.type),
                    "device_id": data.get("device_id"),
                    "timestamp": at,
                },
                await self._account(e.stream_id),
            )
        if e.stream_id.startswith("job-"):
            data = msgspec.to_builtins(ev)
            stage = data.get("stage")
            if isinstance(ev, job.DownloadCompleted):
                stage = "download"
            elif isinstance(ev, job.MuxCompleted):
                stage = "mux"
            elif isinstance(ev, job.JobCompleted):
                stage = "upload"
            elif isinstance(ev, job.MediaNotReady):
                stage = ev.stage
            return Update(
                {
                    "type": "job_update",
                    "job_id": e.stream_id.removeprefix("job-"),
                    "stream_id": e.stream_id,
                    "event_type": e.type,
                    "stage": stage,
                    "status": JOB_STATUS.get(e.type),
                    "node_id": data.get("node_id"),
                    "timestamp": at,
                },
                await self._account(e.stream_id),
            )
        return None

    # -- devices going quiet (or coming back) --------------------------------------------

    async def _online(self) -> dict[str, bool]:
        return await node_rows.online_by_node(self.pool)

    async def _devices(self) -> None:
        """Announce what the table changed that no event told: silence, or beats resuming."""
        table = await self._online()
        now = timestamp()
        for device_id in table.keys() | self._table.keys():
            was, is_ = self._table.get(device_id, False), table.get(device_id, False)
            if was == is_ or self._announced.get(device_id, False) == is_:
                continue
            self._announced[device_id] = is_
            reason = "heartbeat_resumed" if is_ else "heartbeat_timeout"
            self.publish(Update(_device(device_id, is_, reason, now)))
        self._table = table


def _device(device_id: str, online: bool, reason: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "device_online" if online else "device_offline",
        "device_id": device_id,
        "status": "online" if online else "offline",
        "reason": reason,
        "timestamp": at,
        **extra,
    }


def _presented(socket: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    key = socket.headers.get("x-api-key") or socket.query_params.get("api_key")
    if key:
        return key.strip()
    scheme, _, token = socket.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


KEY_RECHECK_SECONDS = KEY_CACHE_SECONDS
"""How often an open socket asks whether its key still works: as long as an HTTP request
trusts a verified key."""


async def socket_caller(socket: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The guard of `/ws`: a key that works, else the handshake is refused (a close before the
    socket is accepted answers it with 403)."""
    key = _presented(socket)
    principal = await lookup(services_of(socket.app).keys, key) if key else None
    if principal is None:
        raise WebSocketException(detail="A valid API key is required", code=4401)
    keep_admitted(socket, principal)


@websocket("/ws", guards=[socket_caller], dependencies={"principal": ADMITTED}, tags=["cluster"])
async def cluster_ws(
    socket: WebSocket[Any, Any, Any], services: Services, principal: Principal
) -> None:
    """Cluster updates as JSON; authenticate with `X-API-Key` or `?api_key=`."""
    await socket.accept()
    viewer = await open_viewer(
        services.viewers,
        socket,
        harness_type="CLUSTER_DATA_CLIENT",
        state_name="CONNECTED",
        stream_key="/ws",
        application_id=principal.account_id,
    )
    try:
        await _serve(socket, services, principal, viewer)
    finally:
        close_viewer(viewer)


async def _serve(
    socket: WebSocket[Any, Any, Any],
    services: Services,
    principal: Principal,
    viewer: ViewerSession | None,
) -> None:
    feed = services.feed
    feed.start()  # the one follower of this process, started by its first listener
    async with feed.subscribe(principal) as sub:
        # "connected" promises that whatever is appended from now on will be pushed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.ready.wait(), 10)
        await _send(socket, {"type": "connected", "timestamp": timestamp()}, viewer)
        receiving = asyncio.create_task(_drain(socket, viewer))
        # An open socket outlives no key: it closes soon after its key is revoked or expires.
        gone = asyncio.create_task(key_gone(services.pool, principal.key_id, KEY_RECHECK_SECONDS))
        try:
            while not receiving.done():
                getting = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait(
                    {getting, receiving, gone}, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    getting.cancel()
                    gone.result()  # an error other than an outage ends the socket too
                    await socket.close(code=4401, reason="API key revoked or expired")
                    return
                if getting not in done:
                    getting.cancel()
                    break
                if sub.overflowed:
                    await socket.close(code=1013, reason="Too far behind: reconnect")
                    return
                await _send(socket, getting.result(), viewer)
        except WebSocketDisconnect:
            pass
        finally:
            for task in (receiving, gone):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


_encode = msgspec.json.Encoder().encode


async def _send(
    socket: WebSocket[Any, Any, Any], message: dict[str, Any], viewer: ViewerSession | None
) -> None:
    """Send one update as JSON text, counting its bytes for the connection's viewer."""
    raw = _encode(message)
    await socket.send_data(raw, mode="text")
    if viewer is not None:
        viewer.add_out(len(raw))


async def _drain(socket: WebSocket[Any, Any, Any], viewer: ViewerSession | None) -> None:
    """Read (and ignore) what the client sends, until it goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            data = await socket.receive_data(mode="text")
            if viewer is not None:
                viewer.add_in(len(data.encode()) if isinstance(data, str) else len(data))
