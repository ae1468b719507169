"""What a projection is, and the runner that keeps projections up to date with the log.

A projection applies a batch of events and moves its checkpoint in one transaction, under a row
lock on that checkpoint, so any number of runners may follow the same projection and each event
still counts exactly once. A rebuild fills copies of the projection's tables in a side schema
while the live tables keep serving, then swaps them in within one short transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from spool.adapters import event_archive, reporting
from spool.adapters.event_store import Batch, Checkpoint, EventStore, checkpoint_of
from spool.adapters.read_models.projection import Projection
from spool.adapters.subscription import LogSubscription, Look
from spool.domain import node
from spool.domain.events import RecordedEvent

log = logging.getLogger("spool.projections")

REBUILD_SCHEMA = "spool_rebuild"
REBUILD_BATCH = 5000
"""Events a rebuild applies per transaction (a live runner's batches are smaller)."""
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


Progress = Callable[[int], None]


# A projection is derived data: should a crash lose the commit that applies a batch, it loses
# the checkpoint with it and the batch is applied again from the log. So that commit need not
# wait for its WAL flush, which every live wake-up would otherwise pay; the lock that opens the
# transaction says so (`set_config(..., true)` is `SET LOCAL`), saving a round trip.
_LOCK_CHECKPOINT = (
    "SELECT tx, position, set_config('synchronous_commit', 'off', true) FROM checkpoints "
    "WHERE name = $1 FOR UPDATE"
)
_CHECKPOINTS = "SELECT name, tx, position FROM checkpoints WHERE name = ANY($1::text[])"
# In name order, as every runner and rebuild takes them: two of them cannot deadlock.
_LOCK_CHECKPOINTS = (
    "SELECT name, tx, position, set_config('synchronous_commit', 'off', true) FROM checkpoints "
    "WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE"
)
_MOVE_CHECKPOINTS = (
    "UPDATE checkpoints AS c SET tx = m.tx, position = m.position, updated_at = now() "
    "FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS m(name, tx, position) "
    "WHERE c.name = m.name"
)


class ReadAhead(NamedTuple):
    """A batch read from `after` before the transaction that will apply it began."""

    after: Checkpoint
    batch: Batch


async def locked_checkpoint(conn: asyncpg.Connection, name: str) -> Checkpoint:
    """The checkpoint `name`, row-locked for this transaction (created at the origin if new)."""
    row = await conn.fetchrow(_LOCK_CHECKPOINT, name)
    if row is None:  # the first run of this projection: start from the beginning
        await conn.execute(
            "INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING", name
        )
        row = await conn.fetchrow(_LOCK_CHECKPOINT, name)
        assert row is not None
    return Checkpoint(row["tx"], row["position"])


class _Together:
    """Several projections fed from one read of the log, each the events of its own types."""

    def __init__(self, members: Sequence[Projection]) -> None:
        self.members = list(members)
        self.name = "+".join(p.name for p in self.members)
        self.tables: Sequence[sa.Table] = [t for p in self.members for t in p.tables]
        self.event_types = frozenset().union(*(p.event_types for p in self.members))
        self.applied = dict.fromkeys((p.name for p in self.members), 0)
        """Events each member has applied."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        counts: dict[str, int] = {}
        for p in self.members:
            mine = (
                events if len(self.members) == 1 else [e for e in events if e.type in p.event_types]
            )
            if mine:
                await p.apply(conn, mine)
                counts[p.name] = len(mine)
        for name, n in counts.items():
            self.applied[name] += n


class ProjectionRunner:
    """Keeps a set of projections caught up: woken by NOTIFY, polling as a fallback."""

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        coalesce: float = 0.03,
    ) -> None:
        self.store = store
        self.projections = list(projections)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        """Seconds to wait after a NOTIFY before catching up, so that the appends of a busy
        moment are applied in one transaction per projection rather than one each: a job's
        events arrive a few milliseconds apart from API, nodes and reactors. 30 ms cut the
        projection process's CPU per job from 27 to 18 ms and PostgreSQL's from 24 to 15 ms
        (bench/pipeline.py, BENCHMARKS.md) for at most 30 ms more latency per hop."""
        self.subscription = LogSubscription(
            store,
            what="projection catch-up",
            poll_interval=poll_interval,
            coalesce=coalesce,
            logger=log,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    def projection(self, name: str) -> Projection:
        for p in self.projections:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.projections)
        raise KeyError(f"no projection named {name!r} (known: {known})")

    async def _read(self, projection: Projection, after: Checkpoint) -> ReadAhead:
        batch = await self.store.read_batch(after, self.batch_size, types=projection.event_types)
        return ReadAhead(after, batch)

    async def _look(self, projection: Projection, checkpoint_name: str) -> ReadAhead | None:
        """Read without a lock or a transaction; None when there is nothing worth a write.

        Most wake-ups bring nothing for most projections; they then cost two reads instead of
        a write transaction each. Events of other types are stepped over once enough of them
        pile up, so no wake-up scans more than about a batch of them.
        """
        row = await self.pool.fetchrow(
            "SELECT tx, position FROM checkpoints WHERE name = $1", checkpoint_name
        )
        after = Checkpoint(row["tx"], row["position"]) if row else Checkpoint()
        ahead = await self._read(projection, after)
        if (
            row is not None  # a first run writes its checkpoint row, which health checks read
            and not ahead.batch.events
            and ahead.batch.horizon.position - after.position < self.batch_size
        ):
            return None
        return ahead

    async def _step(
        self,
        projection: Projection,
        checkpoint_name: str,
        *,
        schema: str | None = None,
        finish: Callable[[asyncpg.Connection, Checkpoint], Awaitable[None]] | None = None,
        ahead: asyncio.Task[ReadAhead] | None = None,
    ) -> tuple[int, asyncio.Task[ReadAhead] | None]:
        """Apply one batch under the checkpoint's row lock.

        Returns how many events it applied and, when the batch was full, the read of the next
        batch, already running on another connection so that reading and decoding it overlap
        with applying this one. That read is used only if the checkpoint it started from is
        still the checkpoint when the next step locks it. It is sound: every event it returns
        lies below the oldest transaction then in flight, so nothing can later commit between
        them and the checkpoint.
        """
        prefetched: ReadAhead | None = None
        if ahead is None and finish is None:
            prefetched = await self._look(projection, checkpoint_name)
            if prefetched is None:
                return 0, None
        elif ahead is not None:
            # Awaited before taking a connection: with a pool of one, the read needs it first.
            try:
                prefetched = await ahead
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("read-ahead failed, reading again: %s", exc)
        next_read: asyncio.Task[ReadAhead] | None = None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if schema is not None:
                    await conn.execute(f"SET LOCAL search_path = {schema}, public")
                after = await locked_checkpoint(conn, checkpoint_name)  # commits unflushed
                if prefetched is not None and prefetched.after == after:
                    batch = prefetched.batch
                else:
                    batch = await self.store.read_batch(
                        after, self.batch_size, types=projection.event_types, conn=conn
                    )
                events = batch.events
                if len(events) == self.batch_size:
                    next_read = asyncio.create_task(
                        self._read(projection, checkpoint_of(events[-1]))
                    )
                if events:
                    await projection.apply(conn, events)
                if batch.horizon > after:
                    after = batch.horizon
                    await conn.execute(
                        "UPDATE checkpoints SET tx = $2, position = $3, updated_at = now() "
                        "WHERE name = $1",
                        checkpoint_name,
                        after.tx,
                        after.position,
                    )
                if finish is not None and len(events) < self.batch_size:
                    await finish(conn, after)
                return len(events), next_read
        except BaseException:
            if next_read is not None:
                next_read.cancel()
            raise

    async def _follow(
        self,
        projection: Projection,
        checkpoint_name: str,
        progress: Progress | None,
        *,
        schema: str | None = None,
        finish: Callable[[asyncpg.Connection, Checkpoint], Awaitable[None]] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Apply batches until one comes back short (or `until` says so); returns the count."""
        total = 0
        ahead: asyncio.Task[ReadAhead] | None = None
        try:
            while True:
                n, ahead = await self._step(
                    projection, checkpoint_name, schema=schema, finish=finish, ahead=ahead
                )
                total += n
                if progress is not None and n:
                    progress(n)
                if until is not None:
                    if until():
                        return total
                elif n < self.batch_size:
                    return total
        finally:
            if ahead is not None:
                ahead.cancel()

    async def _follow_together(self, members: Sequence[Projection]) -> None:
        """Catch several projections up from one read of the log per batch, applied in one
        transaction that locks and moves all their checkpoints.

        A job's events concern `jobs`, `usage`, `job_stages` and `job_minutes` alike: one read
        from the earliest of their checkpoints, each projection given the events of its own
        types past its own checkpoint, costs a wake-up a quarter of the statements that
        following them one by one does. A first run (a checkpoint row missing) and a failing
        batch go one projection at a time, as `_follow` does, so that one projection's error
        holds back only itself and those after it, as before.
        """
        names = [p.name for p in members]
        types = frozenset().union(*(p.event_types for p in members))
        try:
            while True:
                rows = await self.pool.fetch(_CHECKPOINTS, names)
                at = {r[0]: Checkpoint(r[1], r[2]) for r in rows}
                if len(at) < len(members):
                    break
                batch = await self.store.read_batch(min(at.values()), self.batch_size, types=types)
                if not any(self._worth(p, at[p.name], batch) for p in members):
                    return
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(_LOCK_CHECKPOINTS, sorted(names))
                    locked = {r[0]: Checkpoint(r[1], r[2]) for r in rows}
                    if locked != at:  # another runner moved them since the read
                        if len(locked) < len(members):
                            break
                        at = locked
                        batch = await self.store.read_batch(
                            min(at.values()), self.batch_size, types=types, conn=conn
                        )
                    moved: list[tuple[str, Checkpoint]] = []
                    for p in members:
                        after = at[p.name]
                        mine = [
                            e
                            for e in batch.events
                            if e.type in p.event_types and checkpoint_of(e) > after
                        ]
                        if mine:
                            await p.apply(conn, mine)
                        if batch.horizon > after:
                            moved.append((p.name, batch.horizon))
                    if moved:
                        await conn.execute(
                            _MOVE_CHECKPOINTS,
                            [m[0] for m in moved],
                            [m[1].tx for m in moved],
                            [m[1].position for m in moved],
                        )
                if len(batch.events) < self.batch_size:
                    return
        except Exception as exc:  # each one on its own, below, raises it again
            log.debug("catching up %s together failed, one by one: %s", ", ".join(names), exc)
        for p in members:
            await self._follow(p, p.name, None)

    def _worth(self, projection: Projection, after: Checkpoint, batch: Batch) -> bool:
        """Whether a batch read for several projections brings `projection` a write: events of
        its types past `after`, or enough events of others to step over (as `_look` judges)."""
        return (
            any(e.type in projection.event_types and checkpoint_of(e) > after for e in batch.events)
            or batch.horizon.position - after.position >= self.batch_size
        )

    async def catch_up(self, name: str | None = None, progress: Progress | None = None) -> int:
        """Apply everything committed so far to one projection (or all); returns events applied."""
        total = 0
        for projection in [self.projection(name)] if name else self.projections:
            total += await self._follow(projection, projection.name, progress)
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
        return (await self.rebuild_together([name], progress))[name]

    async def rebuild_together(
        self, names: Sequence[str], progress: Progress | None = None
    ) -> dict[str, int]:
        """Rebuild several projections in one pass over the log, then swap them all at once.

        Each batch is read and decoded once and applied to every projection's shadow tables
        (each gets the events of its own types); returns the events each applied.
        """
        members = sorted((self.projection(n) for n in dict.fromkeys(names)), key=lambda p: p.name)
        for p in members:
            await self.check_history(p.name)
        together = _Together(members)
        shadow = f"{together.name}@rebuild"
        async with self.pool.acquire() as conn, conn.transaction():
            # Rebuilds may run side by side: IF NOT EXISTS alone races on the catalog.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('spool:rebuild-schema'))")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {REBUILD_SCHEMA}")
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", shadow)
            for table in together.tables:
                await conn.execute(f"DROP TABLE IF EXISTS {REBUILD_SCHEMA}.{table.name}")
                copy = table.to_metadata(sa.MetaData(), schema=REBUILD_SCHEMA)
                await conn.execute(str(CreateTable(copy).compile(dialect=_DIALECT)))
                for index in copy.indexes:
                    await conn.execute(str(CreateIndex(index).compile(dialect=_DIALECT)))

        swapped = False

        async def swap(conn: asyncpg.Connection, at: Checkpoint) -> None:
            nonlocal swapped
            # In name order, as every rebuild takes them: two rebuilds cannot deadlock.
            for p in members:
                live = await conn.fetchrow(
                    "SELECT tx, position FROM checkpoints WHERE name = $1 FOR UPDATE", p.name
                )
                # The live runner is now blocked on this checkpoint: nothing new lands in the
                # old tables.
                if live is not None and (live["tx"], live["position"]) > tuple(at):
                    return  # the log moved on while we read it: take another batch first
            # The reporting views read the live tables: point them at the new ones first.
            await reporting.repoint_views(conn, REBUILD_SCHEMA, [t.name for t in together.tables])
            for table in together.tables:
                await conn.execute(f"DROP TABLE public.{table.name}")
                await conn.execute(f"ALTER TABLE {REBUILD_SCHEMA}.{table.name} SET SCHEMA public")
            await conn.execute(
                "INSERT INTO checkpoints (name, tx, position) SELECT n, $2, $3 "
                "FROM unnest($1::text[]) n ON CONFLICT (name) DO UPDATE "
                "SET tx = $2, position = $3, updated_at = now()",
                [p.name for p in members],
                at.tx,
                at.position,
            )
            await conn.execute("DELETE FROM checkpoints WHERE name = $1", shadow)
            swapped = True

        await self._follow(
            together,
            shadow,
            progress,
            schema=REBUILD_SCHEMA,
            finish=swap,
            until=lambda: swapped,
        )
        return dict(together.applied)

    async def check_history(self, name: str) -> None:
        """Refuse to rebuild from a log with archived heartbeats the projection would miss."""
        projection = self.projection(name)
        if node.NodeHeartbeat.__name__ not in projection.event_types:
            return
        gone = await event_archive.outstanding(self.pool)
        if gone:
            files = "\n".join(f"  spool events restore {g.file}" for g in gone)
            raise event_archive.ArchiveError(
                f"{projection.name} is built from heartbeats, and {len(gone)} day(s) of them "
                f"({gone[0].day} to {gone[-1].day}) are archived: a rebuild now would lose "
                f"their figures. Restore them first:\n{files}"
            )

    def wake(self) -> None:
        """Ask the runner to look at the log now."""
        self.subscription.wake()

    async def _catch_up_notified(self, look: Look) -> None:
        """Catch up the projections that follow a type notified since the last look.

        A thousand nodes beating once a second wake the runner a thousand times a second: only
        the projections of heartbeats then do any work. The others move their checkpoints past
        the heartbeats at the next poll, in one read.
        """
        concerned = [p for p in self.projections if look.concerns(p.event_types)]
        if len(concerned) > 1 and not look.everything:
            await self._follow_together(concerned)
            return
        # A poll goes one by one: a projection of rare types (api keys, storage configs) moves
        # its checkpoint only once a batch's worth of other events lies behind it, and a read
        # together from there would bring that many events of the others' types every poll.
        for projection in concerned:
            await self._follow(projection, projection.name, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until `stop` is set: wake on NOTIFY, else poll every interval."""
        await self.subscription.follow(self._catch_up_notified, stop)
