"""Hosts of a multi-host test: a namespace (tests/cluster/network.py) and the `spool` processes
running in it (tests/fixtures/processes.py `SpoolProcesses`, started after `ip netns exec`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.cluster.network import Link
from tests.fixtures.processes import SpoolProcesses

if TYPE_CHECKING:
    from tests.cluster.slow_link import Relay


@dataclass
class Host:
    """A machine of the cluster: its link and its processes, and how its link is slowed
    (tests/cluster/slow_link.py)."""

    name: str
    link: Link
    procs: SpoolProcesses
    relay: Relay | None = None
    """What its PostgreSQL and Redis traffic passes in a `slowable` cluster where netem cannot
    slow its link (tests/cluster/slow_link.py)."""
    slowed_by: str | None = None
    """"netem" or "relay" while slowed."""

    @property
    def address(self) -> str:
        return self.link.address

    def kill(self) -> None:
        """SIGKILL every process in the host's namespace, as a machine that loses power: no
        goodbye, nothing cleaned up; returns once none is left."""
        deadline = time.monotonic() + 10
        while pids := self.link.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.procs.procs.values():
                proc.poll()  # reap our own children, or they linger as zombies in the list
            assert time.monotonic() < deadline, f"{self.name}: {pids} survived SIGKILL"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every process the host runs (SIGTERM, then SIGKILL), then kill whatever is
        left in its namespace."""
        self.procs.stop_all()
        self.kill()
