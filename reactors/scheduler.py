"""The task scheduler: places queued tasks on nodes, and takes back what a node cannot finish.

Two parts. A reactor follows the log under the checkpoint `scheduler`: each `TaskAssigned` is
enqueued on its node's own queue under the id `task:<id>:<attempt>` (a replay enqueues nothing
twice), and every task or node event wakes the planner. The planner, on a wake or a tick, reads
queued tasks and online nodes, runs the pure `domain.task.plan`, and appends each assignment at
the task stream's version it read, so two schedulers never assign one task twice. On each pass
it also times out attempts past their `timeout_seconds` (retried while `max_retries` allows: a
node killed mid-task ends this way), sends back to the queue tasks assigned to a node that went
offline, was drained or was quarantined before starting them, and re-enqueues an assignment
that Redis lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import msgspec
import sqlalchemy as sa
from arq.connections import ArqRedis

from spool.adapters import queue as queues
from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.queue import node_queue, unit_status
from spool.adapters.read_models import tasks as task_rows
from spool.adapters.read_models.nodes import online_offers
from spool.adapters.repository import ChangingTooFast
from spool.adapters.task_store import tasks
from spool.domain import node, task
from spool.domain.errors import InvalidTransition
from spool.domain.events import NO_CAUSE, Event, Metadata, RecordedEvent
from spool.reactors.causes import following
from spool.reactors.projection import ProjectionRunner

log = logging.getLogger("spool.scheduler")

LOCK_KEY = "spool:scheduler"
"""One planner at a time across processes (a Postgres advisory lock), so slots are not
over-counted; expected versions alone already prevent a double assignment."""

LOST_AFTER = timedelta(seconds=10)
"""An assignment older than this whose queue entry is gone is enqueued again."""

_decode_requirements = msgspec.json.Decoder(task.Requirements).decode


def _wait(reason: str) -> Callable[[task.TaskState], list[Event]]:
    return lambda s: task.wait(s, reason)


def _unassign(reason: str) -> Callable[[task.TaskState], list[Event]]:
    return lambda s: task.unassign(s, reason) if s.status == "assigned" else []


async def enqueue(
    redis: ArqRedis, task_id: str, attempt: int, node_id: str, cause: Metadata = NO_CAUSE
) -> bool:
    """Put one attempt on its node's queue; False if that attempt is already queued or done.

    The node's events for it carry `cause`'s correlation and causation ids.
    """
    job = await queues.enqueue(
        redis,
        "task",
        task_id,
        attempt,
        queue=node_queue(node_id),
        unit_id=task.arq_job_id(task_id, attempt),
        correlation_id=cause.correlation_id,
        causation_id=cause.causation_id,
    )
    return job is not None


class TaskDispatcher:
    """The log-following half: enqueue each assignment, and wake the planner on any change."""

    name = "scheduler"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = task.EVENT_TYPES | {
        cls.__name__
        for cls in (
            node.NodeStarted,
            node.NodeStopped,
            node.NodeRemoved,
            node.NodeDrainRequested,
            node.NodeUndrained,
            node.NodeQuarantined,
            node.NodeReleased,
        )
    }

    def __init__(self, redis: ArqRedis, wake: asyncio.Event) -> None:
        self.redis = redis
        self.wake = wake

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # Only the last assignment of each task in the batch can still be current.
        latest: dict[str, RecordedEvent] = {}
        for e in events:
            task_id = e.stream_id.removeprefix("task-")
            if isinstance(e.data, task.TaskAssigned):
                latest[task_id] = e
            elif isinstance(e.data, task.TaskUnassigned | task.TaskCancelled):
                latest.pop(task_id, None)
        for task_id, e in latest.items():
            assigned = e.data
            assert isinstance(assigned, task.TaskAssigned)
            cause = e.causes(actor="scheduler")
            await enqueue(self.redis, task_id, assigned.attempt, assigned.device_id, cause)
        if events:
            self.wake.set()


class Scheduler:
    """Runs the dispatcher and the planner until stopped."""

    def __init__(
        self,
        store: EventStore,
        redis: ArqRedis,
        *,
        tick: float = 1.0,
        online_seconds: float | None = None,
        batch_size: int = 500,
    ) -> None:
        self.store = store
        self.redis = redis
        self.tick = tick
        self.online_seconds = online_seconds
        self.batch_size = batch_size
        # Decided once, on the task as the pass saw it: a clash means it moved on by itself.
        self.tasks = replace(tasks(store), tries=1)
        self.wake = asyncio.Event()
        self.follower = ProjectionRunner(
            store, [TaskDispatcher(redis, self.wake)], poll_interval=tick
        )
        # The planner reads the `tasks` table: it brings it up to date itself before each pass.
        self.tasks_view = ProjectionRunner(store, [task_rows.TASKS])

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.follower.run(stop), self._plan_forever(stop))

    async def _plan_forever(self, stop: asyncio.Event) -> None:
        async def plan() -> None:
            for action in await self.pass_once():
                log.info("%s", action)

        await run_periodically(
            plan, interval=self.tick, stop=stop, wake=self.wake, what="scheduler pass", logger=log
        )

    async def pass_once(self) -> list[str]:
        """One planning pass; returns what it did, one line per action."""
        await self.tasks_view.catch_up("tasks")
        # A transaction-scoped lock: it ends with the transaction, whatever happens to the pass,
        # and leaves no session state on the pooled connection.
        async with self.pool.acquire() as lock, lock.transaction():
            if not await lock.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", LOCK_KEY):
                return []  # another scheduler is planning right now
            return await self._pass()

    async def _pass(self) -> list[str]:
        offers = await online_offers(self.pool, self.online_seconds)
        actions = await self._take_back(
            {o.node_id for o in offers},
            {
                o.node_id: "quarantined" if o.quarantined else "drained"
                for o in offers
                if o.draining or o.quarantined
            },
            await self.pool.fetchval("SELECT now()"),
        )
        rows = await task_rows.queued(self.pool, self.batch_size)
        by_id = {r["task_id"]: r for r in rows}
        queued = [
            task.QueuedTask(
                task_id=r["task_id"],
                task_type=r["task_type"],
                priority=r["priority"],
                created_at=r["created_at"],
                requirements=_decode_requirements(r["requirements"]),
            )
            for r in rows
        ]
        placed = task.plan(queued, offers)
        for a in placed.assignments:
            row = by_id[a.task_id]
            attempt = await self._assign(row, a.node_id)
            if attempt is not None:
                actions.append(f"assigned task {a.task_id} to {a.node_id} (attempt {attempt})")
        for task_id, reason in placed.waiting.items():
            row = by_id[task_id]
            if row["reason"] != reason:
                await self._decide(task_id, _wait(reason), at=row["version"])
        return actions

    async def _assign(self, row: asyncpg.Record, node_id: str) -> int | None:
        """Assign at the version the projection showed; None if the task moved on meanwhile."""
        assigned = await self._decide(
            row["task_id"], lambda s: task.assign(s, node_id), at=row["version"]
        )
        return assigned.attempt if assigned is not None else None

    async def _take_back(
        self, online: set[str], closed: dict[str, str], now: datetime
    ) -> list[str]:
        """Time out overdue attempts, requeue what offline, drained or quarantined nodes
        (`closed`: why each takes nothing new) never started, re-enqueue assignments Redis
        lost."""
        actions: list[str] = []
        for r in await task_rows.active(self.pool):
            task_id, device = r["task_id"], r["device_id"]
            if r["overdue"]:
                done = await self._decide(
                    task_id, lambda s: task.time_out(s, s.attempt) if task.overdue(s, now) else []
                )
                if done is not None:
                    actions.append(f"timed out task {task_id} on {device}")
                continue
            if r["status"] != "assigned":
                continue
            if device not in online or device in closed:
                reason = (
                    f"Node {device} went offline before starting the task"
                    if device not in online
                    else f"Node {device} was {closed[device]} before starting the task"
                )
                if await self._decide(task_id, _unassign(reason)) is not None:
                    actions.append(f"requeued task {task_id}: {reason}")
            elif r["assigned_at"] < now - LOST_AFTER:
                unit = task.arq_job_id(task_id, r["attempt"])
                if await unit_status(self.redis, unit) == "missing":
                    cause = await self._following(task_id, r["version"])
                    await enqueue(self.redis, task_id, r["attempt"], device, cause)
                    actions.append(f"re-enqueued {unit}: the queue had lost it")
        return actions

    async def _decide(
        self,
        task_id: str,
        decide: Callable[[task.TaskState], list[Event]],
        *,
        at: int | None = None,
    ) -> task.TaskState | None:
        """Decide once on the task as it stands, following from its latest event; `at`: only on
        the version the projection showed (a task that moved since waits for the next pass).

        The task after the decision, or None when nothing was appended (it did not exist, had
        nothing to do, or moved on by itself).
        """
        loaded = await self.tasks.read(task_id)
        if loaded.state is None or (at is not None and loaded.version != at):
            return None  # the projection lags: plan again on the next pass
        meta = await self._following(task_id, loaded.version)
        try:
            after, appended = await self.tasks.execute(task_id, decide, meta, known=loaded)
        except (ChangingTooFast, InvalidTransition):
            return None  # the task moved on by itself
        return after if appended is not None else None

    async def _following(self, task_id: str, version: int) -> Metadata:
        return await following(self.store, task.stream_id(task_id), version, actor="scheduler")
