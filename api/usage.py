"""`GET /usage` (seed 002): the caller's jobs and bytes, this month and all time.

Read from projections (`usage_daily`, `jobs`), so it trails the log by a moment. Months and days
are UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import get_args

import msgspec
from litestar import Controller, get

from spool.adapters.account_policy_store import job_use, load_policy
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import usage as usage_rows
from spool.api.auth import Principal
from spool.api.services import Services
from spool.domain.account_policy import QUOTA_NAMES, Quotas
from spool.domain.job import JobStatus

_STATUSES: tuple[str, ...] = get_args(JobStatus)


class UsagePeriod(msgspec.Struct):
    """Usage over one period (all time, or this calendar month so far).

    - `jobs_created`, `jobs_completed`, `jobs_failed`, `jobs_cancelled`: how many times that
      happened in the period (a job failed, retried and completed counts in both).
    - `jobs_by_status`: the jobs created in the period, by their status now.
    - `bytes_downloaded`: fetched from sources (every download run, retries included).
    - `bytes_uploaded`: media files written to storage; `bytes_deleted`: those deleted since.
    - `storage_bytes`: bytes held in storage now, at the end of the period (the same figure
      for both periods); `storage_bytes_change`: uploaded minus deleted within the period.
    """

    jobs_created: int
    jobs_completed: int
    jobs_failed: int
    jobs_cancelled: int
    jobs_by_status: dict[str, int]
    bytes_downloaded: int
    bytes_uploaded: int
    bytes_deleted: int
    storage_bytes: int
    storage_bytes_change: int


class QuotaUse(msgspec.Struct):
    """One quota beside its use; `limit` null: no limit."""

    limit: int | None
    used: int


class UsageAnswer(msgspec.Struct):
    """`month` is the current UTC month (`YYYY-MM`) that `this_month` covers.

    `quotas`: each quota an admin may set, beside what the account uses of it now: jobs not yet
    finished, jobs created today (UTC), bytes stored, and the longest media (s) it fetched.

    `hls_cache_bytes`: bytes of the account's HLS renditions held in the HLS cache now.
    """

    month: str
    all_time: UsagePeriod
    this_month: UsagePeriod
    quotas: dict[str, QuotaUse]
    hls_cache_bytes: int = 0


async def _quotas(services: Services, account_id: str, now: datetime) -> dict[str, QuotaUse]:
    pool = services.pool
    policy = await load_policy(services.store, account_id)
    quotas = policy.quotas if policy is not None else Quotas()
    use = await job_use(pool, account_id, now)
    longest = await job_rows.longest_media(pool, account_id)
    used = {
        "max_running_jobs": use.running,
        "max_jobs_per_day": use.today,
        "max_storage_bytes": use.stored_bytes,
        "max_media_seconds": int(longest),
    }
    # A quota that is a floor, not a use (`min_subscription_interval`), has nothing to count.
    return {
        name: QuotaUse(getattr(quotas, name), used[name]) for name in QUOTA_NAMES if name in used
    }


def _period(counts: dict[str, int], by_status: dict[str, int], held: int) -> UsagePeriod:
    return UsagePeriod(
        jobs_created=counts["jobs_created"],
        jobs_completed=counts["jobs_completed"],
        jobs_failed=counts["jobs_failed"],
        jobs_cancelled=counts["jobs_cancelled"],
        jobs_by_status=by_status,
        bytes_downloaded=counts["bytes_downloaded"],
        bytes_uploaded=counts["bytes_uploaded"],
        bytes_deleted=counts["bytes_deleted"],
        storage_bytes=held,
        storage_bytes_change=counts["bytes_uploaded"] - counts["bytes_deleted"],
    )


class UsageController(Controller):
    path = "/usage"
    tags = ["usage"]

    @get("/")
    async def usage(self, services: Services, principal: Principal) -> UsageAnswer:
        """The caller's usage this month (UTC) and all time; a user without jobs gets zeros."""
        now = datetime.now(UTC)
        month_start = date(now.year, now.month, 1)
        pool = services.pool
        all_time, this_month = await usage_rows.totals(pool, principal.account_id, month_start)
        rows = await job_rows.count_by_status(
            pool, principal.account_id, datetime(now.year, now.month, 1, tzinfo=UTC)
        )
        status_all = dict.fromkeys(_STATUSES, 0) | {r[0]: int(r[1]) for r in rows}
        status_month = dict.fromkeys(_STATUSES, 0) | {r[0]: int(r[2]) for r in rows}
        held = all_time["bytes_uploaded"] - all_time["bytes_deleted"]
        return UsageAnswer(
            month=f"{now.year:04d}-{now.month:02d}",
            all_time=_period(all_time, status_all, held),
            this_month=_period(this_month, status_month, held),
            quotas=await _quotas(services, principal.account_id, now),
            hls_cache_bytes=services.media.cache.account_bytes(principal.account_id),
        )
