"""The process groups this process started and must not leave behind (FFmpeg's, say).

A child started in a session of its own (`start_new_session=True`) is out of reach of the
terminal's Ctrl-C, so that a stop interrupts it on purpose (and records why) instead of the
child dying on its own and the stage taking that for a failure. It is then this process's to
kill: `kill_all` does that, from anywhere, when the process must end at once (a second Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

_lock = threading.Lock()
_groups: set[int] = set()


def adopt(pgid: int) -> None:
    """Remember a child's process group (its pid, for a child that leads its own session)."""
    with _lock:
        _groups.add(pgid)


def release(pgid: int) -> None:
    """Forget a process group that has ended."""
    with _lock:
        _groups.discard(pgid)


def kill(pgid: int) -> None:
    """SIGKILL a whole process group (a child and whatever it started); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_all() -> None:
    """SIGKILL every adopted process group: safe to call from a signal handler or any thread."""
    with _lock:
        groups = list(_groups)
    for pgid in groups:
        kill(pgid)
