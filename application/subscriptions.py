"""Subscription commands: create one (within the account's bound), change, pause, resume and
delete it; and record a check's result with the jobs of the entries it found new, in one
transaction (the checks reactor, reactors/subscriptions.py, calls `record_check`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg
import msgspec

from spool.adapters.account_policy_store import QuotaExceeded, append_admitted, load_policy
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.playlists import Playlist
from spool.adapters.repository import record_many
from spool.adapters.subscription_store import count_of, in_account_turn, subscriptions
from spool.application.jobs import NewJob, entry_jobs, plan_jobs
from spool.application.ownership import decide_owned, load_owned
from spool.domain import job, subscription
from spool.domain.errors import ConcurrencyError, Conflict, NotFound
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.job_options import JobOptions
from spool.domain.source_data import made_safe
from spool.domain.subscription import Limits, Retention, Schedule, SubscriptionState


class Bounds(NamedTuple):
    """The cluster's bounds on an account's subscriptions (settings)."""

    min_interval: int
    max_items: int
    max_subscriptions: int


async def limits_of(store: EventStore, account_id: str, bounds: Bounds) -> Limits:
    """What the account's subscriptions may ask for: the cluster's minimum interval, or the one
    an admin set for the account."""
    policy = await load_policy(store, account_id)
    floor = None if policy is None else policy.quotas.min_subscription_interval
    return Limits(bounds.min_interval if floor is None else floor, bounds.max_items)


async def create_subscription(
    store: EventStore,
    account_id: str,
    new: NewJob,
    schedule: Schedule,
    bounds: Bounds,
    meta: Metadata,
    retention: Retention | None = None,
) -> SubscriptionState:
    """A subscription of `new.url` whose items become jobs like `new`, their files kept as
    `retention` says; QuotaExceeded when the account has `max_subscriptions` already (counted
    from the log, under the account's lock)."""
    limits = await limits_of(store, account_id, bounds)
    subscription_id = str(uuid.uuid4())
    events = subscription.create(
        subscription_id=subscription_id,
        account_id=account_id,
        url=new.url,
        options=new.options,
        storage=new.storage,
        labels=new.labels,
        schedule=schedule,
        limits=limits,
        retention=retention,
    )

    async def create(conn: asyncpg.Connection) -> SubscriptionState:
        had = await count_of(conn, account_id)
        if had >= bounds.max_subscriptions:
            raise QuotaExceeded(
                "max_subscriptions", bounds.max_subscriptions, had, 1, retry_after=None
            )
        repository = subscriptions(store)
        stream = StreamAppend(
            repository.stream_id(subscription_id), [NewEvent(e, meta) for e in events], 0
        )
        appended = await record_many(store, [stream], conn=conn)  # a new stream, at version 0
        state = repository.after(None, 0, events, appended[0])
        assert state is not None
        return state

    return await in_account_turn(store, account_id, create)


async def owned_subscription(store: EventStore, account_id: str, raw_id: str) -> SubscriptionState:
    """A subscription of the account's, not deleted; NotFound for anyone else's."""
    state = await load_owned(subscriptions(store), account_id, raw_id, "Subscription")
    if state.deleted:
        raise NotFound("Subscription not found")
    return state


async def _decide(
    store: EventStore,
    account_id: str,
    raw_id: str,
    decision: Callable[[SubscriptionState], list[Event]],
    meta: Metadata,
) -> SubscriptionState:
    await owned_subscription(store, account_id, raw_id)
    return await decide_owned(
        subscriptions(store), account_id, raw_id, "Subscription", decision, meta
    )


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a `PATCH` changes (None: left as it is)."""

    interval: int | None = None
    jitter: int | None = None
    since: datetime | None = None
    clear_since: bool = False
    max_items: int | None = None
    options: JobOptions | None = None
    labels: dict[str, str] | None = None
    retention: Retention | None = None
    clear_retention: bool = False


def _changed(state: SubscriptionState, change: Change) -> Schedule:
    s = state.schedule
    return Schedule(
        interval=s.interval if change.interval is None else change.interval,
        jitter=s.jitter if change.jitter is None else change.jitter,
        since=None if change.clear_since else s.since if change.since is None else change.since,
        max_items=s.max_items if change.max_items is None else change.max_items,
    )


async def change_subscription(
    store: EventStore,
    account_id: str,
    raw_id: str,
    change: Change,
    bounds: Bounds,
    meta: Metadata,
) -> SubscriptionState:
    """Change a subscription's schedule, its items' options, labels or retention (the next
    retention pass keeps to the new one); the rest stays."""
    limits = await limits_of(store, account_id, bounds)

    def decision(state: SubscriptionState) -> list[Event]:
        return subscription.change(
            state,
            _changed(state, change),
            state.options if change.options is None else change.options,
            state.labels if change.labels is None else change.labels,
            limits,
            None
            if change.clear_retention
            else state.retention
            if change.retention is None
            else change.retention,
        )

    return await _decide(store, account_id, raw_id, decision, meta)


async def pause_subscription(
    store: EventStore, account_id: str, raw_id: str, meta: Metadata
) -> SubscriptionState:
    """No check starts until it is resumed."""
    return await _decide(store, account_id, raw_id, subscription.pause, meta)


async def resume_subscription(
    store: EventStore, account_id: str, raw_id: str, meta: Metadata
) -> SubscriptionState:
    """Checks go on (one at once if its time passed while paused)."""
    return await _decide(store, account_id, raw_id, subscription.resume, meta)


async def delete_subscription(
    store: EventStore, account_id: str, raw_id: str, meta: Metadata
) -> SubscriptionState:
    """Never check it again; its jobs stay."""
    return await _decide(store, account_id, raw_id, subscription.delete, meta)


# -- a check's result -------------------------------------------------------------------------


def seen_entries(subscription_id: str, playlist: Playlist) -> list[subscription.Seen]:
    """The entries a check listed, each named by its job id: its key in the feed (a guid, an
    id), else its URL."""
    safe = made_safe(playlist)  # titles and URLs are the source's: made safe to record
    return [
        subscription.Seen(
            job_id=subscription.item_job_id(subscription_id, e.key or e.url),
            title=e.title,
            url=e.url,
            published=e.published,
        )
        for e in safe.entries
    ]


class CheckOutcome(NamedTuple):
    """What a check recorded: the subscription after it, the jobs it created."""

    state: SubscriptionState | None
    job_ids: list[str]


async def record_check(
    store: EventStore,
    subscription_id: str,
    check_id: str,
    listed: Sequence[subscription.Seen] | str,
    now: datetime,
    meta: Metadata,
    *,
    tries: int = 5,
) -> CheckOutcome:
    """Record the end of check `check_id`: `listed` the entries it found (or why it could not
    list them). The entries it finds new become jobs of the subscription, appended with the
    check's `CheckFinished` at the version read, in one transaction within the account's
    quotas (all or none): an entry's job id is its own, so however many processes or restarts
    run this, each entry becomes one job. A paused or deleted subscription records the check
    and creates nothing; a check taken over by another process records nothing (None)."""
    repository = subscriptions(store)
    for _ in range(tries):
        state, version = await repository.read(subscription_id)
        if state is None or state.running is None or state.running.check_id != check_id:
            return CheckOutcome(None, [])
        stream = StreamAppend(subscription.stream_id(subscription_id), [], version)
        if isinstance(listed, str):
            error = subscription.finish_check(state, check_id, now, seen=0, error=listed)
            return await _finish(store, state, stream, error, [], meta)
        if state.paused or state.deleted:
            quiet = subscription.finish_check(
                state, check_id, now, seen=len(listed), error=f"The subscription is {state.status}"
            )
            return await _finish(store, state, stream, quiet, [], meta)
        heads = await store.stream_versions([job.stream_id(e.job_id) for e in listed])
        known = {e.job_id for e in listed if heads.get(job.stream_id(e.job_id), 0) > 0}
        plan = subscription.plan_check(state, listed, known)
        finished = subscription.finish_check(
            state, check_id, now, seen=len(listed), new=plan.new, skipped=plan.skipped
        )
        source = NewJob(
            url=state.url, options=state.options, storage=state.storage, labels=state.labels
        )
        new_jobs = entry_jobs(source, [(e.url, e.title) for e in plan.new])
        appends = plan_jobs(
            meta,
            state.account_id,
            new_jobs,
            [e.job_id for e in plan.new],
            subscription_id=subscription_id,
        )
        try:
            return await _finish(store, state, stream, finished, appends, meta)
        except QuotaExceeded as exc:
            refused = subscription.finish_check(
                state, check_id, now, seen=len(listed), error=str(exc)
            )
            try:
                return await _finish(store, state, stream, refused, [], meta)
            except ConcurrencyError:
                continue
        except ConcurrencyError:
            continue  # the subscription (or an entry's job) moved meanwhile: read again
    raise Conflict(f"Subscription {subscription_id} kept changing under its check")


async def _finish(
    store: EventStore,
    state: SubscriptionState,
    stream: StreamAppend,
    events: list[Event],
    jobs: list[StreamAppend],
    meta: Metadata,
) -> CheckOutcome:
    mine = stream._replace(events=[NewEvent(e, meta) for e in events])
    await append_admitted(store, state.account_id, [*jobs, mine])
    job_ids = [a.stream_id.removeprefix(job.stream_id("")) for a in jobs]
    return CheckOutcome(state, job_ids)
