"""Closes viewers that went silent: a connection whose holder died says no goodbye.

Every live session reports stats each `viewer_stats_interval`, and every event of a viewer moves
its row's `last_seen_at`. A row older than `viewer_timeout` is closed through the viewers'
repository by `viewer.disconnect(reason="timeout")`, decided once on the viewer read at the
row's version: if the viewer moved meanwhile (or the projection is behind), nothing is appended
and the viewer is left for the next pass to judge again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.read_models import viewers as viewer_rows
from spool.adapters.repository import ChangingTooFast
from spool.adapters.settings import Settings
from spool.adapters.viewer_store import viewers
from spool.domain import viewer
from spool.domain.events import Event, Metadata

log = logging.getLogger("spool.viewers")

LOCK_KEY = "spool:viewer-timeouts"
"""One closer at a time across processes (a Postgres advisory lock): two would only clash."""


class ViewerTimeouts:
    """Closes silent viewers every `tick` seconds until stopped."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        *,
        tick: float | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.store = store
        self.timeout = settings.viewer_timeout
        # A third of the timeout: a silent viewer is closed at most a third late.
        self.tick = tick if tick is not None else min(5.0, max(0.5, self.timeout / 3))
        self.batch_size = batch_size
        self.meta = Metadata(actor="viewer-timeouts")
        # Decided once, on the viewer as the row saw it silent: a clash means it spoke since.
        self.viewers = replace(viewers(store), tries=1)

    async def run(self, stop: asyncio.Event) -> None:
        """Close silent viewers every tick until `stop` is set."""
        await run_periodically(
            self.close_once, interval=self.tick, stop=stop, what="viewer timeout pass", logger=log
        )

    async def close_once(self) -> list[str]:
        """One pass; returns the ids of the viewers it closed."""
        # Transaction-scoped: the lock ends with the transaction and leaves the pooled
        # connection clean (the pool skips asyncpg's reset round trip).
        async with self.store.pool.acquire() as lock, lock.transaction():
            if not await lock.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", LOCK_KEY):
                return []  # another process is closing right now
            return await self._pass()

    async def _pass(self) -> list[str]:
        rows = await viewer_rows.silent_for(
            self.store.pool, timedelta(seconds=self.timeout), self.batch_size
        )
        closed: list[str] = []
        for r in rows:
            viewer_id, silent_at = r["viewer_id"], r["version"]

            def time_out(state: viewer.ViewerState, silent_at: int = silent_at) -> list[Event]:
                if state.version != silent_at or state.closed:
                    return []  # it moved since the projection saw it: judge it again next pass
                return viewer.disconnect(state, state.viewer_id, reason="timeout")

            try:
                _, appended = await self.viewers.execute(viewer_id, time_out, self.meta)
            except ChangingTooFast:
                continue  # it moved while judged: judge it again next pass
            if appended is not None:
                closed.append(viewer_id)
        if closed:
            log.info("closed %d silent viewer(s) by timeout", len(closed))
        return closed
