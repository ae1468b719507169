"""A node's health: who a failed unit is blamed on, when failures in a row quarantine a node,
when a quarantined node may try one probe job, and a free-disk floor.

Pure rules; the node health reactor (reactors/node_health.py) applies them over the log, the
node's download worker (reactors/worker/drain.py) over its own disk and its node's facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

import msgspec

Blame = Literal["node", "source", "storage", "request", "cluster"]
"""Whose fault a failed unit is. "node": the machine that ran it (an internal error, its files
gone, a stalled mux); "source": the media's origin (an HTTP error, a
timeout, unplayable or unsupported media); "storage": the user's object storage (an upload the
storage refused); "request": the job or task itself (over its quota, a task's own error);
"cluster": the shared services (a result the event store could not record). Only "node" counts
toward a quarantine."""

NODE_SIDE: frozenset[Blame] = frozenset({"node"})

REASON_CHARS = 200
"""Of each failure's reason, what a quarantine's reason keeps: enough to tell, never a dump."""


def counts_against_node(blame: Blame | None) -> bool:
    """Whether a failure with this blame counts toward its node's quarantine. One with none does
    not: recorded before failures carried a blame (it cannot be told from a source's), or the
    reconciler's verdict on a lost node or worker (the node is gone, or restarts clean)."""
    return blame in NODE_SIDE


class UnitFailure(msgspec.Struct, frozen=True, kw_only=True):
    """One failed unit of a node, as a quarantine names it: the unit's id and why it failed."""

    unit: str
    reason: str


def recent(failures: Sequence[UnitFailure], failed: UnitFailure, keep: int) -> list[UnitFailure]:
    """The node's failures in a row after one more, the newest last, at most `keep` of them."""
    cut = UnitFailure(unit=failed.unit, reason=failed.reason[:REASON_CHARS])
    return [*failures, cut][-max(keep, 1) :]


def quarantine_due(failures: Sequence[UnitFailure], after: int) -> bool:
    """Whether `failures` in a row quarantine a node; `after` 0 turns quarantine off."""
    return after > 0 and len(failures) >= after


def quarantine_reason(failures: Sequence[UnitFailure]) -> str:
    """What a quarantine says of itself: how many units failed in a row, the last one's reason."""
    last = failures[-1].reason if failures else "unknown"
    units = "1 unit" if len(failures) == 1 else f"{len(failures)} units"
    return f"{units} failed in a row on this node; the last: {last}"


def probe_due(
    quarantined_since: datetime, last_probe_at: datetime | None, now: datetime, interval: float
) -> bool:
    """Whether a quarantined node may take its next probe (one job's download): `interval`
    seconds after it was quarantined, and after its last probe began (whatever its outcome)."""
    since = max(quarantined_since, last_probe_at) if last_probe_at else quarantined_since
    return now - since >= timedelta(seconds=interval)


# -- the free-disk floor ----------------------------------------------------------------------


class DiskFloor(msgspec.Struct, frozen=True):
    """Free disk a node keeps: `bytes` of it, or `percent` of the disk (one of them; 0: none)."""

    bytes: int = 0
    percent: float = 0.0

    def of(self, total: int) -> int:
        """The floor in bytes on a disk of `total` bytes."""
        return self.bytes if not self.percent else int(total * self.percent / 100)


_FLOOR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_disk_floor(text: str) -> DiskFloor:
    """`SPOOL_DISK_FLOOR`: a whole number of bytes ("5000000000") or a percent of the disk
    ("5%"); "0" or "" means no floor. ValueError for anything else."""
    if not text.strip():
        return DiskFloor()
    found = _FLOOR.match(text)
    if found is None:
        raise ValueError(f"disk floor {text!r} is neither bytes (5000000000) nor a percent (5%)")
    number, percent = found.groups()
    if percent:
        if float(number) > 100:
            raise ValueError(f"disk floor {text!r}: a percent is at most 100")
        return DiskFloor(percent=float(number))
    if "." in number:
        raise ValueError(f"disk floor {text!r}: bytes are a whole number")
    return DiskFloor(bytes=int(number))


def below_disk_floor(free: int, total: int, floor: DiskFloor) -> str | None:
    """Why a node with `free` of `total` bytes free takes no download; None above its floor."""
    least = floor.of(total)
    if least <= 0 or free >= least:
        return None
    return f"free disk {_size(free)} is below the floor of {_size(least)}"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
