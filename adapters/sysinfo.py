"""The machine, as psutil sees it: identity, capabilities and current usage."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path

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
