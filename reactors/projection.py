"""What a projection is, and the runner that keeps projections up to date with the log.

A projection applies a batch of events and moves its checkpoint in one transaction, under a row
lock on that checkpoint, so any number of runners may follow the same projection and each event
still counts exactly once. A rebuild fills copies of the projection's tables in a side schema
while the live tables keep serving, then swaps them in within one short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from adapters.event_store import NOTIFY_CHANNEL, Checkpoint, EventStore, checkpoint_of
from domain.events import RecordedEvent

log = logging.getLogger("spool.projections")

REBUILD_SCHEMA = "spool_rebuild"
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


class Projection(Protocol):
    """A read model built from the log. `apply` must only write to `tables`."""

    name: str
    tables: Sequence[sa.Table]
    event_types: frozenset[str]

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        """Write the effect of `events` (already in commit order) to the projection's tables."""


Progress = Callable[[int], None]


class ProjectionRunner:
    """Keeps a set of projections caught up: woken by NOTIFY, polling as a fallback."""

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    def projection(self, name: str) -> Projection:
        for p in self.projections:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.projections)
        raise KeyError(f"no projection named {name!r} (known: {known})")

    async def _step(
        self,
        projection: Projection,
        checkpoint_name: str,
        *,
        schema: str | None = None,
        finish: Callable[[asyncpg.Connection, Checkpoint], Awaitable[None]] | None = None,
    ) -> int:
        """Apply one batch under the checkpoint's row lock; returns how many events it applied."""
        async with self.pool.acquire() as conn, conn.transaction():
            if schema is not None:
                await conn.execute(f"SET LOCAL search_path = {schema}, public")
            row = await conn.fetchrow(
                "SELECT tx, position FROM checkpoints WHERE name = $1 FOR UPDATE", checkpoint_name
            )
            if row is None:  # the first run of this projection: start from the beginning
                await conn.execute(
                    "INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
                    checkpoint_name,
                )
                row = await conn.fetchrow(
                    "SELECT tx, position FROM checkpoints WHERE name = $1 FOR UPDATE",
                    checkpoint_name,
                )
                assert row is not None
            after = Checkpoint(row["tx"], row["position"])
            events = await self.store.read_all(
                after, self.batch_size, types=projection.event_types, conn=conn
            )
            if events:
                await projection.apply(conn, events)
                after = checkpoint_of(events[-1])
                await conn.execute(
                    "UPDATE checkpoints SET tx = $2, position = $3, updated_at = now() "
                    "WHERE name = $1",
                    checkpoint_name,
                    after.tx,
                    after.position,
                )
            if finish is not None and len(events) < self.batch_size:
                await finish(conn, after)
            return len(events)

    async def catch_up(self, name: str | None = None, progress: Progress | None = None) -> int:
        """Apply everything committed so far to one projection (or all); returns events applied."""
        total = 0
        for projection in [self.projection(name)] if name else self.projections:
            while True:
                n = await self._step(projection, projection.name)
                total += n
                if progress is not None and n:
                    progress(n)
                if n < self.batch_size:
                    break
        return total

    async def wait_until(self, name: str, at: Checkpoint, within: float = 30.0) -> None:
        """Catch `name` up at least to `at` (an append's checkpoint).

        A fresh event becomes readable only once every older transaction on the server has
        ended; from then on one catch-up applies it (a projection that does not follow its
        type simply moves on). Gives up with TimeoutError after `within` seconds.
        """
        await self.store.wait_readable(at, within)
        await self.catch_up(name)

    async def settle(self, name: str | None = None, within: float = 30.0) -> None:
        """Catch up to every event committed so far, waiting out older open transactions."""
        last = await self.pool.fetchrow(
            "SELECT tx::text::bigint AS tx, position FROM events "
            "ORDER BY events.tx DESC, events.position DESC LIMIT 1"
        )
        if last is None:
            return
        for projection in [self.projection(name)] if name else self.projections:
            await self.wait_until(projection.name, Checkpoint(last["tx"], last["position"]), within)

    async def pending(self, name: str) -> int:
        """How many events of its types a projection has yet to apply."""
        projection = self.projection(name)
        row = await self.pool.fetchrow("SELECT tx, position FROM checkpoints WHERE name = $1", name)
        after = Checkpoint(row["tx"], row["position"]) if row else Checkpoint()
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM events WHERE (tx, position) > ($1::text::xid8, $2) "
            "AND type = ANY($3::text[])",
            str(after.tx),
            after.position,
            list(projection.event_types),
        )
        return count

    async def rebuild(self, name: str, progress: Progress | None = None) -> int:
        """Rebuild a projection from position zero aside, then swap it in; returns events applied.

        The live tables keep serving (and the live runner keeps them current) until the swap,
        which takes the live checkpoint's lock, applies the last events, and renames tables.
        """
        projection = self.projection(name)
        shadow = f"{name}@rebuild"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {REBUILD_SCHEMA}")
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", shadow)
            for table in projection.tables:
                await conn.execute(f"DROP TABLE IF EXISTS {REBUILD_SCHEMA}.{table.name}")
                copy = table.to_metadata(sa.MetaData(), schema=REBUILD_SCHEMA)
                await conn.execute(str(CreateTable(copy).compile(dialect=_DIALECT)))
                for index in copy.indexes:
                    await conn.execute(str(CreateIndex(index).compile(dialect=_DIALECT)))

        swapped = False

        async def swap(conn: asyncpg.Connection, at: Checkpoint) -> None:
            nonlocal swapped
            live = await conn.fetchrow(
                "SELECT tx, position FROM checkpoints WHERE name = $1 FOR UPDATE", name
            )
            # The live runner is now blocked on its checkpoint; nothing new lands in old tables.
            if live is not None and (live["tx"], live["position"]) > tuple(at):
                return  # the log moved on while we read it: take another batch first
            for table in projection.tables:
                await conn.execute(f"DROP TABLE public.{table.name}")
                await conn.execute(f"ALTER TABLE {REBUILD_SCHEMA}.{table.name} SET SCHEMA public")
            await conn.execute(
                "INSERT INTO checkpoints (name, tx, position) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET tx = $2, position = $3, updated_at = now()",
                name,
                at.tx,
                at.position,
            )
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", shadow)
            swapped = True

        total = 0
        while not swapped:
            n = await self._step(projection, shadow, schema=REBUILD_SCHEMA, finish=swap)
            total += n
            if progress is not None and n:
                progress(n)
        return total

    def wake(self) -> None:
        """Ask the runner to look at the log now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until `stop` is set: wake on NOTIFY, else poll every interval."""

        def on_notify(*_: object) -> None:
            self._wake.set()

        listener: asyncpg.Connection | None = None
        while not stop.is_set():
            try:
                if listener is None or listener.is_closed():
                    listener = await self.pool.acquire()
                    await listener.add_listener(NOTIFY_CHANNEL, on_notify)
                self._wake.clear()
                await self.catch_up()
                if await self.store.has_unreadable():
                    # A NOTIFY came for events still behind an older open transaction: look
                    # again shortly rather than at the next poll.
                    self._wake.set()
                    await asyncio.sleep(0.02)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("projection catch-up failed, will retry: %s", exc)
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await self.pool.release(listener)
                    listener = None
            await _first_of(self._wake, stop, seconds=self.poll_interval)
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
                await self.pool.release(listener)


async def _first_of(*events: asyncio.Event, seconds: float) -> None:
    """Wait until any of `events` is set, or `seconds` pass."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
