"""Running scheduled tasks on a node: the arq function `task` and the runner behind it.

The scheduler enqueues `(task, attempt)` on the node's own queue. The runner starts it only if
it is still the task's current attempt on this node, runs its executor under the task's timeout,
watches the stream for a cancel (or the scheduler timing it out), and appends the outcome at
the version it read, so a late or duplicate delivery changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import msgspec

from spool.adapters import log_context
from spool.adapters.account_policy_store import load_policy
from spool.adapters.event_store import EventStore, refusal_reason, refused_for_good
from spool.adapters.repository import Loaded
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.task_store import load_task, tasks
from spool.domain import task
from spool.domain.account_policy import AccountPolicy, still_granted
from spool.domain.errors import ConcurrencyError, InvalidTransition
from spool.domain.events import NO_CAUSE, Event, Metadata, event_id
from spool.domain.source_data import made_safe
from spool.reactors.task_types import (
    EXECUTORS,
    TaskContext,
    TaskError,
    TaskRefused,
    advertised,
    child_environment,
)

log = logging.getLogger("spool.tasks")

WATCH_INTERVAL = 0.5
"""How often a running task's stream is checked for a cancel."""


class TaskHost(Protocol):
    """What the runner needs of its node."""

    store: EventStore
    settings: Settings
    node_id: str
    guard: UrlGuard
    workroot: Path


class TaskRunner:
    """Runs the task attempts this node was assigned, at most `task_concurrency` at once."""

    def __init__(self, host: TaskHost) -> None:
        self.store = host.store
        self.settings = host.settings
        self.node_id = host.node_id
        self.guard = host.guard
        self.workroot = host.workroot / "tasks"
        self.slots = asyncio.Semaphore(max(1, host.settings.task_concurrency))
        self.meta = Metadata(actor=f"node:{host.node_id}", node_id=host.node_id)
        self.types = set(advertised(host.settings))

    async def run(self, task_id: str, attempt: int, cause: Metadata = NO_CAUSE) -> str:
        """Run one attempt if it is still this node's to run; returns what happened.

        Its events carry `cause`'s correlation; TaskStarted is caused by what `cause` names,
        the outcome by TaskStarted.
        """
        async with self.slots:
            state = await load_task(self.store, task_id)
            if state is None or not task.is_current(state, self.node_id, attempt):
                return "stale"
            meta = self.meta.following(cause)
            # Once, at the version read: a clash means another node or a cancel got there.
            once = replace(tasks(self.store), tries=1)
            try:
                started, appended = await once.execute(
                    task_id,
                    lambda s: [made_safe(e) for e in task.start(s, self.node_id, attempt)],
                    meta,
                    known=Loaded(state, state.version),
                )
            except (ConcurrencyError, InvalidTransition):
                return "taken or changed"
            assert started is not None and appended is not None
            meta = msgspec.structs.replace(meta, causation_id=event_id(appended.position))
            return await self._execute(started, attempt, meta)

    async def _record(
        self,
        task_id: str,
        attempt: int,
        decide: Callable[[task.TaskState], list[Event]],
        meta: Metadata,
    ) -> bool:
        """Append an outcome unless the attempt is no longer current (cancel and timeout win)."""

        def if_current(state: task.TaskState) -> list[Event]:
            if not task.is_current(state, self.node_id, attempt):
                return []
            return [made_safe(e) for e in decide(state)]

        try:
            _, appended = await tasks(self.store).execute(task_id, if_current, meta)
        except (ConcurrencyError, InvalidTransition):
            return False  # ChangingTooFast, or an outcome the task no longer takes
        return appended is not None

    async def _execute(self, state: task.TaskState, attempt: int, meta: Metadata) -> str:
        task_id, timeout = state.task_id, state.requirements.timeout_seconds
        executor = EXECUTORS.get(state.task_type)
        if executor is None or state.task_type not in self.types:
            reason = f"Node {self.node_id} does not run {state.task_type} tasks"
            await self._record(
                task_id,
                attempt,
                lambda s: task.fail(
                    s, self.node_id, attempt, reason, retryable=False, blame="node"
                ),
                meta,
            )
            return "refused"
        refused = await self._no_longer_granted(state)
        if refused is not None:
            await self._record(
                task_id,
                attempt,
                lambda s: task.fail(
                    s, self.node_id, attempt, refused, retryable=False, blame="request"
                ),
                meta,
            )
            return "refused"
        ctx = TaskContext(
            self.node_id,
            self.settings,
            self.guard,
            self.workroot / task_id,
            child_environment(os.environ, state.env),
        )

        async def bounded() -> Any:
            async with asyncio.timeout(timeout):
                return await executor(state.payload, ctx)

        work = asyncio.create_task(bounded(), name=f"task:{task_id}:{attempt}")
        moved_on = asyncio.Event()
        watcher = asyncio.create_task(self._watch(state, attempt, work, moved_on))
        began = time.monotonic()
        try:
            result = await work
        except asyncio.CancelledError:
            if moved_on.is_set():
                return "cancelled"
            # The node is stopping: hand the attempt back so that it is retried elsewhere.
            why = f"Node {self.node_id} stopped during the task"
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._record(task_id, attempt, lambda s: task.fail(s, None, attempt, why), meta)
                )
            raise
        except TimeoutError:
            await self._record(task_id, attempt, lambda s: task.time_out(s, attempt), meta)
            return "timeout"
        except TaskError as exc:
            seconds = round(time.monotonic() - began, 4)
            retryable, error = not isinstance(exc, TaskRefused), str(exc)
            await self._record(
                task_id,
                attempt,
                lambda s: task.fail(
                    s,
                    self.node_id,
                    attempt,
                    error,
                    retryable=retryable,
                    seconds=seconds,
                    blame="request",
                ),
                meta,
            )
            return "failed"
        except Exception as exc:
            log.exception("task %s failed unexpectedly", task_id)
            why = f"Internal error: {type(exc).__name__}: {exc}"
            await self._record(
                task_id,
                attempt,
                lambda s: task.fail(s, self.node_id, attempt, why, blame="node"),
                meta,
            )
            return "failed"
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        seconds = round(time.monotonic() - began, 4)
        try:
            done = await self._record(
                task_id,
                attempt,
                lambda s: task.succeed(s, self.node_id, attempt, _json_safe(result), seconds),
                meta,
            )
        except Exception as exc:
            if not refused_for_good(exc):
                raise
            # Left unrecorded, the attempt would sit "running" until its timeout, and each
            # retry would be refused the same way: it fails now, saying why.
            log.error("the result of task %s could not be recorded", task_id, exc_info=exc)
            why = "The task's result could not be recorded: " + refusal_reason(exc)
            await self._record(
                task_id,
                attempt,
                lambda s: task.fail(
                    s,
                    self.node_id,
                    attempt,
                    why,
                    retryable=False,
                    seconds=seconds,
                    blame="cluster",
                ),
                meta,
            )
            return "failed"
        return "success" if done else "stale"

    async def _no_longer_granted(self, state: task.TaskState) -> str | None:
        """Why a task its account's grant allowed may not run now (the grant was revoked or
        narrowed since it was submitted); None when it may."""
        if not state.by_grant:
            return None
        policy = await load_policy(self.store, state.account_id)
        why = still_granted(
            policy or AccountPolicy(account_id=state.account_id), state.task_type, state.env
        )
        return None if why is None else f"Refused: {why}"

    async def _watch(
        self,
        state: task.TaskState,
        attempt: int,
        work: asyncio.Task[Any],
        moved_on: asyncio.Event,
    ) -> None:
        """Stop the work when the task moves on without it: cancelled, or timed out elsewhere."""
        stream, seen = task.stream_id(state.task_id), state.version
        while not work.done():
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                version = await self.store.stream_version(stream)
                if version == seen:
                    continue
                seen = version
                now = await load_task(self.store, state.task_id)
            except Exception as exc:  # a database hiccup must not stop the task
                log.warning("watching task %s failed, will retry: %s", state.task_id, exc)
                continue
            if now is None or not task.is_current(now, self.node_id, attempt):
                moved_on.set()
                work.cancel()
                return


def _json_safe(value: Any) -> Any:
    """A result as JSON can carry it (anything else becomes its repr)."""
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError):
        return repr(value)


async def run_task(
    ctx: dict[str, Any],
    task_id: str,
    attempt: int,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> str:
    """arq entry point (`task`): run one assigned attempt on this node."""
    runner: TaskRunner | None = ctx.get("task_runner")
    if runner is None:
        runner = ctx["task_runner"] = TaskRunner(ctx["node"])
    cause = Metadata(correlation_id=correlation_id, causation_id=causation_id)
    with log_context.bound(task_id=task_id):
        outcome = await runner.run(task_id, attempt, cause)
        log.info("task %s (attempt %d): %s", task_id, attempt, outcome)
    return outcome
