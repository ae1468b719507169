"""The subscription checks: every `tick`, each due subscription is checked (domain/subscription.py).

A check is claimed with `CheckStarted` at the subscription's version under the account's lock,
while the account has fewer than `subscription_checks` checks running in the whole cluster;
another process that reads the same due subscription loses the append and leaves it. The
entries are listed by yt-dlp without fetching media (adapters/playlists.py), on a probe pool of
the reactor's own (a total deadline per listing); the result, with the jobs of the new entries,
is appended in one transaction (application/subscriptions.py `record_check`). A process that
dies mid-check leaves its claim; after `subscription_check_timeout` seconds another takes it
over, and the dead one's result, should it come back, no longer lands.

Safe in several processes at once; the clock is a parameter, so a test moves time on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from spool.adapters.downloader import DownloadFailed
from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.playlists import extract_playlist
from spool.adapters.probes import ProbeBusy, ProbePool, ProbeTimeout
from spool.adapters.read_models import subscriptions as subscription_rows
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.subscription_store import claim_check
from spool.application.subscriptions import record_check, seen_entries
from spool.domain import subscription
from spool.domain.events import Metadata

log = logging.getLogger("spool.subscriptions")

AT_ONCE = 50
"""Due subscriptions one pass looks at."""
MAX_ENTRIES = 500
"""Entries one listing reads at most (the newest, as feeds and channels list them first)."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SubscriptionChecks:
    """Checks the due subscriptions every `tick` seconds."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        *,
        tick: float = 5.0,
        clock: Clock = utc_now,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.tick = tick
        self.clock = clock
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        """Who claims a check (`CheckStarted.by`): this process."""
        self.guard = UrlGuard(settings.url_allowlist)
        self.probes = ProbePool(
            workers=max(1, settings.probe_workers // 4), share=max(1, settings.subscription_checks)
        )
        self.meta = Metadata(actor="subscriptions")

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await run_periodically(
                self.pass_once,
                interval=self.tick,
                stop=stop,
                what="subscription checks",
                logger=log,
            )
        finally:
            self.probes.shutdown()

    async def pass_once(self) -> int:
        """Check every subscription due now (up to `AT_ONCE`), together; how many were checked."""
        now = self.clock()
        timeout = self.settings.subscription_check_timeout
        due = await subscription_rows.due(
            self.store.pool, now, now - timedelta(seconds=timeout), AT_ONCE
        )
        done = await asyncio.gather(*(self._check(d, now) for d in due), return_exceptions=True)
        for d, outcome in zip(due, done, strict=True):
            if isinstance(outcome, Exception):
                # The subscription's id only: its URL may hold a token.
                log.warning("check of subscription %s failed: %s", d.subscription_id, outcome)
        return sum(1 for outcome in done if outcome is True)

    async def _check(self, due: subscription_rows.Due, now: datetime) -> bool:
        check_id = str(uuid.uuid4())
        timeout = self.settings.subscription_check_timeout
        state = await claim_check(
            self.store,
            due.subscription_id,
            due.account_id,
            lambda s: subscription.start_check(s, now, check_id, self.name, timeout),
            self.meta,
            limit=self.settings.subscription_checks,
            since=now - timedelta(seconds=timeout),
        )
        if state is None:
            return False
        listed = await self._list(state)
        await record_check(
            self.store, state.subscription_id, check_id, listed, self.clock(), self.meta
        )
        return True

    async def _list(self, state: subscription.SubscriptionState) -> list[subscription.Seen] | str:
        """The entries the subscription's URL lists now, or why it could not be read."""
        url, guard = state.url, self.guard
        try:
            playlist = await self.probes.run(
                state.account_id,
                lambda probe: extract_playlist(url, guard=guard, probe=probe, limit=MAX_ENTRIES),
                timeout=self.settings.probe_timeout,
            )
        except (DownloadFailed, ProbeTimeout, ProbeBusy) as exc:
            return str(exc)
        if playlist is None:
            return "The URL no longer lists entries (it is not a feed, playlist or channel)"
        return seen_entries(state.subscription_id, playlist)
