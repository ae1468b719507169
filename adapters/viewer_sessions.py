"""Live viewer sessions held by this process, recorded as viewer streams.

A session records `ViewerConnected` when it opens and `ViewerDisconnected` when it closes; in
between, every open session reports `ViewerStats` each stats interval, and a session that moved
nothing still reports, so a silent one means its holder is gone. Byte counters are plain integer
additions on the hot path. Nothing is appended where it happens: one flush loop per process
writes what its sessions queued, every `LIFECYCLE_SECONDS`, in a single batched append. A
worker node opens and closes two sessions per job (mux, upload); one commit each would have
cost the pipeline four commits per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.repository import record_many
from spool.domain import viewer
from spool.domain.errors import ConcurrencyError
from spool.domain.events import Event, Metadata, NewEvent

log = logging.getLogger("spool.viewers")

LIFECYCLE_SECONDS = 1.0
"""How long a connect, state change or goodbye may wait in the queue before it is written."""


class ClientFacts:
    """What the User-Agent and the address tell about a client; empty strings when unknown."""

    __slots__ = ("browser_name", "country_code", "country_name", "device_type", "os_name")

    def __init__(
        self,
        device_type: str = "",
        os_name: str = "",
        browser_name: str = "",
        country_code: str = "",
        country_name: str = "",
    ) -> None:
        self.device_type = device_type
        self.os_name = os_name
        self.browser_name = browser_name
        self.country_code = country_code
        self.country_name = country_name


Describe = Callable[[str, str], ClientFacts]
"""(user_agent, remote_address) -> what they tell; the recorder's way to fill client facts."""


def _no_facts(user_agent: str, remote_address: str) -> ClientFacts:
    return ClientFacts()


class ViewerSession:
    """One live connection: count its bytes, change its state, close it."""

    def __init__(self, opened: viewer.ViewerState) -> None:
        self.viewer_id = opened.viewer_id
        self.opened = opened
        """The viewer as its connect left it: what its state changes are decided on (this
        session is its one writer, and queues nothing once closing)."""
        self.in_total = 0
        self.out_total = 0
        self.bitrate = opened.bitrate
        self._bitrate_sent = opened.bitrate
        self._last_in = 0
        self._last_out = 0
        self._last_at = time.monotonic()
        self.written = 0
        """The stream's version as far as this process has written it."""
        self.queued: list[Event] = []
        self.closing = False
        self.closed = False

    def add_in(self, n: int) -> None:
        """Count bytes received from the client."""
        self.in_total += n

    def add_out(self, n: int) -> None:
        """Count bytes sent to the client."""
        self.out_total += n

    def set_bitrate(self, bits_per_second: int) -> None:
        """The media's bitrate, once known; it travels with the next stats."""
        self.bitrate = max(0, bits_per_second)

    def set_state(self, state: str) -> None:
        """Queue a state change (PLAYING, PAUSED, ...) for the next flush."""
        changed = viewer.change_state(self.opened, self.viewer_id, state)
        if not self.closing:
            self.queued.extend(changed)

    def close(self) -> None:
        """Queue the goodbye with the final byte totals; closing twice does nothing."""
        if self.closing:
            return
        self.closing = True
        self.queued.append(
            viewer.ViewerDisconnected(
                viewer_id=self.viewer_id,
                reason="closed",
                in_total_bytes=self.in_total,
                out_total_bytes=self.out_total,
            )
        )

    def _stats(self, now: float) -> viewer.ViewerStats:
        elapsed = max(now - self._last_at, 1e-3)
        ev = viewer.ViewerStats(
            viewer_id=self.viewer_id,
            in_bandwidth=int((self.in_total - self._last_in) / elapsed),
            out_bandwidth=int((self.out_total - self._last_out) / elapsed),
            in_total_bytes=self.in_total,
            out_total_bytes=self.out_total,
            bitrate=self.bitrate if self.bitrate != self._bitrate_sent else None,
        )
        self._last_in, self._last_out, self._last_at = self.in_total, self.out_total, now
        self._bitrate_sent = self.bitrate
        return ev


class ViewerRecorder:
    """The sessions this process holds, and the loop that writes what they queued."""

    def __init__(
        self,
        store: EventStore,
        *,
        node_id: str,
        interval: float = 5.0,
        describe: Describe = _no_facts,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.interval = interval
        """Seconds between two stats of a session."""
        self.describe = describe
        self.meta = Metadata(actor=node_id, node_id=node_id)
        self.sessions: dict[str, ViewerSession] = {}
        self._lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self._stats_due = time.monotonic() + interval

    async def start(self) -> None:
        """Start writing queued events, and stats every interval."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="viewer-sessions")

    async def aclose(self) -> None:
        """Stop the loop, say goodbye for every session still open and write it all."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        for session in list(self.sessions.values()):
            session.close()
        with contextlib.suppress(Exception):
            await self.flush()

    async def open(
        self,
        *,
        harness_type: str,
        state: str,
        stream_key: str = "",
        application_id: str = "",
        remote_address: str = "",
        user_agent: str = "",
        bitrate: int = 0,
    ) -> ViewerSession:
        """Open a session; its ViewerConnected goes out with the next flush."""
        facts = self.describe(user_agent, remote_address)
        viewer_id = viewer.new_viewer_id()
        ev = viewer.ViewerConnected(
            viewer_id=viewer_id,
            harness_type=harness_type,
            state=state,
            application_id=application_id[: viewer.MAX_TEXT],
            stream_key=stream_key[: viewer.MAX_TEXT],
            remote_address=remote_address[: viewer.MAX_TEXT],
            user_agent=user_agent[: viewer.MAX_TEXT],
            device_type=facts.device_type,
            os_name=facts.os_name[: viewer.MAX_TEXT],
            browser_name=facts.browser_name[: viewer.MAX_TEXT],
            country_code=facts.country_code,
            country_name=facts.country_name[: viewer.MAX_TEXT],
            started_at=int(time.time() * 1000),
            bitrate=max(0, bitrate),
            node_id=self.node_id,
        )
        connected = viewer.connect(None, ev)
        opened = viewer.evolve(None, ev, datetime.now(UTC), 1)
        assert opened is not None  # a ViewerConnected opens the viewer
        session = ViewerSession(opened)
        session.queued.extend(connected)
        self.sessions[viewer_id] = session
        return session

    async def flush(self, *, stats: bool = True) -> None:
        """Write every queued event, with (`stats`) one ViewerStats per open session first."""
        async with self._lock:
            now = time.monotonic()
            if stats:
                for s in self.sessions.values():
                    if not s.closing and s.written > 0:
                        s.queued.append(s._stats(now))
            due = [s for s in self.sessions.values() if s.queued]
            if not due:
                return
            batch = [(s, list(s.queued)) for s in due]
            # At the version each session wrote: it is its viewer's one writer, but for the
            # timeout reactor, which ends a viewer that went silent.
            appends = [
                StreamAppend(
                    viewer.stream_id(s.viewer_id),
                    [NewEvent(e, self.meta) for e in events],
                    s.written,
                )
                for s, events in batch
            ]
            try:
                await record_many(self.store, appends)
            except ConcurrencyError:
                # One of them was ended elsewhere (the timeout reactor while we stalled):
                # append one by one and drop the ended ones.
                for (s, events), a in zip(batch, appends, strict=True):
                    try:
                        await record_many(self.store, [a])
                    except ConcurrencyError:
                        s.closing = s.closed = True
                        self.sessions.pop(s.viewer_id, None)
                        continue
                    self._written(s, events)
                return
            for s, events in batch:
                self._written(s, events)

    def _written(self, session: ViewerSession, events: list[Event]) -> None:
        del session.queued[: len(events)]
        session.written += len(events)
        if session.closing and not session.queued:
            session.closed = True
            self.sessions.pop(session.viewer_id, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(LIFECYCLE_SECONDS, self.interval))
            stats = time.monotonic() >= self._stats_due
            if stats:
                self._stats_due = time.monotonic() + self.interval
            try:
                await self.flush(stats=stats)
            except Exception:  # the next round tries again; viewers are not worth a crash
                log.exception("viewer sessions flush failed")
