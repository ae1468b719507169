"""Loading a task's exact current state from its stream, and deciding on it with a retry."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.adapters.history import AsOf
from spool.adapters.repository import Repository
from spool.domain import task


def tasks(store: EventStore) -> Repository[task.TaskState]:
    """The tasks' repository. A task stream is short (a dozen events at most in practice), so
    it is folded whole: the answer is exact whatever the projection's lag."""
    return Repository(store, task.AGGREGATE)


async def load_task(store: EventStore, task_id: str) -> task.TaskState | None:
    """The task folded up to its last event; None if it does not exist."""
    return await tasks(store).load(task_id)


async def load_task_as_of(store: EventStore, task_id: str, as_of: AsOf) -> task.TaskState | None:
    """The task as it stood at `as_of`; None if it did not exist yet."""
    return await tasks(store).load(task_id, as_of)
