"""Running a probe of a user's source from a job API request: the deadline and the account's
share (adapters/probes.py), answered in the job API's `{"error": ...}` shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from spool.adapters.probes import Probe, ProbeBusy, ProbePool, ProbeTimeout
from spool.adapters.settings import Settings
from spool.api.errors import JobApiError
from spool.api.services import Services

T = TypeVar("T")


def probe_pool(settings: Settings) -> ProbePool:
    """The process's probe pool, sized by `probe_workers` and `probe_share`."""
    return ProbePool(workers=settings.probe_workers, share=settings.probe_share)


async def run_probe(services: Services, account_id: str, work: Callable[[Probe], T]) -> T:
    """`work` on the probe pool within `probe_timeout` seconds, charged to `account_id`.

    429 with `Retry-After` when the account holds its whole share of probes already; 504 at
    the deadline (the probe is stopped by then: its connections shut, its thread unwinding).
    """
    settings: Settings = services.settings
    pool: ProbePool = services.probes
    try:
        return await pool.run(account_id, work, timeout=settings.probe_timeout)
    except ProbeBusy as exc:
        raise JobApiError(
            status_code=429, detail=str(exc), headers={"retry-after": str(exc.retry_after)}
        ) from None
    except ProbeTimeout as exc:
        raise JobApiError(status_code=504, detail=str(exc)) from None
