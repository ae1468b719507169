"""A node's sweep of its work folder at start: the files of runs no current unit needs.

A node that was killed, or cut off while its units were handed on, leaves run folders behind
(`<data_dir>/work/<job>/<run>/`) that nothing will ever remove: the job ended, went, or moved on
to another run, stage or node. Before it takes any unit, the node reads each such job from
PostgreSQL and removes the runs `domain/work_files.py` says are no longer needed; a run a
current unit of this node still needs (downloaded here, awaiting its mux or upload) stays, and
so does a failed or cancelled job's for `SPOOL_FAILED_FILES_KEEP` (a retry from mux or upload
reuses it). The node sweeps again every `SPOOL_WORK_SWEEP_INTERVAL` while it runs, passing over
the jobs it has units of, which is what reclaims the files kept for a retry once their time is
up. Every file a unit makes lives in its run's folder, so this is the whole of what units leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spool.adapters.event_store import EventStore
from spool.adapters.job_store import load_job
from spool.domain import work_files

log = logging.getLogger("spool.node")


@dataclass(frozen=True)
class Swept:
    """What a sweep did: run folders (and stray files) removed, their bytes, and runs kept."""

    removed: int = 0
    bytes: int = 0
    kept: int = 0


def _is_job_id(name: str) -> bool:
    """Whether a folder of the work root is named after a job (a UUID), not another part's
    (the tasks' `tasks/`, reactors/tasks.py)."""
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _run_of(entry: Path) -> int | None:
    """The run a job folder's entry holds; None for anything else (nothing a unit reads)."""
    return int(entry.name) if entry.is_dir() and entry.name.isdecimal() else None


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile: nothing to count
                total += (Path(folder) / name).lstat().st_size
    return total


def _remove(path: Path) -> int | None:
    """Remove a run folder or stray file; the bytes it held, or None when it stays (with a
    warning: a leftover the node cannot delete must not keep it from starting)."""
    try:
        size = _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("work folder sweep: could not remove a stale run: %s", exc.strerror or exc)
        return None
    return size


def _jobs_on_disk(workroot: Path) -> dict[str, list[Path]]:
    """Each job folder of `workroot`, by job id, and what it holds."""
    if not workroot.is_dir():
        return {}
    return {
        entry.name: sorted(entry.iterdir())
        for entry in workroot.iterdir()
        if entry.is_dir() and _is_job_id(entry.name)
    }


async def sweep_workroot(
    store: EventStore,
    workroot: Path,
    node_id: str,
    *,
    keep: timedelta = timedelta(0),
    busy: Callable[[], Collection[str]] = frozenset,
) -> Swept:
    """Remove from `workroot` the runs of jobs that no longer need them on node `node_id`, nor
    keep them for a retry from mux or upload (failed less than `keep` ago), and the job folders
    left empty; logs what went (counts and bytes). A run folder a unit of this process is
    filling looks the same: call it before the node takes any unit, or name the jobs of the
    units it runs in `busy` (asked just before each job's folder is judged)."""
    removed = size = kept = 0
    for job_id, entries in (await asyncio.to_thread(_jobs_on_disk, workroot)).items():
        state = await load_job(store, job_id)
        if job_id in busy():
            continue
        now = datetime.now(UTC)
        for entry in entries:
            run = _run_of(entry)
            if run is not None and (
                work_files.still_needed(state, node_id, run)
                or work_files.kept_for_retry(state, node_id, run, now=now, keep=keep)
            ):
                kept += 1
                continue
            freed = await asyncio.to_thread(_remove, entry)
            if freed is not None:
                size += freed
                removed += 1
        with contextlib.suppress(OSError):
            (workroot / job_id).rmdir()  # only when nothing is left in it
    swept = Swept(removed, size, kept)
    log.info(
        "work folder swept: %d stale run folder(s) removed (%d bytes), %d kept for this "
        "node's current units or a retry from mux or upload",
        swept.removed,
        swept.bytes,
        swept.kept,
    )
    return swept
