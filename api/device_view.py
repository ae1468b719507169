"""Devices (Spool's worker nodes) as the cluster API shows them, read from the `nodes` table.

A device is online by the one rule of adapters/read_models/nodes.py (not stopped, and a heartbeat
younger than the heartbeat config's `timeout`); removed devices are not shown at all. Its `state`
says whether it takes new work (`domain.node.work_state`): "active", or "quarantined",
"draining" or "disk_floor" when it takes none, with why in `state_reason`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from spool.adapters.read_models.nodes import DeviceFilter, device_rows, work_of
from spool.api.envelope import iso
from spool.domain.node import WorkState

_GB = 1024**3

STATUSES = ("online", "offline", "all")

_decode = msgspec.json.Decoder(dict[str, Any]).decode


class Capabilities(msgspec.Struct):
    cpu_count: int
    memory_total_gb: float
    storage_total_gb: float
    has_gpu: bool


class Device(msgspec.Struct):
    """The seed's device object, and whether it takes new work (`state`, and why not in
    `state_reason`: Spool's)."""

    device_id: str
    role: str
    platform: str
    status: str
    state: WorkState
    state_reason: str | None
    ip_address: str
    last_heartbeat: str | None
    uptime: str
    capabilities: Capabilities
    tags: list[str]


class MachineUsage(msgspec.Struct, omit_defaults=True):
    """A node's latest psutil figures; `{}` until its first heartbeat with usage."""

    cpu_percent: float | msgspec.UnsetType = msgspec.UNSET
    memory_percent: float | msgspec.UnsetType = msgspec.UNSET
    memory_used_gb: float | msgspec.UnsetType = msgspec.UNSET
    memory_total_gb: float | msgspec.UnsetType = msgspec.UNSET
    disk_percent: float | msgspec.UnsetType = msgspec.UNSET
    disk_free_gb: float | msgspec.UnsetType = msgspec.UNSET
    disk_total_gb: float | msgspec.UnsetType = msgspec.UNSET


class TotalResources(msgspec.Struct):
    """What the online devices have between them."""

    cpu_cores: int
    memory_gb: float
    storage_gb: float


class ClusterDeviceStats(msgspec.Struct):
    """The seed's `cluster_stats`: device counts, health, resources, counts by role and
    platform."""

    total_devices: int
    online_devices: int
    offline_devices: int
    health_percentage: float
    total_resources: TotalResources
    by_role: dict[str, int]
    by_platform: dict[str, int]


def duration(seconds: float) -> str:
    """A duration as the seed writes it: `2d 4h 30m`, `2h 30m`, `5m`, `40s`."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if not (days or hours or minutes):
        return f"{s}s"
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts)


def capabilities(row: asyncpg.Record) -> Capabilities:
    caps = _decode(row["capabilities"])
    return Capabilities(
        cpu_count=int(caps.get("cpu_count", 0)),
        memory_total_gb=float(caps.get("memory_total_gb", 0.0)),
        storage_total_gb=float(caps.get("storage_total_gb", 0.0)),
        has_gpu=bool(caps.get("has_gpu", False)),
    )


def device(row: asyncpg.Record) -> Device:
    online = bool(row["online"])
    state, reason = work_of(row)
    return Device(
        device_id=row["node_id"],
        role=row["role"],
        platform=row["platform"],
        status="online" if online else "offline",
        state=state,
        state_reason=reason,
        ip_address=row["ip"],
        last_heartbeat=iso(row["last_heartbeat_at"]),
        # Online: up since it registered. Offline: not up at all.
        uptime=duration(row["up_seconds"] or 0) if online else "0m",
        capabilities=capabilities(row),
        tags=list(row["tags"]),
    )


def usage(row: asyncpg.Record) -> MachineUsage:
    """The node's latest psutil figures, in the units people read."""
    u = _decode(row["usage"])
    if not u:
        return MachineUsage()
    memory_total = u.get("memory_total") or 0
    disk_total = u.get("disk_total") or 0
    return MachineUsage(
        cpu_percent=round(float(u.get("cpu_percent", 0.0)), 1),
        memory_percent=round(100 * u.get("memory_used", 0) / memory_total, 1)
        if memory_total
        else 0.0,
        memory_used_gb=round(u.get("memory_used", 0) / _GB, 2),
        memory_total_gb=round(memory_total / _GB, 2),
        disk_percent=round(100 * (disk_total - u.get("disk_free", 0)) / disk_total, 1)
        if disk_total
        else 0.0,
        disk_free_gb=round(u.get("disk_free", 0) / _GB, 2),
        disk_total_gb=round(disk_total / _GB, 2),
    )


async def list_devices(
    pool: asyncpg.Pool, f: DeviceFilter, limit: int, offset: int
) -> tuple[list[Device], int]:
    """One page of devices matching `f`, by id, and how many match in all."""
    rows, total = await device_rows(pool, f, limit, offset)
    return [device(r) for r in rows], total


def cluster_stats(rows: list[asyncpg.Record]) -> ClusterDeviceStats:
    """The seed's `cluster_stats`; resources count online devices only (what can work now)."""
    online = [r for r in rows if r["online"]]
    by_role: dict[str, int] = {}
    by_platform: dict[str, int] = {}
    for r in rows:
        by_role[r["role"]] = by_role.get(r["role"], 0) + 1
        by_platform[r["platform"]] = by_platform.get(r["platform"], 0) + 1
    caps = [capabilities(r) for r in online]
    total = len(rows)
    return ClusterDeviceStats(
        total_devices=total,
        online_devices=len(online),
        offline_devices=total - len(online),
        health_percentage=round(100.0 * len(online) / total, 1) if total else 0.0,
        total_resources=TotalResources(
            cpu_cores=sum(c.cpu_count for c in caps),
            memory_gb=round(sum(c.memory_total_gb for c in caps), 2),
            storage_gb=round(sum(c.storage_total_gb for c in caps), 2),
        ),
        by_role=dict(sorted(by_role.items())),
        by_platform=dict(sorted(by_platform.items())),
    )
