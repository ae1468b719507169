"""Task commands: submit a task (within the account's grants), cancel it, retry it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from spool.adapters.account_policy_store import load_policy
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.repository import ChangingTooFast
from spool.adapters.task_store import tasks
from spool.application.idempotency import Idempotent, append_once
from spool.domain import task
from spool.domain.account_policy import CODE_TASK_TYPES, AccountPolicy, task_env
from spool.domain.errors import Conflict, NotFound
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.idempotency import RequestRecorded


class NewTask(NamedTuple):
    """A task as submitted, its values not yet judged (`task.submit` does)."""

    task_type: str
    payload: dict[str, Any]
    priority: str
    requirements: task.Requirements
    metadata: dict[str, Any] | None


class TaskCreated(msgspec.Struct):
    """What an idempotency record keeps of a submitted task: the task (its state is live)."""

    task_id: str


class Submitted(NamedTuple):
    """The task a submission made, or the one the first copy of the request made."""

    task_id: str
    replayed: bool


def recorded_task(first: RequestRecorded) -> str:
    """The task the recorded first request submitted."""
    return msgspec.json.decode(first.answer, type=TaskCreated).task_id


async def allowed_env(
    store: EventStore, account_id: str, *, admin: bool, new: NewTask
) -> list[str]:
    """What the account's policy lets this task see; PolicyRefused when it may not run at all,
    InvalidPolicy for a bad `payload.env`."""
    if new.priority not in task.PRIORITY_RANK:
        return []  # refused as a bad value by `task.submit`
    policy = await load_policy(store, account_id)
    return task_env(
        policy or AccountPolicy(account_id=account_id),
        admin=admin,
        task_type=new.task_type,
        priority=new.priority,
        payload_env=new.payload.get("env"),
    )


async def submit_task(
    store: EventStore,
    account_id: str,
    new: NewTask,
    *,
    admin: bool,
    idem: Idempotent | None,
    meta: Metadata,
) -> Submitted:
    """Submit a task the account may run; InvalidTask for what could never run."""
    env = await allowed_env(store, account_id, admin=admin, new=new)
    task_id = str(uuid.uuid4())
    events = task.submit(
        task_id=task_id,
        account_id=account_id,
        task_type=new.task_type,
        payload=new.payload,
        priority=new.priority,
        requirements=new.requirements,
        metadata=new.metadata,
        env=env,
        by_grant=new.task_type in CODE_TASK_TYPES and not admin,
    )
    created = StreamAppend(task.stream_id(task_id), [NewEvent(e, meta) for e in events], 0)
    winner = await append_once(store, [created], TaskCreated(task_id), idem, meta)
    if winner is not None:
        return Submitted(recorded_task(winner), replayed=True)
    return Submitted(task_id, replayed=False)


async def visible_task(
    store: EventStore, account_id: str, raw_id: str, *, admin: bool
) -> task.TaskState:
    """A task of the account's (an admin: any task), exact to its last event; NotFound else."""
    try:
        task_id = str(uuid.UUID(raw_id))
    except ValueError:
        raise NotFound(f"Task {raw_id!r} not found") from None
    found = await tasks(store).load(task_id)
    if found is None or not (admin or found.account_id == account_id):
        raise NotFound(f"Task {raw_id!r} not found")
    return found


async def decide(
    store: EventStore,
    account_id: str,
    task_id: str,
    decision: Callable[[task.TaskState], list[Event]],
    meta: Metadata,
    *,
    admin: bool,
) -> task.TaskState:
    """Run a command on a task the caller may see; InvalidTransition when it does not apply."""
    owned = await visible_task(store, account_id, task_id, admin=admin)
    try:
        done = await tasks(store).execute(owned.task_id, decision, meta)
    except ChangingTooFast:
        raise Conflict("The task is changing too fast; try again") from None
    assert done.state is not None
    return done.state


async def cancel_task(
    store: EventStore, account_id: str, task_id: str, meta: Metadata, *, admin: bool
) -> task.TaskState:
    """Cancel a queued, assigned or running task; its node stops a running one."""
    return await decide(store, account_id, task_id, task.cancel, meta, admin=admin)


async def retry_task(
    store: EventStore, account_id: str, task_id: str, meta: Metadata, *, admin: bool
) -> task.TaskState:
    """Queue a failed, timed-out or cancelled task again."""
    return await decide(store, account_id, task_id, task.retry, meta, admin=admin)
