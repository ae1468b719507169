"""The node health reactor: quarantines a node whose units fail in a row, and releases it when
its probe unit succeeds.

It follows the log under its own checkpoint (`node-health`), beside the pipeline reactor. Each
node's node-side failures since its last success or release (`domain.node_health`: only a
failure blamed on the node counts) live in `node_failures`, written in the transaction that
moves the checkpoint; the decisions (`domain.node.quarantine`, `probe_succeeded`) are appended
to the node's stream in that same transaction, on the node's fold. So a batch applied again
after a crash finds the table as the log left it, and the fold already quarantined or released:
nothing is decided twice, and a restart resumes where the checkpoint stands.

What counts is the order of the log: a success after `NodeQuarantined` releases the node only
when it is the unit the node took as its probe (`NodeProbeStarted`); one of a unit the node ran
before it was quarantined says nothing of the node now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.event_store import EventStore
from spool.adapters.node_store import nodes
from spool.adapters.repository import Repository
from spool.domain import job, node, node_health, task
from spool.domain.events import RecordedEvent
from spool.domain.node_health import UnitFailure

log = logging.getLogger("spool.node_health")

_SUCCESSES = (job.DownloadCompleted, job.MuxCompleted, job.JobCompleted, task.TaskSucceeded)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[UnitFailure]).decode

_ROW = "SELECT failures, quarantined FROM node_failures WHERE node_id = $1"
_SET_FAILURES = """
INSERT INTO node_failures (node_id, failures) VALUES ($1, $2::jsonb)
ON CONFLICT (node_id) DO UPDATE SET failures = excluded.failures
"""
_SET_QUARANTINED = """
INSERT INTO node_failures (node_id, quarantined) VALUES ($1, $2)
ON CONFLICT (node_id) DO UPDATE SET quarantined = excluded.quarantined
"""
_CLEAR = "UPDATE node_failures SET failures = '[]' WHERE node_id = $1 AND failures <> '[]'"
_RELEASED = "UPDATE node_failures SET failures = '[]', quarantined = false WHERE node_id = $1"


def _outcome(e: RecordedEvent) -> tuple[str, str] | None:
    """The node and the unit (its queue id) of a unit's success or failure; None otherwise."""
    ev = e.data
    if isinstance(
        ev, job.StageFailed | job.DownloadCompleted | job.MuxCompleted | job.JobCompleted
    ):
        stage: job.Stage = (
            ev.stage
            if isinstance(ev, job.StageFailed)
            else "download"
            if isinstance(ev, job.DownloadCompleted)
            else "mux"
            if isinstance(ev, job.MuxCompleted)
            else "upload"
        )
        if ev.node_id is None:
            return None
        job_id = e.stream_id.removeprefix("job-")
        return ev.node_id, job.arq_job_id(job_id, ev.run, stage, ev.attempt)
    if isinstance(ev, task.TaskFailed | task.TaskSucceeded):
        if ev.device_id is None:
            return None
        return ev.device_id, task.arq_job_id(e.stream_id.removeprefix("task-"), ev.attempt)
    return None


class NodeHealthReactor:
    """Counts each node's node-side failures in a row; quarantines and releases on the log."""

    name = "node-health"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = frozenset(
        cls.__name__
        for cls in (
            job.StageFailed,
            task.TaskFailed,
            *_SUCCESSES,
            node.NodeQuarantined,
            node.NodeReleased,
        )
    )

    def __init__(self, store: EventStore, quarantine_after: int) -> None:
        self.nodes: Repository[node.NodeState] = nodes(store)
        self.quarantine_after = quarantine_after
        """Node-side failures in a row that quarantine a node; 0 counts none."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            ev = e.data
            if isinstance(ev, node.NodeQuarantined):
                await conn.execute(_SET_QUARANTINED, ev.node_id, True)
                continue
            if isinstance(ev, node.NodeReleased):
                await conn.execute(_RELEASED, ev.node_id)
                continue
            outcome = _outcome(e)
            if outcome is None:
                continue
            node_id, unit = outcome
            if isinstance(ev, job.StageFailed | task.TaskFailed):
                if self.quarantine_after > 0 and node_health.counts_against_node(ev.blame):
                    reason = ev.reason if isinstance(ev, job.StageFailed) else ev.error
                    await self._failed(conn, e, node_id, UnitFailure(unit=unit, reason=reason))
            else:
                await self._succeeded(conn, e, node_id, unit)

    async def _failed(
        self, conn: asyncpg.Connection, e: RecordedEvent, node_id: str, failed: UnitFailure
    ) -> None:
        row = await conn.fetchrow(_ROW, node_id)
        before = _decode(row["failures"]) if row is not None else []
        failures = node_health.recent(before, failed, self.quarantine_after)
        await conn.execute(_SET_FAILURES, node_id, _encode(failures))
        quarantined = row is not None and row["quarantined"]
        if quarantined or not node_health.quarantine_due(failures, self.quarantine_after):
            return
        reason = node_health.quarantine_reason(failures)
        _, appended = await self.nodes.execute(
            node_id,
            lambda s: node.quarantine(s, failures, reason),
            e.causes(actor="node-health"),
            conn=conn,
        )
        if appended is not None:
            log.warning("node %s quarantined: %s", node_id, reason)

    async def _succeeded(
        self, conn: asyncpg.Connection, e: RecordedEvent, node_id: str, unit: str
    ) -> None:
        quarantined = await conn.fetchval(
            "SELECT quarantined FROM node_failures WHERE node_id = $1", node_id
        )
        if not quarantined:
            await conn.execute(_CLEAR, node_id)
            return
        _, appended = await self.nodes.execute(
            node_id,
            lambda s: node.probe_succeeded(s, unit),
            e.causes(actor="node-health"),
            conn=conn,
        )
        if appended is not None:
            log.warning("node %s released: its probe unit %s succeeded", node_id, unit)
