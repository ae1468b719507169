"""`/api/v1/devices`: Spool's worker nodes, their status, a real ping, drain, release from a
quarantine, and removal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide

from spool.adapters.event_store import EventStore
from spool.adapters.queue import enqueue, node_queue
from spool.adapters.read_models.nodes import DeviceFilter, all_rows, device_row, work_of
from spool.api.auth import Principal
from spool.api.cluster_reads import cluster_reader
from spool.api.device_view import (
    STATUSES,
    ClusterDeviceStats,
    Device,
    MachineUsage,
    cluster_stats,
    device,
    list_devices,
    usage,
)
from spool.api.envelope import (
    DEFAULT_PAGE_SIZE,
    ClusterApiError,
    Envelope,
    Pagination,
    cluster_admin,
    iso,
    page_window,
    success,
    validation_error,
)
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application.nodes import drain_node, release_node, remove_node, undrain_node
from spool.domain.events import Metadata
from spool.domain.node import WORK_STATE_ORDER, NodeState, UnknownNode, WorkState, work_state

PING_TIMEOUT = 5.0
"""How long a ping waits for the node's answer before calling it unreachable."""


class ByStatus(msgspec.Struct):
    online: int
    offline: int


class ActiveWork(msgspec.Struct):
    """Stages running now on the online devices."""

    downloading: int
    muxing: int
    uploading: int


class DevicesSummary(ClusterDeviceStats):
    """`GET /api/v1/devices/summary`: the seed's `cluster_stats`, with counts by status and
    tag, online devices by work state (as `/metrics` counts `spool_nodes`), and the work
    running now."""

    by_status: ByStatus
    by_tag: dict[str, int]
    by_state: dict[WorkState, int]
    active_work: ActiveWork


class DeviceDetail(Device):
    """One device: the list's fields, and its hostname, registration, concurrency per stage
    and heartbeat count."""

    hostname: str
    registered_at: str | None
    stopped_at: str | None
    concurrency: dict[str, int]
    heartbeats: int


class DeviceCurrent(ActiveWork):
    """Stages running on the device now, and the units it runs."""

    running: list[str]


class DeviceStatus(msgspec.Struct):
    """`GET /api/v1/devices/{device_id}/status`: online or not, heartbeat health (`healthy`,
    `degraded`, `unhealthy`), current work and machine use."""

    device_id: str
    status: str
    state: WorkState
    state_reason: str | None
    health: str
    last_heartbeat: str | None
    heartbeat_age_seconds: float | None
    missed_heartbeats: int | None
    current: DeviceCurrent
    usage: MachineUsage


class PingAnswer(msgspec.Struct):
    """A ping's round trip through the device's work queue."""

    device_id: str
    reachable: bool
    latency_ms: float
    answered_by: str | None


class DeviceRemoved(msgspec.Struct):
    """The device taken out of the cluster, and the event position that recorded it."""

    device_id: str
    removed: bool
    position: int


class DeviceDrain(msgspec.Struct):
    """A device after a drain, undrain or release: its `state` as the device list shows it
    (but for the disk floor, which its next heartbeat says), since when it drains (None once
    undrained) and since when it is quarantined (None once released)."""

    device_id: str
    state: WorkState
    draining_since: str | None
    quarantined_since: str | None


async def _drain_command(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    device_id: str,
    command: Callable[[EventStore, str, Metadata], Awaitable[NodeState]],
    message: str,
) -> Response[Envelope[DeviceDrain]]:
    """Run a drain, undrain or release on `device_id` for its admin; the device's work state,
    or 404."""
    meta = command_metadata(request, f"key:{principal.key_id}")
    try:
        state = await command(services.store, device_id, meta)
    except UnknownNode:
        raise _not_found(device_id) from None
    draining = state.draining_since is not None
    answer = DeviceDrain(
        device_id=state.node_id,
        state=work_state(draining, quarantined=state.quarantined_since is not None),
        draining_since=iso(state.draining_since),
        quarantined_since=iso(state.quarantined_since),
    )
    return success(request, answer, message=message)


def _summary(
    stats: ClusterDeviceStats,
    by_tag: dict[str, int],
    by_state: dict[WorkState, int],
    work: ActiveWork,
) -> DevicesSummary:
    return DevicesSummary(
        **msgspec.structs.asdict(stats),
        by_status=ByStatus(online=stats.online_devices, offline=stats.offline_devices),
        by_tag=by_tag,
        by_state=by_state,
        active_work=work,
    )


def _not_found(device_id: str) -> ClusterApiError:
    return ClusterApiError(
        404, "DEVICE_NOT_FOUND", f"Device {device_id!r} not found", {"device_id": device_id}
    )


def _tags(given: list[str] | None) -> tuple[str, ...]:
    """`tags` repeated, or as one comma-separated list, or both."""
    return tuple(sorted({t.strip() for g in given or [] for t in g.split(",") if t.strip()}))


class DevicesController(Controller):
    path = "/devices"
    dependencies = {"principal": Provide(cluster_reader)}
    tags = ["cluster: devices"]

    @get("/")
    async def list_(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        status: str = "all",
        role: str | None = None,
        platform: str | None = None,
        tags: list[str] | None = None,
    ) -> Response[Envelope[list[Device]]]:
        """Devices, by id, filtered by status (online, offline, all), role, platform, tags."""
        limit, offset = page_window(page, page_size)
        if status not in STATUSES:
            raise validation_error("status", f"status must be one of {', '.join(STATUSES)}")
        f = DeviceFilter(status=status, role=role, platform=platform, tags=_tags(tags))
        devices, total = await list_devices(services.pool, f, limit, offset)
        return success(request, devices, pagination=Pagination.of(page, page_size, total))

    @get("/summary")
    async def summary(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[DevicesSummary]]:
        """Counts by status, role, platform and tag; resources; what the devices are doing."""
        rows = await all_rows(services.pool)
        stats = cluster_stats(rows)
        by_tag: dict[str, int] = {}
        for r in rows:
            for t in r["tags"]:
                by_tag[t] = by_tag.get(t, 0) + 1
        online = [r for r in rows if r["online"]]
        by_state: dict[WorkState, int] = dict.fromkeys(("active", *WORK_STATE_ORDER), 0)
        for r in online:
            by_state[work_of(r)[0]] += 1
        work = ActiveWork(
            downloading=sum(r["downloading"] for r in online),
            muxing=sum(r["muxing"] for r in online),
            uploading=sum(r["uploading"] for r in online),
        )
        return success(request, _summary(stats, dict(sorted(by_tag.items())), by_state, work))

    @get("/{device_id:str}")
    async def one(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceDetail]]:
        """One device, with its hostname, registration and concurrency besides the list's."""
        row, _ = await device_row(services.pool, device_id)
        if row is None:
            raise _not_found(device_id)
        listed = device(row)
        detail = DeviceDetail(
            **msgspec.structs.asdict(listed),
            hostname=row["hostname"],
            registered_at=iso(row["started_at"]),
            stopped_at=iso(row["stopped_at"]),
            concurrency=_json(row["concurrency"]),
            heartbeats=row["heartbeats"],
        )
        return success(request, detail)

    @get("/{device_id:str}/status")
    async def status(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceStatus]]:
        """What the device is doing now, its machine's usage, and how healthy its heartbeat is."""
        row, hb = await device_row(services.pool, device_id)
        if row is None:
            raise _not_found(device_id)
        online = bool(row["online"])
        age = row["heartbeat_age"]
        missed = int(age // hb.interval) if age is not None else None
        if not online:
            health = "unhealthy"
        elif missed is not None and missed > hb.max_missed:
            health = "degraded"  # late, but not yet past the timeout
        else:
            health = "healthy"
        current = DeviceCurrent(
            downloading=row["downloading"],
            muxing=row["muxing"],
            uploading=row["uploading"],
            running=list(row["running"]),
        )
        state, reason = work_of(row)
        answer = DeviceStatus(
            device_id=device_id,
            status="online" if online else "offline",
            state=state,
            state_reason=reason,
            health=health,
            last_heartbeat=iso(row["last_heartbeat_at"]),
            heartbeat_age_seconds=round(age, 3) if age is not None else None,
            missed_heartbeats=missed,
            current=current,
            usage=usage(row),
        )
        return success(request, answer)

    @post("/{device_id:str}/ping", dependencies={"principal": Provide(cluster_admin)})
    async def ping(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
        timeout: float = PING_TIMEOUT,
    ) -> Response[Envelope[PingAnswer]]:
        """A round trip through the device's own work queue; answers with its latency.

        `timeout` (seconds, at most 30) is how long to wait for the answer.
        """
        if not 0 < timeout <= 30:
            raise validation_error("timeout", "timeout must be more than 0 and at most 30 seconds")
        row, _ = await device_row(services.pool, device_id)
        if row is None:
            raise _not_found(device_id)
        if not row["online"]:
            raise ClusterApiError(
                503,
                "INTERNAL_ERROR",
                f"Device {device_id!r} is offline: no heartbeat for "
                f"{row['heartbeat_age'] or 0:.0f} s",
                {"device_id": device_id, "reason": "device_offline"},
            )
        redis = services.redis
        if redis is None:
            raise ClusterApiError(503, "INTERNAL_ERROR", "No Redis configured: cannot reach nodes")
        ping_id = f"ping:{device_id}:{uuid.uuid4().hex}"
        sent = time.perf_counter()
        job = await enqueue(
            redis, "ping", queue=node_queue(device_id), unit_id=ping_id, expires=timeout
        )
        assert job is not None  # a fresh id is never taken
        try:
            answer = await job.result(timeout=timeout, poll_delay=0.02)
        except TimeoutError:
            await _withdraw(redis, job, device_id)
            raise ClusterApiError(
                503,
                "INTERNAL_ERROR",
                f"Device {device_id!r} did not answer within {timeout:g} s",
                {"device_id": device_id, "reason": "ping_timeout"},
            ) from None
        latency_ms = (time.perf_counter() - sent) * 1000
        pong = PingAnswer(
            device_id=device_id,
            reachable=True,
            latency_ms=round(latency_ms, 2),
            answered_by=answer.get("hostname") if isinstance(answer, dict) else None,
        )
        return success(request, pong, message="pong")

    @delete(
        "/{device_id:str}",
        status_code=200,
        dependencies={"principal": Provide(cluster_admin)},
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceRemoved]]:
        """Take the device out of the cluster; it shows again only once it registers anew."""
        row, _ = await device_row(services.pool, device_id)
        if row is None:
            raise _not_found(device_id)
        meta = command_metadata(request, f"key:{principal.key_id}")
        result = await remove_node(services.store, device_id, meta)
        return success(
            request,
            DeviceRemoved(device_id=device_id, removed=True, position=result.position),
            message=f"Device {device_id} removed from the cluster",
        )

    @post(
        "/{device_id:str}/drain",
        status_code=200,
        dependencies={"principal": Provide(cluster_admin)},
    )
    async def drain(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceDrain]]:
        """Drain the device: it finishes what it runs and takes no new work until undrained.

        Draining a draining device changes nothing. A restart keeps the drain."""
        return await _drain_command(
            request,
            services,
            principal,
            device_id,
            drain_node,
            f"Device {device_id} is draining: it finishes what it runs, takes nothing new",
        )

    @post(
        "/{device_id:str}/undrain",
        status_code=200,
        dependencies={"principal": Provide(cluster_admin)},
    )
    async def undrain(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceDrain]]:
        """Let a draining device take new work again; an active device stays as it is."""
        return await _drain_command(
            request,
            services,
            principal,
            device_id,
            undrain_node,
            f"Device {device_id} takes new work again",
        )

    @post(
        "/{device_id:str}/release",
        status_code=200,
        dependencies={"principal": Provide(cluster_admin)},
    )
    async def release(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        device_id: str,
    ) -> Response[Envelope[DeviceDrain]]:
        """Release a quarantined device: it takes new work again (unless drained), and its
        failures in a row count from zero. A device not quarantined stays as it is."""
        return await _drain_command(
            request,
            services,
            principal,
            device_id,
            release_node,
            f"Device {device_id} is released from its quarantine",
        )


async def _withdraw(redis: ArqRedis, job: Job, device_id: str) -> None:
    """Take an unanswered ping off the queue, so a node that comes back never runs it."""
    await asyncio.gather(
        redis.zrem(node_queue(device_id), job.job_id),
        redis.delete(job_key_prefix + job.job_id),
    )


def _json(raw: bytes | str | None) -> dict[str, int]:
    concurrency: dict[str, int] = msgspec.json.decode(raw) if raw else {}
    return concurrency
