"""The machine, as psutil sees it: identity, capabilities and current usage."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any

import psutil

from domain.node import Capabilities, Usage

_GB = 1024**3


def hostname() -> str:
    return socket.gethostname()


def primary_ip() -> str:
    """The address this machine would use to reach others (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only, nothing leaves
            ip: str = s.getsockname()[0]
            return ip
        except OSError:
            return "127.0.0.1"


def capabilities(data_dir: Path, stages: list[str]) -> Capabilities:
    disk = shutil.disk_usage(data_dir if data_dir.exists() else Path.home())
    return Capabilities(
        cpu_count=os.cpu_count() or 1,
        memory_total_gb=round(psutil.virtual_memory().total / _GB, 2),
        storage_total_gb=round(disk.total / _GB, 2),
        has_gpu=shutil.which("nvidia-smi") is not None,
        stages=stages,
        platform=platform.system().lower(),
    )


def usage(data_dir: Path) -> Usage:
    """Current CPU, memory and disk use; CPU is the average since the previous call."""
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir if data_dir.exists() else Path.home())
    return Usage(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used=memory.total - memory.available,
        memory_total=memory.total,
        disk_free=disk.free,
        disk_total=disk.total,
    )


@functools.cache
def cpu_model() -> str:
    """The CPU's model name as the operating system reports it ("" when it does not say)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model"):
                return value.strip()
    return platform.processor() or ""


def host_report() -> dict[str, Any]:
    """CPUs, memory and disks of this machine in the health websocket's `sysinfo` shape."""
    model = cpu_model()
    cpus = [
        {"model": model, "name": str(i), "usage": usage}
        for i, usage in enumerate(psutil.cpu_percent(interval=None, percpu=True), start=1)
    ]
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    used = memory.total - memory.available  # so that used + free = total, as the seed shows
    disks = []
    for part in psutil.disk_partitions(all=False):
        try:
            disk = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue  # a mount we may not read (or one that vanished) is left out
        disks.append({"free": disk.free, "name": part.device, "total": disk.total})
    return {
        "cpus": cpus,
        "mem": {
            "total": memory.total,
            "used": used,
            "free": memory.available,
            "swap_total": swap.total,
            "swap_used": swap.used,
            "swap_free": swap.free,
        },
        "disks": disks,
    }


def network_report() -> list[dict[str, Any]]:
    """Bytes and packets in and out per network interface since boot."""
    return [
        {
            "name": name,
            "bytes_in": c.bytes_recv,
            "bytes_out": c.bytes_sent,
            "packets_in": c.packets_recv,
            "packets_out": c.packets_sent,
        }
        for name, c in sorted(psutil.net_io_counters(pernic=True).items())
    ]
