"""The node health reactor: quarantines a node whose units fail in a row, and releases it when
its probe completes.

It follows the log under its own checkpoint (`node-health`), beside the pipeline reactor. Each
node's node-side failures (`domain.node_health`: only a failure blamed on the node counts)
since it last completed a job or a task, or was released, live in `node_failures`, written in
the transaction that moves the checkpoint; the decisions (`domain.node.quarantine`,
`probe_succeeded`) are appended to the node's stream in that same transaction, on the node's
fold. So a batch applied again
after a crash finds the table as the log left it, and the fold already quarantined or released:
nothing is decided twice, and a restart resumes where the checkpoint stands.

A success is a job completed (its upload: every stage ran on the node) or a task succeeded; a
download or a mux that succeeded alone is none, since a node whose mux always fails still
downloads, and would otherwise never fail twice in a row. What counts is the order of the log:
a job completed after `NodeQuarantined` releases the node only when it is the run the node took
as its probe (`NodeProbeStarted`); one the node began before it was quarantined says nothing of
the node now.
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
_QUARANTINED = "SELECT quarantined FROM node_failures WHERE node_id = $1"
_CLEAR = "UPDATE node_failures SET failures = '[]' WHERE node_id = $1 AND failures <> '[]'"
_RELEASED = "UPDATE node_failures SET failures = '[]', quarantined = false WHERE node_id = $1"


def _failure(e: RecordedEvent) -> tuple[str, UnitFailure] | None:
    """The node and the unit (its queue id, and why it failed) of a failure the node is blamed
    for; None for any other event."""
    ev = e.data
    if isinstance(ev, job.StageFailed) and ev.node_id and node_health.counts_against_node(ev.blame):
        unit = job.arq_job_id(e.stream_id.removeprefix("job-"), ev.run, ev.stage, ev.attempt)
        return ev.node_id, UnitFailure(unit=unit, reason=ev.reason)
    if (
        isinstance(ev, task.TaskFailed)
        and ev.device_id
        and node_health.counts_against_node(ev.blame)
    ):
        unit = task.arq_job_id(e.stream_id.removeprefix("task-"), ev.attempt)
        return ev.device_id, UnitFailure(unit=unit, reason=ev.error)
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
            job.JobCompleted,
            task.TaskSucceeded,
            node.NodeQuarantined,
            node.NodeReleased,
        )
    )

    def __init__(self, store: EventStore, quarantine_after: int) -> None:
        self.nodes: Repository[node.NodeState] = nodes(store)
        self.quarantine_after = quarantine_after
        """Node-side failures in a row that quarantine a node; 0 counts none."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # Nodes that, at this point of the batch, have no failure in a row and no quarantine:
        # another success of theirs changes nothing (a busy node completes many jobs a batch).
        clean: set[str] = set()
        for e in events:
            ev = e.data
            if isinstance(ev, node.NodeQuarantined):
                clean.discard(ev.node_id)
                await conn.execute(_SET_QUARANTINED, ev.node_id, True)
            elif isinstance(ev, node.NodeReleased):
                clean.discard(ev.node_id)
                await conn.execute(_RELEASED, ev.node_id)
            elif isinstance(ev, job.JobCompleted):
                if ev.node_id not in clean:
                    run = (e.stream_id.removeprefix("job-"), ev.run)
                    if await self._succeeded(conn, e, ev.node_id, run):
                        clean.add(ev.node_id)
            elif isinstance(ev, task.TaskSucceeded):
                if ev.device_id not in clean and await self._succeeded(conn, e, ev.device_id, None):
                    clean.add(ev.device_id)
            elif self.quarantine_after > 0 and (failure := _failure(e)) is not None:
                clean.discard(failure[0])
                await self._failed(conn, e, *failure)

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
        self,
        conn: asyncpg.Connection,
        e: RecordedEvent,
        node_id: str,
        run: tuple[str, int] | None,
    ) -> bool:
        """A job's `run` (job id, run) completed on the node, or a task succeeded there (None):
        its failures are no longer in a row; a quarantined node's probe run releases it.
        Returns whether the node is now clean: no failure in a row, not quarantined."""
        if not await conn.fetchval(_QUARANTINED, node_id):
            await conn.execute(_CLEAR, node_id)
            return True
        if run is None:
            return False  # a quarantined node is given no task: one finishing late proves nothing
        job_id, number = run
        _, appended = await self.nodes.execute(
            node_id,
            lambda s: node.probe_succeeded(s, job_id, number),
            e.causes(actor="node-health"),
            conn=conn,
        )
        if appended is not None:
            log.warning("node %s released: its probe, job %s run %d, completed", node_id, *run)
        return False  # its release clears it when the next batch reads NodeReleased
