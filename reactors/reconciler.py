"""The reconciler: no accepted job is ever stranded.

Redis is only a transport. Every pass looks at each unfinished job in the log and repairs what
is stuck:

- A unit a node has started runs under that node's lease (domain/lease.py), judged from the
  log alone (adapters/lease_facts.py): its StageStarted grants it, each heartbeat of the node
  that lists the unit renews it. While the lease holds the unit is left alone, whatever Redis
  says; once it has expired the unit is failed so that its retry runs, from download when the
  node is gone with the files of a mux or an upload. That verdict is acted on at the first pass
  that reaches it: it is read from facts already recorded, and the lease's time to live is the
  margin the two-pass rule below was for, so no second look is needed.
- A unit no node has started is judged by what Redis holds: lost from the queue, or refused by
  arq for what it still holds of an earlier unit of the same id (a mux or an upload comes back
  as attempt 1 after a restart from download), it is enqueued again (same id); taken by a
  worker that no live node lists for a lease's time, or ended in Redis without moving the job
  on, it is failed so that its retry runs. Those verdicts read Redis and the nodes projection
  at different moments, so they must hold on two passes in a row before anything is done: a
  unit caught between queue and heartbeat is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis

from spool.adapters import dispatch_queue, lease_facts
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs, load_jobs
from spool.adapters.periodic import run_periodically
from spool.adapters.queue import (
    Dispatch,
    dispatch,
    enqueued_at,
    forget,
    unit_status,
)
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.read_models import pauses
from spool.adapters.repository import ChangingTooFast, Loaded
from spool.adapters.settings import Settings
from spool.domain import job, lease, node, pause
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event
from spool.reactors.causes import following

log = logging.getLogger("spool.reconciler")

LOAD_AT_ONCE = 200
"""Unfinished jobs a pass reads in one query. A verdict is acted on at the version it was
reached on, so a job that moved on since its chunk was read only loses its verdict."""


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
        self._outage = False

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
        self._outage = True

    async def reconcile_once(self) -> list[str]:
        """One pass; returns what it did, one line per action."""
        if self._outage:
            # Nodes could not beat through the outage either, so no lease was renewed: give
            # them a lease's time from when the database answers again to be heard before any
            # lease counts as expired. Counted from the failed pass instead, the quiet ran out
            # while the outage went on, and a node still reconnecting had its units taken
            # while it ran them (tests/faults/test_postgres_outage.py).
            await lease_facts.database_now(self.store)  # raises while it is still down
            self._outage = False
            self._quiet_until = time.monotonic() + self.settings.resolved_lease_ttl()
        if time.monotonic() < self._quiet_until:
            self._suspects = {}
            return []
        ttl = timedelta(seconds=self.settings.resolved_lease_ttl())
        quiet = timedelta(seconds=max(2.0, 2 * self.settings.heartbeat_interval))
        now = await lease_facts.database_now(self.store)
        # What live nodes say they run, for units no node has started; None while the nodes
        # projection trails the log (a busy node would look dead): such units wait a pass.
        live = None
        if not await self._nodes_behind():
            live = await node_rows.running_units(
                self.store.pool, timedelta(seconds=self.settings.node_timeout)
            )
        suspects: dict[str, str] = {}
        actions: list[str] = []
        unfinished = await job_rows.unfinished(self.store.pool, quiet)
        states: dict[str, job.JobState] = {}
        in_line: set[str] = set()
        paused: set[pause.Scope] = set()
        for n, (job_id, is_quiet) in enumerate(unfinished):
            if n % LOAD_AT_ONCE == 0:  # the jobs read a chunk at a time, each exact
                chunk = [j for j, _ in unfinished[n : n + LOAD_AT_ONCE]]
                states = await load_jobs(self.store, chunk)
                in_line = await dispatch_queue.waiting_ids(self.store.pool, chunk)
                paused = await pauses.paused_scopes(self.store.pool, states.values())
            state = states.get(job_id)
            if state is None or state.terminal or state.held:
                continue  # a held job waits for its batch to start: nothing is stranded
            if job_id in in_line and state.status == "Pending":
                continue  # waits in the pipeline's line for room: Redis is not to hold it yet
            if not state.unit_started and pause.paused_by(state, paused) is not None:
                continue  # a paused job's next unit waits for its resume, which dispatches it
            unit = job.arq_job_id(state.job_id, state.run, state.stage, state.attempt)
            held = None
            if state.status == "Processing":  # a Pending job's first unit has not started
                held = await lease_facts.granted(self.store, state, ttl)
            action: str | None = None
            if held is not None:
                action = await self._judge_lease(state, held, now)
            elif is_quiet and live is not None:
                verdict = await self._diagnose(state, unit, live, now, ttl)
                if verdict is None:
                    continue
                if self._suspects.get(unit) != verdict:
                    suspects[unit] = verdict  # act only if the next pass sees the same
                    continue
                action = await self._repair(state, unit, verdict, now)
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

    async def _judge_lease(
        self, state: job.JobState, held: lease.Lease, now: datetime
    ) -> str | None:
        """Hand the started unit on if its node's lease on it has expired at `now`."""
        if not lease.expired(held, now):
            return None  # its grant alone still holds it: no heartbeat need be read
        held = await lease_facts.renewed(self.store, held, now)
        if not lease.expired(held, now):
            return None
        # The retry of a mux or an upload goes to the node that holds the files: only while
        # that node is still heard from (it restarted, or dropped the unit) can it take it.
        gone = not await lease_facts.heard_since(self.store, held.node_id, now - held.ttl, now)
        since = held.renewed_at.astimezone(UTC).strftime("%H:%M:%S")
        reason = (
            f"The lease of node {held.node_id} on {state.stage} expired: no heartbeat of it "
            f"has listed the unit since {since} UTC (lease {held.ttl.total_seconds():g} s)"
        )
        failed = await self._fail(
            state,
            reason,
            restart_from_download=gone and state.stage != "download",
            lease_expired=True,
        )
        if not failed:
            return None
        return f"failed {held.unit} (lease of node {held.node_id} expired) so that it is retried"

    async def _diagnose(
        self,
        state: job.JobState,
        unit: str,
        live: dict[str, set[str]],
        now: datetime,
        ttl: timedelta,
    ) -> str | None:
        """What is wrong with a unit no node has started, if anything."""
        if state.stage != "download" and not await lease_facts.heard_since(
            self.store, state.node_id or "", now - ttl, now
        ):
            return "node lost"  # its files are on a node that is gone: it can never start
        if any(unit in units for units in live.values()):
            return None  # taken, waiting for a slot on a live node
        status = await unit_status(self.redis, unit)
        if status == "missing":
            return "missing"
        if state.stage != "download" and await self._of_an_earlier_unit(state, unit):
            # A mux or an upload again after a restart from download has its earlier unit's
            # id; arq dropped its dispatch for what it still holds of that one.
            return "earlier unit"
        if status == "in_progress" and now - state.updated_at >= ttl:
            # Taken by a worker no live node has listed for as long as a lease lasts.
            return "worker lost"
        if status == "done":
            return "ended without result"
        return None  # queued: waiting for a free worker is not a fault

    async def _of_an_earlier_unit(self, state: job.JobState, unit: str) -> bool:
        """Whether what Redis holds under the unit's id was enqueued before the unit became
        the job's current one."""
        enqueued = await enqueued_at(self.redis, unit)
        since = await lease_facts.current_since(self.store, state.job_id)
        return enqueued is not None and since is not None and enqueued < since

    async def _repair(
        self, state: job.JobState, unit: str, verdict: str, now: datetime
    ) -> str | None:
        if verdict == "earlier unit":
            await forget(self.redis, unit)
        if verdict in ("missing", "earlier unit"):
            # The repair follows from the job's last event: its request's correlation.
            meta = await following(
                self.store, job.stream_id(state.job_id), state.version, actor="reconciler"
            )
            # A job waiting for media not out yet keeps its wait (domain/not_ready.py).
            wait = (state.next_try_at - now).total_seconds() if state.next_try_at else 0.0
            d = Dispatch(
                state.job_id,
                state.run,
                state.stage,
                state.attempt,
                state.node_id,
                defer=max(0.0, wait),
                correlation_id=meta.correlation_id,
                causation_id=meta.causation_id,
            )
            await dispatch(self.redis, d)
            if verdict == "earlier unit":
                return f"re-dispatched {unit}: the queue held an earlier unit of its id"
            return f"re-dispatched {unit}: the queue had lost it"
        reasons = {
            "node lost": f"Node {state.node_id} stopped answering before {state.stage} started",
            "worker lost": f"The worker that took {state.stage} stopped answering",
            "ended without result": f"The {state.stage} stage ended without a result",
        }
        failed = await self._fail(
            state, reasons[verdict], restart_from_download=verdict == "node lost"
        )
        return f"failed {unit} ({verdict}) so that it is retried" if failed else None

    async def _fail(
        self,
        state: job.JobState,
        reason: str,
        *,
        restart_from_download: bool,
        lease_expired: bool = False,
    ) -> bool:
        """Fail the job's current attempt, retryably; False if the job moved on by itself."""
        # The failure follows from the job's last event: its request's correlation, caused by it.
        meta = await following(
            self.store, job.stream_id(state.job_id), state.version, actor="reconciler"
        )

        def fail(current: job.JobState) -> list[Event]:
            return job.fail_stage(
                current,
                current.stage,
                current.run,
                current.attempt,
                node_id=current.node_id,
                reason=reason,
                retryable=True,
                max_attempts=self.settings.stage_attempts,
                backoff=0.0,
                restart_from_download=restart_from_download,
                lease_expired=lease_expired,
            )

        # Decided on the state the verdict was reached on, once: a clash means the job moved on
        # by itself, and the verdict no longer holds.
        repair = replace(jobs(self.store), tries=1)
        try:
            await repair.execute(state.job_id, fail, meta, known=Loaded(state, state.version))
        except (ChangingTooFast, InvalidTransition):
            return False
        return True
