"""Following the event log as it grows: the one catch-up loop of every log follower.

Every append NOTIFYs `NOTIFY_CHANNEL` with the event types it wrote. A follower (the projection
runner, hence the pipeline, webhook and scheduler reactors; the `/ws` cluster feed) is woken by
those NOTIFYs, polls every `poll_interval` as a fallback (a NOTIFY can be lost with its
connection), and catches up from its own checkpoint in (tx, position) order. Where the
checkpoint lives and how a batch is applied (under a row lock, in one transaction) is the
follower's; the waking, the listener's life and the retry after a failure are here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import NamedTuple

import asyncpg

from spool.adapters.event_store import NOTIFY_CHANNEL, Batch, Checkpoint, EventStore, parse_wake

log = logging.getLogger("spool.subscription")

UNREADABLE_RETRY = 0.02
"""Seconds before looking again when a NOTIFY came for events behind an older open
transaction: much sooner than the next poll."""


class Look(NamedTuple):
    """What a wake-up calls for: the event types notified since the last look, or everything
    (a poll, a `wake()`, a NOTIFY that named no types, the first look after (re)connecting)."""

    types: frozenset[str]
    everything: bool

    def concerns(self, types: Collection[str]) -> bool:
        """Whether a follower of `types` has anything to look at."""
        return self.everything or not self.types.isdisjoint(types)


CatchUp = Callable[[Look], Awaitable[None]]


class LogSubscription:
    """Wakes a follower on NOTIFY, else every `poll_interval`, until its stop is set."""

    def __init__(
        self,
        store: EventStore,
        *,
        what: str,
        poll_interval: float = 1.0,
        coalesce: float = 0.0,
        logger: logging.Logger = log,
    ) -> None:
        self.store = store
        self.what = what
        self.poll_interval = poll_interval
        self.coalesce = coalesce
        """Seconds to wait after a NOTIFY before catching up, so that the appends of a busy
        moment are taken in one look rather than one each."""
        self.log = logger
        self._wake = asyncio.Event()
        self._notified: set[str] = set()
        self._everything = True
        self._newest = 0
        """The newest appending transaction notified since the last look."""
        self._untimed = False
        """A NOTIFY without a transaction id came since the last look."""

    def wake(self) -> None:
        """Look at the log now, for every type."""
        self._everything = True
        self._wake.set()

    def _notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        tx, types = parse_wake(payload)
        if types:
            self._notified.update(types)
        else:
            self._everything = True
        if tx is None:
            self._untimed = True
        else:
            self._newest = max(self._newest, tx)
        self._wake.set()

    async def follow(
        self,
        catch_up: CatchUp,
        stop: asyncio.Event,
        *,
        on_listen: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Call `catch_up` on every wake-up until `stop` is set.

        `on_listen` runs each time the listener is (re)attached, before the look that follows:
        from then on no append goes unnoticed. A failure (a database restart breaks connections
        in more ways than asyncpg's connection errors) is logged, the listener dropped and
        attached again on the next turn: a follower that ended here would take its process down.
        """
        pool = self.store.pool
        listener: asyncpg.Connection | None = None
        # One task for the follower's life turns a stop into a wake-up, so that each wait below
        # awaits one event under a timeout and starts no task: a follower keeps the same tasks
        # however often it wakes (a websocket feed's process counts its tasks).
        stopped = asyncio.ensure_future(stop.wait())
        stopped.add_done_callback(lambda _: self._wake.set())
        clock = asyncio.get_running_loop().time
        polled = clock()
        try:
            while not stop.is_set():
                try:
                    if listener is None or listener.is_closed():
                        listener = await pool.acquire()
                        await listener.add_listener(NOTIFY_CHANNEL, self._notify)
                        self._everything = True
                        if on_listen is not None:
                            await on_listen()
                    # The poll looks at everything every `poll_interval`, however many NOTIFYs
                    # come meanwhile: a node's heartbeat NOTIFYs every second, and a poll that
                    # waited for a quiet second never came while a node was up, so an append
                    # whose NOTIFY was lost waited for the next of its own types.
                    if not self._wake.is_set() or clock() - polled >= self.poll_interval:
                        self._everything = True
                    if self._everything:
                        polled = clock()
                    self._wake.clear()
                    await self._look(catch_up)
                except Exception as exc:
                    if isinstance(exc, OSError | asyncpg.PostgresError | asyncpg.InterfaceError):
                        self.log.warning("%s failed, will retry: %s", self.what, exc)
                    else:
                        self.log.exception("%s failed unexpectedly, will retry", self.what)
                    if listener is not None:
                        await _release(pool, listener, self._notify)
                        listener = None
                await _within(self.poll_interval, self._wake)
                if self._wake.is_set() and not stop.is_set() and self.coalesce > 0:
                    await _within(self.coalesce, stop)
        finally:
            stopped.cancel()
            if listener is not None:
                await _release(pool, listener, self._notify)

    async def _look(self, catch_up: CatchUp) -> None:
        look = Look(frozenset(self._notified), self._everything)
        newest, untimed = self._newest, self._untimed
        self._notified, self._everything, self._newest, self._untimed = set(), False, 0, False
        try:
            # Every read of the catch-up sees at least what lies below this.
            readable = await self.store.readable_below() if newest else 0
            await catch_up(look)
        except BaseException:
            self._put_back(look, newest, untimed)
            raise
        if (newest and newest >= readable) or (untimed and await self.store.has_unreadable()):
            # A NOTIFY came for events still behind an older open transaction when the
            # catch-up read: look again shortly, for the same types, rather than at the next
            # poll. A NOTIFY's transaction id tells it without reading the log.
            self._put_back(look, newest, untimed)
            self._wake.set()
            await asyncio.sleep(UNREADABLE_RETRY)

    def _put_back(self, look: Look, newest: int, untimed: bool) -> None:
        self._notified |= look.types
        self._everything |= look.everything
        self._newest = max(self._newest, newest)
        self._untimed |= untimed

    async def batches(
        self, after: Checkpoint, types: frozenset[str], batch_size: int
    ) -> AsyncIterator[Batch]:
        """The batches of `types` committed after `after`, in (tx, position) order, up to now.

        Each batch's horizon steps past the events of other types too, so a follower that keeps
        it as its checkpoint never scans them twice. Ends after the first short batch.
        """
        while True:
            batch = await self.store.read_batch(after, batch_size, types=types)
            yield batch
            after = batch.horizon
            if len(batch.events) < batch_size:
                return


async def _release(
    pool: asyncpg.Pool, listener: asyncpg.Connection, callback: Callable[..., None]
) -> None:
    """Give the listening connection back to the pool, deaf, whatever state it is in."""
    with contextlib.suppress(Exception):
        await listener.remove_listener(NOTIFY_CHANNEL, callback)
    with contextlib.suppress(Exception):
        await pool.release(listener)


async def _within(seconds: float, event: asyncio.Event) -> None:
    """Wait until `event` is set or `seconds` pass, starting no task."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
