"""Accounts' grants and quotas: read and written on the account stream, and the quota check that
admits new jobs.

The check and the append of the jobs it admits (or of a retry) run in one transaction under an
advisory lock of the account, so two requests racing each other are judged one after the other:
the second sees the first's jobs. Counts come from the `jobs` projection plus the `JobCreated`
and `JobRetried` events it has not applied yet (those after its checkpoint), so they are exact
for jobs created and retried; a job that just finished may count as running for a moment
longer, which only errs on the safe side.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

import asyncpg

from spool.adapters.event_store import EVENT_COLUMNS, EventStore, StreamAppend
from spool.adapters.read_models import api_keys, usage
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.repository import Repository, record_many
from spool.domain import account, account_policy, job
from spool.domain.aggregate import steps
from spool.domain.events import Event, Metadata

# Only the policy's own events: the account stream also holds its keys' events, which may be
# many, and every job request reads this.
_POLICY_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM events
WHERE stream_id = $1 AND type = ANY($2::text[]) ORDER BY version
"""
_EXISTS = "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1)"


T = TypeVar("T")


async def load_policy(store: EventStore, account_id: str) -> account_policy.AccountPolicy | None:
    """The account's grant and quotas, exact to its stream's last event; None: no such account."""
    stream = account.stream_id(account_id)
    rows = await store.pool.fetch(_POLICY_EVENTS, stream, sorted(account_policy.EVENT_TYPES))
    if not rows and not await store.pool.fetchval(_EXISTS, stream):
        return None
    policy = account_policy.fold(steps(store.decode(r) for r in rows))
    return policy or account_policy.AccountPolicy(account_id=account_id)


def policies(store: EventStore) -> Repository[account_policy.AccountPolicy]:
    """The account policies' repository (on the account streams, which keys share)."""
    return Repository(store, account_policy.AGGREGATE)


async def record(store: EventStore, account_id: str, events: list[Event], meta: Metadata) -> None:
    """Record policy events where the account stream ends (keys share the stream): a grant or
    quotas replace whatever stood before, and a revocation ends any grant."""
    if events:
        await policies(store).record(account_id, events, meta)


class AccountRow(NamedTuple):
    account_id: str
    keys: list[dict[str, object]]


async def accounts(pool: asyncpg.Pool, account_id: str | None = None) -> list[AccountRow]:
    """Every account that has a key (or only `account_id`), with its keys' ids, names and admin
    flags; never a digest."""
    found: dict[str, list[dict[str, object]]] = {}
    for r in await api_keys.by_account(pool, account_id):
        found.setdefault(r["account_id"], []).append(
            {
                "key_id": r["key_id"],
                "name": r["name"],
                "hint": r["hint"],
                "admin": r["admin"],
                "revoked": r["revoked"],
            }
        )
    return [AccountRow(a, keys) for a, keys in found.items()]


# -- the quota check -------------------------------------------------------------------------

_turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


@contextlib.asynccontextmanager
async def _in_turn(store: EventStore, account_id: str) -> AsyncIterator[None]:
    """One request of an account at a time per pool before it takes a connection: an account
    flooding requests then holds one of the pool's connections waiting on its database lock,
    not all of them, and other accounts' requests still find one. (Across pools and processes
    the database lock alone orders them.)"""
    turn = f"{id(store.pool)}:{account_id}"
    lock = _turns.get(turn)
    if lock is None:
        lock = _turns[turn] = asyncio.Lock()
    async with lock:
        yield


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('spool-quota:' || $1, 0))"
"""The account's quota lock, held to the end of the transaction that checks and appends."""

RUNNING_RETRY_AFTER = 30
"""Seconds a client is told to wait when its account has too many jobs running at once."""


class QuotaExceeded(Exception):
    """A request that would pass one of the account's quotas; nothing was created."""

    def __init__(
        self, quota: str, limit: int, used: int, asked: int, *, retry_after: int | None
    ) -> None:
        self.quota, self.limit, self.used, self.asked = quota, limit, used, asked
        self.retry_after = retry_after
        """Seconds until it may pass (rates); None for a hard limit that waiting will not lift."""
        super().__init__(
            f"Quota {quota} is {limit}: the account has {used} and this request asks for "
            f"{asked} more" + ("" if retry_after is None else f"; retry in {retry_after} s")
        )


class JobUse(NamedTuple):
    running: int
    today: int
    stored_bytes: int


def day_start(now: datetime) -> datetime:
    """The start of `now`'s UTC day."""
    at = now.astimezone(UTC)
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


async def job_use(db: asyncpg.Connection | asyncpg.Pool, account_id: str, now: datetime) -> JobUse:
    """What the account uses now of the quotas on jobs."""
    jobs = await job_rows.account_jobs(db, account_id, day_start(now))
    return JobUse(jobs.running, jobs.today, await usage.stored_bytes(db, account_id))


def _new_jobs(appends: list[StreamAppend]) -> int:
    return sum(isinstance(e.event, job.JobCreated) for a in appends for e in a.events)


def judge(quotas: account_policy.Quotas, use: JobUse, asked: int, now: datetime) -> None:
    """Raise QuotaExceeded if `asked` more jobs would pass a quota (pure: the caller counts)."""
    q = quotas
    if q.max_storage_bytes is not None and use.stored_bytes >= q.max_storage_bytes:
        raise QuotaExceeded(
            "max_storage_bytes", q.max_storage_bytes, use.stored_bytes, asked, retry_after=None
        )
    if q.max_jobs_per_day is not None and use.today + asked > q.max_jobs_per_day:
        tomorrow = day_start(now) + timedelta(days=1)
        wait = max(1, int((tomorrow - now).total_seconds()) + 1)
        raise QuotaExceeded(
            "max_jobs_per_day", q.max_jobs_per_day, use.today, asked, retry_after=wait
        )
    if q.max_running_jobs is not None and use.running + asked > q.max_running_jobs:
        raise QuotaExceeded(
            "max_running_jobs",
            q.max_running_jobs,
            use.running,
            asked,
            retry_after=RUNNING_RETRY_AFTER,
        )


def _unlimited(quotas: account_policy.Quotas) -> bool:
    return all(
        getattr(quotas, n) is None
        for n in ("max_running_jobs", "max_jobs_per_day", "max_storage_bytes")
    )


async def append_admitted(
    store: EventStore,
    account_id: str,
    appends: list[StreamAppend],
    *,
    now: datetime | None = None,
) -> None:
    """Append `appends` if the jobs they create fit the account's quotas; QuotaExceeded else.

    All of them or none: a bulk request that would pass a quota is refused whole.
    """
    policy = await load_policy(store, account_id)
    asked = _new_jobs(appends)
    if policy is None or asked == 0 or _unlimited(policy.quotas):
        await record_many(store, appends)
        return
    async with _in_turn(store, account_id), store.pool.acquire() as conn, conn.transaction():
        # Held to the commit: a second request of this account waits here, then counts ours.
        await conn.execute(_LOCK, account_id)
        at = now or datetime.now(UTC)
        judge(policy.quotas, await job_use(conn, account_id, at), asked, at)
        await record_many(store, appends, conn=conn)


async def change_admitted(
    store: EventStore,
    account_id: str,
    change: Callable[[asyncpg.Connection | None], Awaitable[T]],
    *,
    now: datetime | None = None,
) -> T:
    """Make `change`, which sets one finished job of the account running again (a retry), if
    one more running job fits its `max_running_jobs`; QuotaExceeded else.

    `change` gets the connection to append with (None when the account has no such quota).
    """
    policy = await load_policy(store, account_id)
    limit = None if policy is None else policy.quotas.max_running_jobs
    if limit is None:
        return await change(None)
    async with _in_turn(store, account_id), store.pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK, account_id)
        at = now or datetime.now(UTC)
        judge(
            account_policy.Quotas(max_running_jobs=limit),
            await job_use(conn, account_id, at),
            1,
            at,
        )
        return await change(conn)


def seconds_quota(policy: account_policy.AccountPolicy | None) -> int | None:
    """The longest media (s) the account may fetch; None: no limit."""
    return None if policy is None else policy.quotas.max_media_seconds
