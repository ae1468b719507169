"""The operations runner: carries every unfinished bulk action (application/operations.py) on,
job after job, from where its events say it stopped; so an operation outlives a restart of the
process that ran it.

Safe in several processes at once: each job's outcome is recorded at the operation's version,
and a runner that loses that race stops and reads the operation again on its next pass
(application/operations.py says why no job is acted on twice).
"""

from __future__ import annotations

import asyncio
import logging

from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.read_models import operations as operation_rows
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage
from spool.application.operations import ActionServices, advance

log = logging.getLogger("spool.operations")

AT_ONCE = 10
"""Unfinished operations one pass looks at."""
JOBS_PER_PASS = 200
"""Jobs of each operation one pass of `run` handles: a long operation does not hold the others
(of any account) back until it ends."""


class OperationRunner:
    """Every `interval` seconds, each unfinished operation (oldest first) is carried on."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        storage: ObjectStorage,
        *,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.interval = interval
        self.storages = AccountStorages(
            store.pool,
            settings.resolved_secret_key(),
            storage,
            guard=UrlGuard(settings.url_allowlist),
        )
        self.services = ActionServices(store, self.storages)

    async def pass_once(self, budget: int | None = None) -> bool:
        """One look: each unfinished operation is carried on (`budget` jobs each; None: to its
        end). Whether any is left unfinished."""
        left = False
        for operation_id in await operation_rows.running(self.store.pool, AT_ONCE):
            state = await advance(self.services, operation_id, budget=budget)
            left = left or (state is not None and state.status == "running")
        return left

    async def run(self, stop: asyncio.Event) -> None:
        more = asyncio.Event()

        async def look() -> None:
            if await self.pass_once(JOBS_PER_PASS):
                more.set()  # the next pass at once, not after `interval`

        try:
            await run_periodically(
                look, interval=self.interval, stop=stop, what="operations", wake=more, logger=log
            )
        finally:
            await self.storages.aclose()
