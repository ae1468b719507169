"""Closes viewers that went silent: a connection whose holder died says no goodbye.

Every live session reports stats each `viewer_stats_interval`, and every event of a viewer moves
its row's `last_seen_at`. A row older than `viewer_timeout` is closed by appending
`ViewerDisconnected(reason="timeout")` with the row's totals, at the row's version: if the
viewer moved meanwhile (or the projection is behind), the append clashes and the viewer is left
for the next pass to judge again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.settings import Settings
from spool.domain import viewer
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Metadata, NewEvent

log = logging.getLogger("spool.viewers")

LOCK_KEY = "spool:viewer-timeouts"
"""One closer at a time across processes (a Postgres advisory lock): two would only clash."""

# No index on last_seen_at: stats rewrite it every few seconds and an index would turn those
# HOT updates into index writes. A pass reads the table once every few seconds instead.
_SILENT = """
SELECT viewer_id, version, in_total_bytes, out_total_bytes FROM viewers
WHERE last_seen_at < now() - $1::interval
ORDER BY last_seen_at LIMIT $2
"""


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
        rows = await self.store.pool.fetch(
            _SILENT, timedelta(seconds=self.timeout), self.batch_size
        )
        closed: list[str] = []
        for r in rows:
            ev = viewer.ViewerDisconnected(
                viewer_id=r["viewer_id"],
                reason="timeout",
                in_total_bytes=r["in_total_bytes"],
                out_total_bytes=r["out_total_bytes"],
            )
            try:
                await self.store.append(
                    viewer.stream_id(r["viewer_id"]), [NewEvent(ev, self.meta)], r["version"]
                )
            except ConcurrencyError:
                continue  # it moved since the projection saw it: judge it again next pass
            closed.append(r["viewer_id"])
        if closed:
            log.info("closed %d silent viewer(s) by timeout", len(closed))
        return closed
