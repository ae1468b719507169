"""The subscription aggregate: a feed, playlist or channel watched every so often, whose new
entries become jobs of the subscription.

A check is claimed with `CheckStarted` at the stream's version (one check at a time, across
processes; a claim older than the check timeout may be taken over) and ends with
`CheckFinished`, appended in the same transaction as the jobs it created: an entry's job id is
`item_job_id(subscription, entry key)`, so a job is created once however often its entry is
seen. The times of a check are the checking process's clock (`started_at`, `finished_at`), so
a test can drive it; the next check is due `interval` plus a jitter after the last one started,
so a check missed while Spool was down runs once, not once per interval missed.

A subscription's `Retention` says which of its items keep their file (the last `keep_last`,
those finished within `keep_days`); the retention pass deletes the others' files through the
jobs' own delete (application/subscription_retention.py), so the subscription's stream holds
only the rule, and each job the fact.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import InvalidCommand, InvalidTransition
from spool.domain.events import Event, event
from spool.domain.job_options import JobOptions
from spool.domain.storage_config import StorageConfigured

SubscriptionStatus = Literal["active", "paused", "deleted"]

MAX_JITTER_SHARE = 0.5
"""The jitter is at most this share of the interval: checks stay near their rhythm."""


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """How often a subscription is checked and what one check may take."""

    interval: int
    """Seconds between the starts of two checks."""
    jitter: int = 0
    """Up to this many seconds are added to each interval (spread evenly, decided per check),
    so that subscriptions made together do not all check at once."""
    since: datetime | None = None
    """Entries published before this are never taken (entries without a date always are)."""
    max_items: int
    """New entries one check turns into jobs at most; the first check with no `since` takes the
    newest this many and leaves the older ones for good."""


class Retention(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which of a subscription's items keep their file: the last `keep_last`, and those whose
    job finished within `keep_days` days. An item's file goes when either says so; only items
    that still have a file count (a Completed job whose file was not deleted), newest finished
    first."""

    keep_last: int | None = None
    keep_days: int | None = None

    def cutoff(self, now: datetime) -> datetime | None:
        """Items whose job finished before this are past `keep_days` (None: no such bound)."""
        return None if self.keep_days is None else now - timedelta(days=self.keep_days)


MAX_KEEP_LAST = 1000
MAX_KEEP_DAYS = 3650


class Limits(NamedTuple):
    """What an account's subscriptions may ask for (settings, and the account's policy)."""

    min_interval: int
    max_items: int


@event
class SubscriptionCreated(Event, frozen=True, kw_only=True):
    subscription_id: str
    account_id: str
    url: str
    options: JobOptions = JobOptions()
    storage: StorageConfigured | None = None
    """A storage for its jobs only (as `POST /jobs` takes one), its credentials sealed."""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    schedule: Schedule
    retention: Retention | None = None


@event
class SubscriptionChanged(Event, frozen=True, kw_only=True):
    """The user changed the subscription (`PATCH`): the whole new schedule, options, labels and
    retention (None: every item keeps its file)."""

    schedule: Schedule
    options: JobOptions
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    retention: Retention | None = None


@event
class SubscriptionPaused(Event, frozen=True, kw_only=True):
    """No check starts until it is resumed (a running one ends, creating no jobs)."""


@event
class SubscriptionResumed(Event, frozen=True, kw_only=True):
    """Checks go on; one is due at once if its time passed while paused."""


@event
class SubscriptionDeleted(Event, frozen=True, kw_only=True):
    """Never checked again; its jobs stay."""


@event
class CheckStarted(Event, frozen=True, kw_only=True):
    """A process claimed a check; `took_over` names the check of a process that went silent."""

    check_id: str
    started_at: datetime
    by: str
    took_over: str | None = None


class NewItem(msgspec.Struct, frozen=True, kw_only=True):
    """An entry a check turned into a job."""

    job_id: str
    title: str | None = None


@event
class CheckFinished(Event, frozen=True, kw_only=True):
    """What a check found: `seen` entries listed, `new` turned into jobs (appended with this),
    `skipped` entry ids left for good (the first check's backlog), `error` why it could not
    list the entries or create the jobs (None: it did)."""

    check_id: str
    finished_at: datetime
    seen: int = 0
    new: list[NewItem] = msgspec.field(default_factory=list)
    skipped: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class RunningCheck(msgspec.Struct, frozen=True, kw_only=True):
    check_id: str
    started_at: datetime
    by: str


class LastCheck(msgspec.Struct, frozen=True, kw_only=True):
    check_id: str
    started_at: datetime
    finished_at: datetime | None = None
    seen: int = 0
    new: int = 0
    error: str | None = None


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    subscription_id: str
    account_id: str
    url: str
    options: JobOptions
    storage: StorageConfigured | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    schedule: Schedule
    retention: Retention | None = None
    """Which items keep their file (None: all)."""
    created_at: datetime
    updated_at: datetime
    version: int = 0
    paused: bool = False
    deleted: bool = False
    running: RunningCheck | None = None
    last: LastCheck | None = None
    """The last check started (and how it ended, once it has)."""
    checks: int = 0
    """Checks finished."""
    listed: bool = False
    """Whether a check has listed the entries yet (one that failed to has not)."""
    items: int = 0
    """Jobs its checks created."""
    skipped: list[str] = msgspec.field(default_factory=list)
    """Job ids of entries left for good (never a job): the first check's backlog."""

    @property
    def status(self) -> SubscriptionStatus:
        return "deleted" if self.deleted else "paused" if self.paused else "active"

    @property
    def next_check_at(self) -> datetime | None:
        """When the next check is due (None: paused or deleted); at once before the first."""
        if self.paused or self.deleted:
            return None
        if self.last is None:
            return self.created_at
        spread = jitter_of(self.last.check_id, self.schedule.jitter)
        return self.last.started_at + timedelta(seconds=self.schedule.interval + spread)


def stream_id(subscription_id: str) -> str:
    """The event stream that holds one subscription."""
    return f"subscription-{subscription_id}"


def item_job_id(subscription_id: str, key: str) -> str:
    """The job an entry becomes: the same for the same entry of the same subscription, so it
    is created once however many checks (or processes) see it."""
    return str(uuid.uuid5(uuid.UUID(subscription_id), key))


def jitter_of(check_id: str, jitter: int) -> int:
    """The seconds added after the check `check_id`: spread evenly over 0..jitter, the same for
    every reader."""
    if jitter <= 0:
        return 0
    digest = hashlib.sha256(check_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % (jitter + 1)


# -- decide ----------------------------------------------------------------------------------


def check_schedule(schedule: Schedule, limits: Limits) -> Schedule:
    """The schedule, if the account may have it; InvalidCommand naming the field else."""
    if schedule.interval < limits.min_interval:
        raise InvalidCommand(
            f"interval must be at least {limits.min_interval} seconds for this account"
        )
    if schedule.interval > 366 * 86400:
        raise InvalidCommand("interval must be at most a year (31622400 seconds)")
    if not 0 <= schedule.jitter <= schedule.interval * MAX_JITTER_SHARE:
        raise InvalidCommand("jitter must be from 0 to half the interval (seconds)")
    if not 1 <= schedule.max_items <= limits.max_items:
        raise InvalidCommand(f"max_items must be from 1 to {limits.max_items}")
    return schedule


def check_retention(retention: Retention | None) -> Retention | None:
    """The retention, if it says something Spool can keep to; InvalidCommand naming the field
    else."""
    if retention is None:
        return None
    if retention.keep_last is None and retention.keep_days is None:
        raise InvalidCommand("retention must give keep_last, keep_days or both")
    if retention.keep_last is not None and not 1 <= retention.keep_last <= MAX_KEEP_LAST:
        raise InvalidCommand(f"retention.keep_last must be from 1 to {MAX_KEEP_LAST}")
    if retention.keep_days is not None and not 1 <= retention.keep_days <= MAX_KEEP_DAYS:
        raise InvalidCommand(f"retention.keep_days must be from 1 to {MAX_KEEP_DAYS}")
    return retention


def create(
    *,
    subscription_id: str,
    account_id: str,
    url: str,
    options: JobOptions,
    storage: StorageConfigured | None,
    labels: dict[str, str],
    schedule: Schedule,
    limits: Limits,
    retention: Retention | None = None,
) -> list[Event]:
    """Decide the creation of a subscription."""
    return [
        SubscriptionCreated(
            subscription_id=subscription_id,
            account_id=account_id,
            url=url,
            options=options,
            storage=storage,
            labels=labels,
            schedule=check_schedule(schedule, limits),
            retention=check_retention(retention),
        )
    ]


def _alive(state: SubscriptionState) -> None:
    if state.deleted:
        raise InvalidTransition("The subscription was deleted")


def change(
    state: SubscriptionState,
    schedule: Schedule,
    options: JobOptions,
    labels: dict[str, str],
    limits: Limits,
    retention: Retention | None,
) -> list[Event]:
    """Decide a change; nothing when nothing changes."""
    _alive(state)
    now = (state.schedule, state.options, state.labels, state.retention)
    if (schedule, options, labels, retention) == now:
        return []
    checked = check_schedule(schedule, limits)
    kept = check_retention(retention)
    return [SubscriptionChanged(schedule=checked, options=options, labels=labels, retention=kept)]


def pause(state: SubscriptionState) -> list[Event]:
    """Stop checking; nothing when paused already."""
    _alive(state)
    return [] if state.paused else [SubscriptionPaused()]


def resume(state: SubscriptionState) -> list[Event]:
    """Check again; nothing when not paused."""
    _alive(state)
    return [SubscriptionResumed()] if state.paused else []


def delete(state: SubscriptionState) -> list[Event]:
    """Stop for good."""
    _alive(state)
    return [SubscriptionDeleted()]


def due(state: SubscriptionState, now: datetime, timeout: float) -> bool:
    """Whether a check should start now: its time came and none runs, or the running one's
    process has been silent past `timeout` seconds."""
    if state.paused or state.deleted:
        return False
    if state.running is not None:
        return now >= state.running.started_at + timedelta(seconds=timeout)
    at = state.next_check_at
    return at is not None and now >= at


def start_check(
    state: SubscriptionState, now: datetime, check_id: str, by: str, timeout: float
) -> list[Event]:
    """Claim a check if one is due (nothing else: another process claimed it, or it is not
    due); a claim silent past `timeout` is taken over."""
    if not due(state, now, timeout):
        return []
    took_over = state.running.check_id if state.running is not None else None
    return [CheckStarted(check_id=check_id, started_at=now, by=by, took_over=took_over)]


class Seen(NamedTuple):
    """An entry a check listed: its job id (`item_job_id`), title, URL and publication time."""

    job_id: str
    title: str | None
    url: str
    published: datetime | None


class Plan(NamedTuple):
    new: list[Seen]
    """Entries to turn into jobs, newest first."""
    skipped: list[str]
    """Job ids of entries to leave for good."""


def plan_check(state: SubscriptionState, entries: Sequence[Seen], known: set[str]) -> Plan:
    """What a check does with the entries it listed (in the feed's order), `known` being the
    job ids that exist already: the newest `max_items` entries that are neither known, nor left
    for good, nor published before `since`. The first check with no `since` leaves the rest of
    its entries for good (a channel's whole history is not what a subscriber asks for); a later
    check leaves them for the next check."""
    left = set(state.skipped) | known
    fresh: dict[str, Seen] = {}
    for e in entries:
        if e.job_id in left or e.job_id in fresh:
            continue
        since = state.schedule.since
        if since is not None and e.published is not None and e.published < since:
            continue
        fresh[e.job_id] = e
    # Newest first by date where entries have one; a feed's own order (newest first, as feeds
    # and channels list) among those without.
    ordered = sorted(
        fresh.values(),
        key=lambda e: -e.published.timestamp() if e.published is not None else 0.0,
    )
    if all(e.published is None for e in ordered):
        ordered = list(fresh.values())
    taken = ordered[: state.schedule.max_items]
    first = not state.listed and state.schedule.since is None
    skipped = [e.job_id for e in ordered[state.schedule.max_items :]] if first else []
    return Plan(taken, skipped)


def finish_check(
    state: SubscriptionState,
    check_id: str,
    now: datetime,
    *,
    seen: int,
    new: Sequence[Seen] = (),
    skipped: Sequence[str] = (),
    error: str | None = None,
) -> list[Event]:
    """Record a check's end; InvalidTransition when it is no longer the running check (taken
    over by another process)."""
    if state.running is None or state.running.check_id != check_id:
        raise InvalidTransition(f"check {check_id} is not the subscription's running check")
    return [
        CheckFinished(
            check_id=check_id,
            finished_at=now,
            seen=seen,
            new=[NewItem(job_id=e.job_id, title=e.title) for e in new],
            skipped=list(skipped),
            error=error,
        )
    ]


# -- evolve ----------------------------------------------------------------------------------


def evolve(
    state: SubscriptionState | None, ev: Event, at: datetime, version: int
) -> SubscriptionState:
    """Apply one recorded event to a subscription's state."""
    if isinstance(ev, SubscriptionCreated):
        return SubscriptionState(
            subscription_id=ev.subscription_id,
            account_id=ev.account_id,
            url=ev.url,
            options=ev.options,
            storage=ev.storage,
            labels=dict(ev.labels),
            schedule=ev.schedule,
            retention=ev.retention,
            created_at=at,
            updated_at=at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before SubscriptionCreated")
    replace = msgspec.structs.replace
    state = replace(state, version=version, updated_at=at)
    if isinstance(ev, SubscriptionChanged):
        return replace(
            state,
            schedule=ev.schedule,
            options=ev.options,
            labels=dict(ev.labels),
            retention=ev.retention,
        )
    if isinstance(ev, SubscriptionPaused | SubscriptionResumed):
        return replace(state, paused=isinstance(ev, SubscriptionPaused))
    if isinstance(ev, SubscriptionDeleted):
        return replace(state, deleted=True)
    if isinstance(ev, CheckStarted):
        running = RunningCheck(check_id=ev.check_id, started_at=ev.started_at, by=ev.by)
        started = LastCheck(check_id=ev.check_id, started_at=ev.started_at)
        return replace(state, running=running, last=started)
    if isinstance(ev, CheckFinished):
        last = state.last
        if last is not None and last.check_id == ev.check_id:
            last = replace(
                last, finished_at=ev.finished_at, seen=ev.seen, new=len(ev.new), error=ev.error
            )
        return replace(
            state,
            running=None,
            last=last,
            checks=state.checks + 1,
            listed=state.listed or ev.error is None,
            items=state.items + len(ev.new),
            skipped=[*state.skipped, *ev.skipped] if ev.skipped else state.skipped,
        )
    return state


AGGREGATE: Aggregate[SubscriptionState] = Aggregate(
    name="subscription",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(
        SubscriptionCreated,
        SubscriptionChanged,
        SubscriptionPaused,
        SubscriptionResumed,
        SubscriptionDeleted,
        CheckStarted,
        CheckFinished,
    ),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types

fold = AGGREGATE.fold
"""A subscription's events, in stream order, folded into its state."""
