"""Accounts' grants and quotas: read and written on the account stream, and the quota check that
admits new jobs.

The check and the append of the jobs it admits run in one transaction under an advisory lock of
the account, so two requests racing each other are judged one after the other: the second sees
the first's jobs. Counts come from the `jobs` projection plus the `JobCreated` events it has not
applied yet (those after its checkpoint), so they are exact for jobs created; a job that just
finished may count as running for a moment longer, which only errs on the safe side.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import asyncpg

from adapters.event_store import EventStore, StreamAppend
from domain import account, account_policy, job
from domain.events import Event, Metadata, NewEvent


async def load_policy(store: EventStore, account_id: str) -> account_policy.AccountPolicy | None:
    """The account's grant and quotas, exact to its stream's last event; None: no such account."""
    events = await store.read_stream(account.stream_id(account_id))
    if not events:
        return None
    return account_policy.fold(account_id, ((e.data, e.recorded_at) for e in events))


async def record(store: EventStore, account_id: str, events: list[Event], meta: Metadata) -> None:
    """Append policy events at the end of the account stream (other writers share it)."""
    if events:
        await store.append(account.stream_id(account_id), [NewEvent(e, meta) for e in events], None)


class AccountRow(NamedTuple):
    account_id: str
    keys: list[dict[str, object]]


async def accounts(pool: asyncpg.Pool, account_id: str | None = None) -> list[AccountRow]:
    """Every account that has a key (or only `account_id`), with its keys' ids, names and admin
    flags; never a digest."""
    rows = await pool.fetch(
        "SELECT account_id, key_id, name, hint, admin, revoked, created_at FROM api_keys "
        "WHERE $1::text IS NULL OR account_id = $1 ORDER BY account_id, created_at, key_id",
        account_id,
    )
    found: dict[str, list[dict[str, object]]] = {}
    for r in rows:
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

_TERMINAL = sorted(job.TERMINAL)

# JobCreated events the `jobs` projection has not applied yet: every one of them is a job not
# finished, and (recorded now-ish) counted in today only if recorded since `$2`.
_UNPROJECTED = """
SELECT count(*) AS created, count(*) FILTER (WHERE e.recorded_at >= $2) AS today
FROM events e
WHERE e.type = 'JobCreated' AND e.data->>'account_id' = $1
  AND (e.tx, e.position) > (
      SELECT coalesce((SELECT tx::text FROM checkpoints WHERE name = 'jobs'), '0')::xid8,
             coalesce((SELECT position FROM checkpoints WHERE name = 'jobs'), 0))
"""

_PROJECTED = """
SELECT count(*) FILTER (WHERE status <> ALL($3::text[])) AS running,
       count(*) FILTER (WHERE created_at >= $2) AS today
FROM jobs WHERE account_id = $1
"""

_STORED = """
SELECT coalesce(sum(bytes_uploaded), 0)::bigint - coalesce(sum(bytes_deleted), 0)::bigint
FROM usage_daily WHERE account_id = $1
"""

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
    since = day_start(now)
    projected = await db.fetchrow(_PROJECTED, account_id, since, _TERMINAL)
    pending = await db.fetchrow(_UNPROJECTED, account_id, since)
    stored = await db.fetchval(_STORED, account_id)
    return JobUse(
        running=projected["running"] + pending["created"],
        today=projected["today"] + pending["today"],
        stored_bytes=int(stored),
    )


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
        await store.append_many(appends)
        return
    async with store.pool.acquire() as conn, conn.transaction():
        # Held to the commit: a second request of this account waits here, then counts ours.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('spool-quota:' || $1, 0))", account_id
        )
        at = now or datetime.now(UTC)
        judge(policy.quotas, await job_use(conn, account_id, at), asked, at)
        await store.append_many(appends, conn=conn)


def seconds_quota(policy: account_policy.AccountPolicy | None) -> int | None:
    """The longest media (s) the account may fetch; None: no limit."""
    return None if policy is None else policy.quotas.max_media_seconds
