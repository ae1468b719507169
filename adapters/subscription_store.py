"""Subscriptions through the repository (the projection row as a snapshot, plus the stream's
tail), and the per-account bounds judged under the account's lock: how many subscriptions it
has, and how many of its checks run at once across every process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

import asyncpg

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import subscriptions as rows
from spool.adapters.repository import ChangingTooFast, Executor, Loaded, Repository
from spool.domain import subscription
from spool.domain.events import Event, Metadata

T = TypeVar("T")


async def _load_row_and_tail(
    store: EventStore, subscription_id: str, executor: Executor
) -> Loaded[subscription.SubscriptionState]:
    """The row as a snapshot and every event after its version folded on: exact, however far
    the projection lags."""
    found = await rows.row_and_tail(executor, subscription_id)
    state = found.state
    for row in found.tail:
        e = store.decode(row)
        state = subscription.evolve(state, e.data, e.recorded_at, e.version)
    return Loaded(state, state.version if state is not None else 0)


def subscriptions(store: EventStore) -> Repository[subscription.SubscriptionState]:
    """The subscriptions' repository: reads start from the `subscriptions` projection row."""
    return Repository(store, subscription.AGGREGATE, loader=_load_row_and_tail)


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('spool-subscriptions:' || $1, 0))"
"""The account's subscriptions lock, held to the end of the transaction that counts and
appends: two requests (or two processes' claims) of one account are judged one after the
other."""

# Every subscription of the account the log holds, deleted ones left out: read from the log
# (each creation event, and a deletion after it), not the projection, so one just created
# counts at once.
_COUNT = f"""
SELECT count(*) FROM events c
WHERE c.stream_id >= $2 AND c.stream_id < $3 AND c.version = 1
  AND c.type = '{subscription.SubscriptionCreated.__name__}' AND c.data->>'account_id' = $1
  AND NOT EXISTS (
      SELECT 1 FROM events d
      WHERE d.stream_id = c.stream_id AND d.type = '{subscription.SubscriptionDeleted.__name__}')
"""

# The account's checks running now: its subscriptions whose last check event is a claim made
# since `$2` (older claims are taken over). The rows name the subscriptions (a new one is not
# due before its row exists); the log says whether each one's last claim has ended.
_RUNNING = f"""
SELECT count(*) FROM subscriptions s
CROSS JOIN LATERAL (
    SELECT type, data FROM events
    WHERE stream_id = $3 || s.subscription_id AND type = ANY($4::text[])
    ORDER BY version DESC LIMIT 1
) AS e
WHERE s.account_id = $1 AND e.type = '{subscription.CheckStarted.__name__}'
  AND (e.data->>'started_at')::timestamptz >= $2
"""
_CHECK_EVENTS = [subscription.CheckStarted.__name__, subscription.CheckFinished.__name__]


async def in_account_turn(
    store: EventStore, account_id: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`work` in a transaction holding the account's subscriptions lock."""
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK, account_id)
        return await work(conn)


async def count_of(conn: asyncpg.Connection, account_id: str) -> int:
    """How many subscriptions (not deleted) the account has, exact to the log."""
    prefix = subscription.stream_id("")
    low, high = prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return int(await conn.fetchval(_COUNT, account_id, low, high))


async def running_checks(conn: asyncpg.Connection, account_id: str, since: datetime) -> int:
    """How many of the account's checks run now: claimed since `since` and not finished."""
    return int(
        await conn.fetchval(_RUNNING, account_id, since, subscription.stream_id(""), _CHECK_EVENTS)
    )


async def claim_check(
    store: EventStore,
    subscription_id: str,
    account_id: str,
    decide: Callable[[subscription.SubscriptionState], list[Event]],
    meta: Metadata,
    *,
    limit: int,
    since: datetime,
) -> subscription.SubscriptionState | None:
    """Append the claim `decide` makes, if the account has fewer than `limit` checks running
    (claimed since `since`); the subscription after it, or None when nothing was claimed (not
    due any more, another process claimed it, or the account's checks are all running)."""
    repository = replace(subscriptions(store), tries=1)

    async def claim(conn: asyncpg.Connection) -> subscription.SubscriptionState | None:
        if await running_checks(conn, account_id, since) >= limit:
            return None
        done = await repository.execute(subscription_id, decide, meta, conn=conn)
        return done.state if done.appended is not None else None

    try:
        return await in_account_turn(store, account_id, claim)
    except ChangingTooFast:  # the stream moved since the read: another process claimed it
        return None
