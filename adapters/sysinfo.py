"""The machine, as psutil sees it: identity, capabilities and current usage."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from spool.domain.node import Capabilities, Usage

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


class CpuMeter:
    """CPU use measured between two samples of the kernel's counters, never from one alone.

    `psutil.cpu_percent(interval=None)` answers 0.0 to its first call in a process (it has
    nothing to compare with) and shares one previous sample between all its callers, so a
    call just after another one measures a few milliseconds. A meter keeps its own previous
    sample; when it has none, or that sample is younger than `min_interval`, it waits out the
    rest of `min_interval` first, so every answer covers at least that long. The first answer
    of a process therefore costs `min_interval` seconds of waiting; later ones cost nothing.
    """

    def __init__(
        self,
        *,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last: tuple[float, list[Any]] | None = None

    def _span(self) -> tuple[list[Any], list[Any]]:
        """Per-CPU counters at the start and the end of a span of at least `min_interval`."""
        with self._lock:
            now, times = self._clock(), psutil.cpu_times(percpu=True)
            since, base = self._last if self._last is not None else (now, times)
            if now - since < self._min_interval:
                self._sleep(self._min_interval - (now - since))
                now, times = self._clock(), psutil.cpu_times(percpu=True)
            self._last = (now, times)
            return base, times

    def percent(self) -> float:
        """Use of all CPUs together, in percent, since the previous answer."""
        before, after = self._span()
        return _busy_percent(before, after)

    def percpu(self) -> list[float]:
        """Use of each CPU, in percent, since the previous answer."""
        before, after = self._span()
        return [_busy_percent([b], [a]) for b, a in zip(before, after, strict=False)]


def _busy_percent(before: Sequence[Any], after: Sequence[Any]) -> float:
    """Busy share of the time between two sets of CPU counters (psutil's own formula: guest
    time is already in user time, and idle includes waiting for I/O)."""

    def total(times: Sequence[Any]) -> float:
        return float(
            sum(sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0) for t in times)
        )

    def idle(times: Sequence[Any]) -> float:
        return float(sum(t.idle + getattr(t, "iowait", 0.0) for t in times))

    elapsed = total(after) - total(before)
    if elapsed <= 0:
        return 0.0
    busy = elapsed - (idle(after) - idle(before))
    return round(min(100.0, max(0.0, 100.0 * busy / elapsed)), 1)


_CPU = CpuMeter()
"""The process's meter: node heartbeats, `system_info` tasks and the health socket share it."""


def usage(data_dir: Path) -> Usage:
    """Current CPU, memory and disk use; CPU is the average since the previous call (over at
    least a tenth of a second: the first call of a process waits that long)."""
    memory = psutil.virtual_memory()
    free, total = disk_space(data_dir)
    return Usage(
        cpu_percent=_CPU.percent(),
        memory_used=memory.total - memory.available,
        memory_total=memory.total,
        disk_free=free,
        disk_total=total,
    )


def disk_space(data_dir: Path) -> tuple[int, int]:
    """Free and total bytes of the disk that holds `data_dir` (the home's before it exists)."""
    disk = shutil.disk_usage(data_dir if data_dir.exists() else Path.home())
    return disk.free, disk.total


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
        for i, usage in enumerate(_CPU.percpu(), start=1)
    ]
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    used = memory.total - memory.available  # so that used + free = total, as the seed shows
    disks = []
    mounts = [(part.device, part.mountpoint) for part in psutil.disk_partitions(all=False)]
    for device, mountpoint in distinct_disks(mounts):
        try:
            disk = psutil.disk_usage(mountpoint)
        except OSError:
            continue  # a mount we may not read (or one that vanished) is left out
        disks.append({"free": disk.free, "name": device, "total": disk.total})
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


def distinct_disks(mounts: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each device once, at its shortest mount point, from `(device, mountpoint)` pairs.

    A container sees its disk at `/` and again at every bind-mounted file (`/etc/hosts`,
    `/etc/resolv.conf`), and a bind mount on a host repeats a device too: all one disk.
    """
    seen: dict[str, tuple[str, str]] = {}
    for device, mountpoint in sorted(mounts, key=lambda m: (len(m[1]), m[1])):
        seen.setdefault(device, (device, mountpoint))
    return list(seen.values())


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
