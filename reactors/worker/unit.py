"""A unit of work a node is running: the job as the node knows it, and how the stage fares."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from spool.domain import job
from spool.domain.events import Metadata


@dataclass
class RunningUnit:
    """A unit of work this node is running now."""

    job_id: str
    stage: job.Stage
    run: int
    attempt: int
    state: job.JobState
    """The job as this node knows it: exact while no one else appends to its stream."""
    since_version: int
    meta: Metadata
    """Metadata of the unit's events: its request's correlation, caused by the dispatching
    event, then (once started) by its own StageStarted."""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    last_progress: float = field(default_factory=time.monotonic)
    progress: job.Progress | None = None
    """The stage's latest progress, sent every heartbeat (adapters/live_progress.py)."""
    stalled: bool = False
    interrupted: bool = False
    """Cut short by the node's own stop, not by the user or a stall."""
    worked: bool = False
    """The stage's work is over: what is left is recording its result (which may be the job's
    moving on, not to be taken for another's)."""
    moved_on: bool = False
    """The job moved on without this unit (cancelled, failed over to another node or attempt):
    `state` is the job as read then, and what the unit does is nobody's any more."""

    @property
    def unit_id(self) -> str:
        return job.arq_job_id(self.job_id, self.run, self.stage, self.attempt)
