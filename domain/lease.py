"""The lease a node holds on a unit of work while it runs it.

A unit (one attempt of one stage of one job, `job.arq_job_id`) is leased to the node whose
StageStarted began it, from the moment that event was recorded. Each heartbeat of that node that
lists the unit among the ones it runs renews the lease; a heartbeat of any other node, or one
that does not list the unit, renews nothing. The lease expires `ttl` after the last of those
facts (the grant or a renewal). Once it has expired, the unit may be handed on: the node has not
said it still runs it for longer than the cluster agreed to wait (docs/architecture.md, Leases).

Pure functions over facts; reading the facts from the log is adapters/lease_facts.py's work,
acting on an expired lease the reconciler's (reactors/reconciler.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from spool.domain import job
from spool.domain.events import Event
from spool.domain.node import NodeHeartbeat

ATTEMPT_ENDERS: tuple[type[Event], ...] = (
    job.DownloadCompleted,
    job.MuxCompleted,
    job.JobCompleted,
    job.JobSkipped,
    job.StageFailed,
    job.StageInterrupted,
    job.JobFailed,
    job.JobCancelled,
    job.JobRetried,
    job.StageDeferred,
    job.MediaNotReady,
)
"""The job events that end whichever attempt is running. A StageStarted followed by one grants
nothing any more, even when the job comes back to a unit of the same id: a mux or an upload
whose node was lost starts over from download, and the attempts of the stages after it count
from 1 again (`job._advanced`)."""


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A node's hold on one unit of work."""

    unit: str
    """The unit's id (`job.arq_job_id`)."""
    node_id: str
    """The node the unit's StageStarted named."""
    granted_at: datetime
    renewed_at: datetime
    """When the last fact of the lease (its grant, or a renewing heartbeat) was recorded."""
    ttl: timedelta

    @property
    def expires_at(self) -> datetime:
        return self.renewed_at + self.ttl


def granted(job_id: str, started: job.StageStarted, at: datetime, ttl: timedelta) -> Lease:
    """The lease a StageStarted of `job_id`, recorded at `at`, grants its node."""
    unit = job.arq_job_id(job_id, started.run, started.stage, started.attempt)
    return Lease(unit=unit, node_id=started.node_id, granted_at=at, renewed_at=at, ttl=ttl)


def renews(lease: Lease, beat: NodeHeartbeat) -> bool:
    """Whether a heartbeat renews the lease: it is the lease's node's, and lists the unit."""
    return beat.node_id == lease.node_id and lease.unit in beat.running


def renewed(lease: Lease, beat: NodeHeartbeat, at: datetime) -> Lease:
    """The lease after a heartbeat recorded at `at`: renewed to `at` if the beat renews it and
    is later than its last fact, else as it was."""
    if not renews(lease, beat) or at <= lease.renewed_at:
        return lease
    return msgspec.structs.replace(lease, renewed_at=at)


def expired(lease: Lease, now: datetime) -> bool:
    """Whether the lease has run out at `now`: `ttl` has passed since its last fact."""
    return now >= lease.expires_at
