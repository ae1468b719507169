"""The subscriptions' retention pass: every `tick`, the files of the items past each
subscription's retention are deleted (application/subscription_retention.py), a page of
subscriptions at a time and at most `per_pass` files of each, so a pass stays short however
much a lowered `keep_last` lets go (the rest goes at the next passes).

Active and paused subscriptions alike (a paused one's files still age); a deleted one keeps
its items' files. Safe in several processes at once: each job's state refuses a second
`FileDeleted`. The clock is a parameter, so a test moves time on.
"""

from __future__ import annotations

import asyncio
import logging

from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.read_models import subscriptions as subscription_rows
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage
from spool.adapters.subscription_store import subscriptions
from spool.application.subscription_retention import apply_retention
from spool.reactors.subscriptions import Clock, utc_now

log = logging.getLogger("spool.subscriptions")

AT_ONCE = 50
"""Subscriptions one pass looks at; the next pass goes on from the last of them."""
PER_PASS = 20
"""Files of one subscription one pass deletes at most."""


class SubscriptionRetention:
    """Deletes the files of the subscriptions' items past their retention, every `tick`."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        storage: ObjectStorage,
        *,
        tick: float = 60.0,
        clock: Clock = utc_now,
        per_pass: int = PER_PASS,
    ) -> None:
        self.store = store
        self.tick = tick
        self.clock = clock
        self.per_pass = per_pass
        self.storages = AccountStorages(
            store.pool,
            settings.resolved_secret_key(),
            storage,
            guard=UrlGuard(settings.url_allowlist),
        )
        self.after: str | None = None
        """The last subscription the previous pass looked at (None: start from the first)."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await run_periodically(
                self.pass_once,
                interval=self.tick,
                stop=stop,
                what="subscription retention",
                logger=log,
            )
        finally:
            await self.storages.aclose()

    async def pass_once(self) -> int:
        """One page of subscriptions with a retention, each read exact (a `PATCH` a moment ago
        counts) and its items past it let go; how many files were deleted."""
        now = self.clock()
        page = await subscription_rows.with_retention(
            self.store.pool, after=self.after, limit=AT_ONCE
        )
        self.after = page[-1] if len(page) == AT_ONCE else None
        repository = subscriptions(self.store)
        deleted = 0
        for subscription_id in page:  # one after another: a storage sees one pass's deletes
            try:
                state = await repository.load(subscription_id)
                if state is None:
                    continue
                retained = await apply_retention(
                    self.store, self.storages, state, now, limit=self.per_pass
                )
            except Exception as exc:  # one subscription's storage must not hold the others
                log.warning("retention of subscription %s failed: %s", subscription_id, exc)
                continue
            deleted += len(retained.deleted)
        return deleted
