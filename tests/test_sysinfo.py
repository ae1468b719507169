"""What a node and the health socket report about the machine: real CPU figures from the first
sample on, and each disk once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spool.adapters import sysinfo

_FIRST_SAMPLES = """
from pathlib import Path
from spool.adapters import sysinfo
print(sysinfo.usage(Path(".")).cpu_percent, max(c["usage"] for c in sysinfo.host_report()["cpus"]))
"""


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """One CPU kept fully busy by a spinning process while the test runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def test_the_first_cpu_sample_of_a_fresh_process_is_a_real_measurement(
    busy_cpu: None, repo_root: Path
) -> None:
    # A fresh interpreter: its first heartbeat and its first `sysinfo` answer, with one CPU
    # spinning. psutil's own first call would say 0.0 for both.
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_SAMPLES],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    overall, busiest_cpu = map(float, done.stdout.split())
    assert overall > 0.0
    assert busiest_cpu > 0.0


def test_a_sample_right_after_another_still_spans_the_minimum_interval() -> None:
    slept: list[float] = []
    meter = sysinfo.CpuMeter(min_interval=0.2, sleep=slept.append)

    meter.percent()
    meter.percpu()

    assert len(slept) == 2
    assert all(0.0 < s <= 0.2 for s in slept)


def test_each_disk_appears_once_at_its_shortest_mount_point() -> None:
    # What a container typically sees: its overlay root, and its host's disk bind-mounted at
    # several files; on the host a second mount of the same device.
    mounts = [
        ("overlay", "/"),
        ("/dev/vda1", "/etc/resolv.conf"),
        ("/dev/vda1", "/etc/hostname"),
        ("/dev/vda1", "/etc/hosts"),
        ("/dev/vdb", "/data"),
        ("/dev/vdb", "/srv/data-bind"),
    ]

    assert sysinfo.distinct_disks(mounts) == [
        ("overlay", "/"),
        ("/dev/vdb", "/data"),
        ("/dev/vda1", "/etc/hosts"),
    ]


def test_the_host_report_names_each_disk_once() -> None:
    names = [disk["name"] for disk in sysinfo.host_report()["disks"]]

    assert names and len(names) == len(set(names))
