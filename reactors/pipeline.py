"""The job pipeline's process manager: turns job events into units of work on the queues.

It follows the log like a projection (checkpoint, row lock) but its effects are enqueues under
deterministic ids, so replaying an event enqueues nothing twice. Which event calls for which unit
is `adapters.queue.unit_for`; but a run's download does not go to Redis at once: the job waits in
line (adapters/dispatch_queue.py) and is sent when the nodes have room for it, in fair shares
between accounts and by priority within one (domain/fair_share.py). The room is what Redis's
download queue holds against the nodes' download slots; the line moves with each batch that
can change either (a job joining, a download ending) and on each `Ticks` pass (nodes joining,
units taken between events).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import asyncpg
import sqlalchemy as sa
from arq.connections import ArqRedis

from spool.adapters import dispatch_queue
from spool.adapters.account_policy_store import load_policy
from spool.adapters.event_store import EventStore
from spool.adapters.periodic import run_periodically
from spool.adapters.queue import DOWNLOAD_QUEUE, Dispatch, dispatch, unit_for
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import pauses
from spool.adapters.read_models.nodes import download_slots
from spool.domain import account_policy, batch, cluster_config, fair_share, job, pause
from spool.domain.account_policy import Share
from spool.domain.events import RecordedEvent, event_id
from spool.reactors.projection import locked_checkpoint

log = logging.getLogger("spool.pipeline")

DISPATCH_AT_ONCE = 64
"""Enqueues in flight at once while a batch is dispatched."""

MIN_AHEAD = 2
"""Downloads Redis may hold however few slots the nodes table shows (none online yet, or a
projection behind): the line never stops for want of a registration."""

POLICY_SECONDS = 5.0
"""How long an account's share (weight, default priority) is used before it is read again."""

SLOTS_SECONDS = 2.0
"""How long the online nodes' download slots are used before they are read again."""

TIDY_EVERY = 30
"""`Ticks` passes between two mendings of the line's counts (`dispatch_queue.tidy`)."""

DOWNLOAD_ENDS = (
    job.DownloadCompleted,
    job.JobSkipped,
    job.StageFailed,
    job.StageInterrupted,
    job.MediaNotReady,
)
"""Events after which a node's download slot may be free: a unit leaves Redis's queue. (A
download whose media is not out yet goes back to Redis's queue due later, which `_send_due`'s
count of due units leaves out until then: waiting, it holds no room in the line.)"""

SHARE_ROUNDS = 3
"""Times a pass hands out again the room that accounts with only held jobs left unused."""

EARLY_LEAD_MS = 600_000
"""How far before now a start on credit (domain/fair_share.py) is placed in Redis's download
queue, which the nodes take in order of due time: before every unit sent in that time on the
other accounts' turns."""


class PipelineReactor:
    """Dispatches download, mux and upload units as the job events arrive."""

    name = "pipeline"
    tables: Sequence[sa.Table] = ()
    event_types: frozenset[str] = frozenset(
        cls.__name__
        for cls in (
            job.JobCreated,
            job.JobReleased,
            job.JobRetried,
            job.DownloadCompleted,
            job.JobSkipped,
            job.MuxCompleted,
            job.StageFailed,
            job.StageInterrupted,
            job.MediaNotReady,
            job.JobCancelled,
            job.JobFailed,
            job.JobPaused,
            job.JobResumed,
            # A scope's pause holds its jobs in line; its lift dispatches the jobs it held
            # that are not in line (`_released`) and lets the line send the others.
            batch.BatchPaused,
            batch.BatchResumed,
            account_policy.AccountPaused,
            account_policy.AccountResumed,
            cluster_config.IntakePaused,
            cluster_config.IntakeResumed,
        )
    )

    def __init__(
        self,
        redis: ArqRedis,
        store: EventStore,
        *,
        ahead: float = 1.0,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.store = store
        self.ahead = ahead
        self.burst = burst
        self.clock = clock
        self._shares: dict[str, tuple[float, Share]] = {}
        self._slots: tuple[float, int] | None = None

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        joined: dict[str, dispatch_queue.Entry] = {}
        left: dict[str, int] = {}
        units: list[Dispatch] = []
        changed = False  # a pause lifted: what the line may send has changed
        held: dict[str, bool] = {}  # jobs paused (True) or resumed by their own pause
        # A release or a retry joins with what the job was created with: read at once.
        later = [
            e.stream_id
            for e in events
            if _joins_line(e.data) and not isinstance(e.data, job.JobCreated)
        ]
        firsts = await self.store.read_firsts(later, conn=conn) if later else {}
        for e in events:
            if (scope := pauses.scope_of(e)) is not None:
                changed = True
                if not pauses.pauses_scope(e):
                    units += [
                        u._replace(
                            correlation_id=e.metadata.correlation_id,
                            causation_id=event_id(e.position),
                        )
                        for u in await _released(conn, scope, e)
                    ]
                continue
            job_id = e.stream_id.removeprefix("job-")
            ev = e.data
            if _joins_line(ev):
                first = firsts[e.stream_id].data if e.stream_id in firsts else None
                created = ev if isinstance(ev, job.JobCreated) else first
                entry = await self._entry(e, job_id, created)
                if entry is not None:
                    joined[job_id] = entry
                continue
            if isinstance(ev, job.JobPaused | job.JobResumed):
                held[job_id] = isinstance(ev, job.JobPaused)
            run = _run_leaving(ev)
            if run is not None:
                # A run that joined in this very batch and already left never touches the line.
                if job_id in joined and joined[job_id].run <= run:
                    del joined[job_id]
                left[job_id] = max(run, left.get(job_id, 0))
            changed = changed or isinstance(ev, (job.JobResumed, *DOWNLOAD_ENDS))
            unit = unit_for(job_id, ev)
            if unit is not None:
                # The unit follows the event's request and names the event as its cause; its
                # id stays the deterministic one, so a replay still enqueues nothing twice.
                units.append(
                    unit._replace(
                        correlation_id=e.metadata.correlation_id, causation_id=event_id(e.position)
                    )
                )
        # Leaving first: it concerns rows from earlier batches only (this batch's own are netted
        # out above), and a run leaving may be followed by the job's next run joining.
        await dispatch_queue.leave(conn, list(left.items()))
        if joined:
            await dispatch_queue.join(conn, list(joined.values()), credit=await self._credit(conn))
        await dispatch_queue.hold(conn, held)
        # A download of a job waiting in line is the line's to send, whatever else calls for it
        # (a lifted pause): sent from here, it would pass the other accounts' turns.
        downloads = [u.job_id for u in units if u.stage == "download"]
        if downloads:
            in_line = await dispatch_queue.waiting_ids(conn, downloads)
            units = [u for u in units if u.stage != "download" or u.job_id not in in_line]
        if joined or left or changed:  # else the line and the room are as the last pass left
            units += await self._send_due(conn)
        await _enqueue(self.redis, units)

    async def tick(self, conn: asyncpg.Connection, *, tidy: bool) -> None:
        """One pass outside the log's events: send what the nodes have room for (after mending
        the line's counts, when `tidy`). The caller holds the pipeline's checkpoint lock."""
        if tidy:
            await dispatch_queue.tidy(conn)
        await _enqueue(self.redis, await self._send_due(conn))

    async def _entry(
        self, e: RecordedEvent, job_id: str, created: object
    ) -> dispatch_queue.Entry | None:
        if not isinstance(created, job.JobCreated):
            log.warning("job %s has no JobCreated: its %s is not dispatched", job_id, e.type)
            return None
        priority = created.options.priority
        if priority is None:
            priority = (await self._share(created.account_id)).default_priority
        return dispatch_queue.Entry(
            job_id=job_id,
            account_id=created.account_id,
            batch_id=created.batch_id,
            run=e.data.run if isinstance(e.data, job.JobRetried) else 1,
            priority=priority,
            seq=e.position,
            correlation_id=e.metadata.correlation_id,
            causation_id=event_id(e.position),
        )

    async def _share(self, account_id: str) -> Share:
        now = self.clock()
        cached = self._shares.get(account_id)
        if cached is not None and now - cached[0] < POLICY_SECONDS:
            return cached[1]
        policy = await load_policy(self.store, account_id)
        share = Share() if policy is None else policy.share
        self._shares[account_id] = (now, share)
        return share

    async def _room(self, conn: asyncpg.Connection) -> int:
        """How many downloads Redis's queue may hold: those the nodes run (as many as their
        slots) and as many again times `ahead` waiting, so a slot that frees finds its next unit
        there, but no more."""
        return max(MIN_AHEAD, round(await self._slots_online(conn) * (1 + self.ahead)))

    async def _credit(self, conn: asyncpg.Connection) -> int:
        """How many turns ahead of the waiting accounts one back after a quiet spell may go
        (domain/fair_share.py)."""
        return round(await self._slots_online(conn) * self.burst)

    async def _slots_online(self, conn: asyncpg.Connection) -> int:
        now = self.clock()
        if self._slots is None or now - self._slots[0] >= SLOTS_SECONDS:
            self._slots = (now, await download_slots(conn))
        return self._slots[1]

    async def _send_due(self, conn: asyncpg.Connection) -> list[Dispatch]:
        lines = await dispatch_queue.lines(conn)
        if not lines:
            return []
        # Units arq holds, due now: queued or running (a unit leaves the queue when it ends);
        # a retry deferred to later is not counted until it is due.
        in_redis = await self.redis.zcount(DOWNLOAD_QUEUE, "-inf", int(time.time() * 1000))
        free = await self._room(conn) - in_redis
        # Starts on credit go before what Redis holds (EARLY_LEAD_MS), so they need no room
        # freed by the others' units: Redis may hold a credit's worth more of them.
        beyond = free + await self._credit(conn)
        lines = [ln._replace(weight=(await self._share(ln.account_id)).weight) for ln in lines]
        sent: list[tuple[dispatch_queue.Sent, bool]] = []
        # An account whose waiting jobs are all held (a paused batch or job) sends fewer than
        # its share: the room it leaves goes round again to the others, a few times at most.
        for _ in range(SHARE_ROUNDS):
            if beyond <= 0 or not lines:
                break
            room = max(0, free)
            decided = fair_share.plan(room, lines, early_room=beyond - room)
            got = await dispatch_queue.send(conn, decided.order, decided.served)
            # An account's jobs come back as the first of those `order` asked of it.
            early: dict[str, list[bool]] = {}
            for a, on_credit in zip(decided.order, decided.early, strict=True):
                early.setdefault(a, []).append(on_credit)
            sent += [(s, early[s.account_id].pop(0)) for s in got]
            free -= len(got)
            beyond -= len(got)
            asked = Counter(decided.order)
            given = Counter(s.account_id for s in got)
            lines = [
                ln._replace(
                    waiting=ln.waiting - given[a],
                    served=decided.served.get(a, ln.served),
                )
                for ln in lines
                if given[(a := ln.account_id)] == asked[a]
            ]
            if len(got) == len(decided.order):
                break
        # Sent at once, units would share a millisecond and go in the order of their ids: each
        # is placed a millisecond after the one before it, all already due. A start on credit
        # goes before what Redis holds of the others' turns.
        first_ms = int(time.time() * 1000) - len(sent)
        return [
            Dispatch(
                s.job_id,
                s.run,
                "download",
                1,
                correlation_id=s.correlation_id,
                causation_id=s.causation_id,
                due_ms=first_ms + i - (EARLY_LEAD_MS if on_credit else 0),
            )
            for i, (s, on_credit) in enumerate(sent)
        ]


def _joins_line(ev: object) -> bool:
    """Whether a job event makes a run whose download may start: it waits in line. (A retry
    from mux or upload goes to the node that holds the files, as `unit_for` says.)"""
    if isinstance(ev, job.JobCreated):
        return not ev.held
    if isinstance(ev, job.JobRetried):
        return ev.from_stage == "download"
    return isinstance(ev, job.JobReleased)


def _run_leaving(ev: object) -> int | None:
    """The run a job event takes out of line, if it waits there: cancelled or failed."""
    if isinstance(ev, job.JobCancelled | job.JobFailed):
        return ev.run
    return None


async def _enqueue(redis: ArqRedis, units: Sequence[Dispatch]) -> None:
    # Each enqueue is a few Redis round trips; one after another they held up the whole batch
    # (and every job behind it). Units are independent: their order matters only loosely (a
    # batch's downloads are sent in their fair order, DISPATCH_AT_ONCE at a time).
    for i in range(0, len(units), DISPATCH_AT_ONCE):
        await asyncio.gather(*(dispatch(redis, u) for u in units[i : i + DISPATCH_AT_ONCE]))


class Ticks:
    """The pipeline's passes between events, every `interval` seconds, under its checkpoint's
    lock (so never beside a batch being applied, in this process or another)."""

    def __init__(self, reactor: PipelineReactor, store: EventStore, interval: float = 1.0):
        self.reactor = reactor
        self.store = store
        self.interval = interval
        self.passes = 0

    async def pass_once(self) -> None:
        """One pass: send what there is room for; every `TIDY_EVERY`th, mend the line first."""
        tidy = self.passes % TIDY_EVERY == 0
        self.passes += 1
        async with self.store.pool.acquire() as conn, conn.transaction():
            await locked_checkpoint(conn, self.reactor.name)  # commits unflushed
            await self.reactor.tick(conn, tidy=tidy)

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(
            self.pass_once, interval=self.interval, stop=stop, what="pipeline pass", logger=log
        )


RESUME_PATIENCE = 10.0
"""Seconds a lifted pause's dispatch waits for the `pauses` projection to have applied it."""

RELEASED_AT_ONCE = 500
"""Waiting jobs a lifted pause reads at a time."""


async def _released(
    conn: asyncpg.Connection, scope: pause.Scope, resumed: RecordedEvent
) -> list[Dispatch]:
    """The units of the jobs a lifted scope's pause held back and nothing else holds now: each
    waiting job's current unit (a download its node left as `StageDeferred` is a new attempt,
    never enqueued; one that stayed queued through the pause is the same id, enqueued again as
    a no-op). A job the jobs projection shows behind the log is caught by the reconciler."""
    # Nodes read the pause from the `pauses` table: a unit dispatched before the table has the
    # resume would be left again (and wait for the reconciler). The projection applies it
    # within its coalescing delay; past the patience, dispatch anyway.
    deadline = time.monotonic() + RESUME_PATIENCE
    while not await pauses.applied(conn, resumed) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    kind, scope_id = scope
    found: list[Dispatch] = []
    after = ""
    while True:
        states = await job_rows.waiting(
            conn,
            account_id=scope_id if kind == "account" else None,
            batch_id=scope_id if kind == "batch" else None,
            after=after,
            limit=RELEASED_AT_ONCE,
        )
        if not states:
            return found
        # The scope is resumed: the projection may not have dropped its row yet.
        paused = await pauses.paused_scopes(conn, states) - {scope}
        found += [
            Dispatch(s.job_id, s.run, s.stage, s.attempt, s.node_id)
            for s in states
            if pause.may_start(s, paused)
        ]
        after = states[-1].job_id
