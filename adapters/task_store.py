"""Loading a task's exact current state from its stream, and deciding on it with a retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import asyncpg
import msgspec

from spool.adapters.event_store import EventStore
from spool.adapters.history import AsOf
from spool.adapters.node_online import configured_timeout, online
from spool.adapters.repository import ChangingTooFast, Repository
from spool.domain import task
from spool.domain.events import Event, Metadata
from spool.domain.node import Capabilities


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


TaskChangingTooFast = ChangingTooFast
"""Ten decisions in a row lost the race to other writers of the stream."""


async def decide_and_append(
    store: EventStore,
    task_id: str,
    decide: Callable[[task.TaskState], list[Event]],
    meta: Metadata,
) -> task.TaskState | None:
    """Run `decide` on the task through its repository; the new state (None: no such task).

    InvalidTransition from `decide` propagates: the command does not apply.
    """
    return (await tasks(store).execute(task_id, decide, meta)).state


_decode_caps = msgspec.json.Decoder(Capabilities).decode
_decode_counts = msgspec.json.Decoder(dict[str, int]).decode

_ONLINE = f"""
SELECT n.node_id, n.role, n.tags, n.capabilities, n.concurrency,
       (SELECT count(*) FROM tasks t
        WHERE t.device_id = n.node_id AND t.status IN ('assigned', 'running')) AS busy
FROM nodes n
WHERE {online(f"coalesce($1::interval, {configured_timeout()})", "n")}
ORDER BY n.node_id
"""


async def online_offers(
    pool: asyncpg.Pool, online_seconds: float | None = None
) -> list[task.NodeOffer]:
    """Every online node as the scheduler sees it, with the task slots it has in use.

    `online_seconds`: the heartbeat timeout (default: the heartbeat config's, read in the
    same query)."""
    given = None if online_seconds is None else timedelta(seconds=online_seconds)
    rows = await pool.fetch(_ONLINE, given)
    offers = []
    for r in rows:
        caps = _decode_caps(r["capabilities"])
        offers.append(
            task.NodeOffer(
                node_id=r["node_id"],
                role=r["role"],
                tags=list(r["tags"]),
                capabilities=caps,
                task_types=list(caps.task_types),
                internet=caps.internet,
                slots=_decode_counts(r["concurrency"]).get("task", 0),
                busy=r["busy"],
            )
        )
    return offers
