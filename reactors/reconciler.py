"""The reconciler: no accepted job is ever stranded.

Redis is only a transport. Every pass compares each unfinished job in the log with what Redis
holds and what live nodes say they run, and repairs the difference: a unit Redis lost is
enqueued again (same id), a unit whose worker or node died is failed so its retry runs. A
suspicion must hold on two passes in a row before anything is done, so a unit caught between
queue and heartbeat is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import timedelta

from arq.connections import ArqRedis

from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs, load_job
from spool.adapters.periodic import run_periodically
from spool.adapters.queue import Dispatch, dispatch, unit_status
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.repository import ChangingTooFast, Loaded
from spool.adapters.settings import Settings
from spool.domain import job, node
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event
from spool.reactors.causes import following

log = logging.getLogger("spool.reconciler")


_UNAPPLIED_HEARTBEAT = f"""
SELECT EXISTS (
    SELECT 1 FROM events
    WHERE (tx, position) > ($1::text::xid8, $2::bigint) AND type = '{node.NodeHeartbeat.__name__}'
    AND recorded_at < now() - $3::interval
)
"""
"""Whether a heartbeat older than `$3` lies past the nodes projection's checkpoint (an index
range scan from the checkpoint: the log's tail, not the log)."""


class Reconciler:
    def __init__(self, store: EventStore, redis: ArqRedis, settings: Settings) -> None:
        self.store = store
        self.redis = redis
        self.settings = settings
        self._suspects: dict[str, str] = {}
        self._quiet_until = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile every `reconcile_interval` seconds until `stop` is set."""
        await run_periodically(
            self.reconcile_once,
            interval=self.settings.reconcile_interval,
            stop=stop,
            what="reconcile pass",
            on_error=self._after_outage,
            logger=log,
        )

    def _after_outage(self, _exc: Exception) -> None:
        # Nodes could not beat through the outage either: give them a node timeout to be heard
        # again before any looks dead.
        self._quiet_until = time.monotonic() + self.settings.node_timeout

    async def reconcile_once(self) -> list[str]:
        """One pass; returns what it did, one line per action."""
        if time.monotonic() < self._quiet_until:
            self._suspects = {}
            return []
        if await self._nodes_behind():
            # Liveness is read from the nodes projection: while it trails the log, a busy node
            # looks dead and its running units lost. Judge nothing until it has caught up.
            self._suspects = {}
            return []
        live = await node_rows.running_units(
            self.store.pool, timedelta(seconds=self.settings.node_timeout)
        )
        running = set().union(*live.values()) if live else set()
        quiet = await job_rows.unfinished_quiet_for(
            self.store.pool, timedelta(seconds=max(2.0, 2 * self.settings.heartbeat_interval))
        )
        suspects: dict[str, str] = {}
        actions: list[str] = []
        for job_id in quiet:
            state = await load_job(self.store, job_id)
            if state is None or state.terminal or state.held:
                continue  # a held job waits for its batch to start: nothing is stranded
            unit = job.arq_job_id(state.job_id, state.run, state.stage, state.attempt)
            if unit in running:
                continue
            verdict = await self._diagnose(state, unit, live)
            if verdict is None:
                continue
            if self._suspects.get(unit) != verdict:
                suspects[unit] = verdict  # act only if the next pass sees the same
                continue
            action = await self._repair(state, unit, verdict)
            if action:
                actions.append(action)
                log.info("%s", action)
        self._suspects = suspects
        return actions

    async def _nodes_behind(self) -> bool:
        at = await self.store.pool.fetchrow(
            "SELECT tx, position FROM checkpoints WHERE name = 'nodes'"
        )
        if at is None:
            return True  # the nodes projection has never run
        behind: bool = await self.store.pool.fetchval(
            _UNAPPLIED_HEARTBEAT,
            str(at["tx"]),
            at["position"],
            timedelta(seconds=max(2.0, 2 * self.settings.heartbeat_interval)),
        )
        return behind

    async def _diagnose(
        self, state: job.JobState, unit: str, live: dict[str, set[str]]
    ) -> str | None:
        if state.stage != "download" and state.node_id not in live:
            return "node lost"
        status = await unit_status(self.redis, unit)
        if status == "missing":
            return "missing"
        if status == "in_progress":
            return "worker lost"
        if status == "done":
            return "ended without result"
        return None  # queued: waiting for a free worker is not a fault

    async def _repair(self, state: job.JobState, unit: str, verdict: str) -> str | None:
        # The repair follows from the job's last event: its request's correlation, caused by it.
        meta = await following(
            self.store, job.stream_id(state.job_id), state.version, actor="reconciler"
        )
        if verdict == "missing":
            d = Dispatch(
                state.job_id,
                state.run,
                state.stage,
                state.attempt,
                state.node_id,
                correlation_id=meta.correlation_id,
                causation_id=meta.causation_id,
            )
            await dispatch(self.redis, d)
            return f"re-dispatched {unit}: the queue had lost it"
        reasons = {
            "node lost": f"Node {state.node_id} stopped answering during {state.stage}",
            "worker lost": f"The worker running {state.stage} stopped answering",
            "ended without result": f"The {state.stage} stage ended without a result",
        }

        def fail(current: job.JobState) -> list[Event]:
            return job.fail_stage(
                current,
                current.stage,
                current.run,
                current.attempt,
                node_id=current.node_id,
                reason=reasons[verdict],
                retryable=True,
                max_attempts=self.settings.stage_attempts,
                backoff=0.0,
                restart_from_download=verdict == "node lost",
            )

        # Decided on the state the verdict was reached on, once: a clash means the job moved on
        # by itself, and the verdict no longer holds.
        repair = replace(jobs(self.store), tries=1)
        try:
            await repair.execute(state.job_id, fail, meta, known=Loaded(state, state.version))
        except (ChangingTooFast, InvalidTransition):
            return None  # the job moved on by itself
        return f"failed {unit} ({verdict}) so that it is retried"
