"""A worker node: arq workers for its queues, the stage runner, and the heartbeat.

One process per node. Downloads come from the shared queue; mux and upload come from the node's
own queue, because the files are on its disk. Every second the node appends, in one batched
transaction, its heartbeat and the latest progress of each running stage, then looks for
cancellations of what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from arq.connections import ArqRedis
from arq.typing import WorkerCoroutine
from arq.worker import Retry, Worker, func

from spool.adapters import event_partitions, log_context, sysinfo
from spool.adapters.account_policy_store import load_policy, seconds_quota
from spool.adapters.account_storage import AccountStorages
from spool.adapters.database import unreachable
from spool.adapters.event_store import EventStore, StreamAppend, refusal_reason, refused_for_good
from spool.adapters.job_store import jobs, load_job
from spool.adapters.owned_objects import delete_owned
from spool.adapters.queue import DOWNLOAD_QUEUE, WEBHOOK_QUEUE, node_queue
from spool.adapters.repository import Loaded
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import ObjectStorage, StorageError
from spool.adapters.viewer_sessions import ViewerRecorder
from spool.domain import job, node
from spool.domain.errors import ConcurrencyError, InvalidTransition
from spool.domain.events import NO_CAUSE, Event, Metadata, NewEvent, event_id
from spool.domain.source_data import made_safe
from spool.reactors import stages
from spool.reactors.task_types import advertised, has_internet
from spool.reactors.tasks import run_task
from spool.reactors.webhooks import WebhookSender, deliver_webhook

log = logging.getLogger("spool.node")

T = TypeVar("T")

APPEND_PATIENCE = 120.0
"""Seconds a stage's result waits for an unreachable database before its unit gives up."""

STAGE_TIMEOUT = 6 * 3600
"""arq's own limit; stalls are caught much sooner by the node's progress watchdog."""

UNKNOWN_JOB_DEFER = 5.0
"""Seconds a unit of a job this database does not know waits before it is offered again."""

INTERRUPT_GRACE = 4.0
"""Seconds a stopping node gives its running stages to stop and record the interruption: the
download thread, FFmpeg and an upload each notice their cancel event well within it."""

CANCEL_GRACE = 1.0
"""Seconds, after that, for the stages still running to unwind once their tasks are cancelled."""


@dataclass
class RunningUnit:
    """A unit of work this node is running now."""

    job_id: str
    stage: job.Stage
    run: int
    attempt: int
    state: job.JobState
    """The job as this node knows it: exact while no one else appends to its stream."""
    since_version: int
    meta: Metadata
    """Metadata of the unit's events: its request's correlation, caused by the dispatching
    event, then (once started) by its own StageStarted."""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    last_progress: float = field(default_factory=time.monotonic)
    progress: job.Progress | None = None
    reported: job.Progress | None = None
    stalled: bool = False
    interrupted: bool = False
    """Cut short by the node's own stop, not by the user or a stall."""


class Node:
    """Runs stages for the cluster and reports on itself."""

    def __init__(
        self,
        *,
        store: EventStore,
        redis: ArqRedis,
        storage: ObjectStorage,
        settings: Settings,
    ) -> None:
        self.store = store
        self.redis = redis
        self.storage = storage
        # Each account's uploads go to its own storage when it configured one: one client per
        # storage for the node's life (closed in `run` when it stops), and the account's row
        # read for each upload (ttl 0), so a storage configured a moment ago takes the next one.
        self.guard = UrlGuard(settings.url_allowlist)
        self.storages = AccountStorages(
            store.pool, settings.resolved_secret_key(), storage, guard=self.guard, ttl=0.0
        )
        self.settings = settings
        self.node_id = settings.node_id
        self.workroot = settings.data_dir / "work"
        self.running: dict[str, RunningUnit] = {}
        # The job as this node left it after recording a stage, for its next stage here (mux
        # and upload come back to this node): no read of the job per stage. Bounded, since a
        # job cancelled in between never calls for its next stage.
        self.known: dict[str, job.JobState] = {}
        # Units taken from a queue but perhaps still waiting for a slot: reported as running so
        # the reconciler never mistakes them for lost.
        self.claimed: set[str] = set()
        self.slots = {
            "download": asyncio.Semaphore(settings.download_concurrency),
            "mux": asyncio.Semaphore(settings.mux_concurrency),
            "upload": asyncio.Semaphore(settings.upload_concurrency),
        }
        self.meta = Metadata(actor=f"node:{self.node_id}", node_id=self.node_id)
        self.webhooks = WebhookSender(store, self.storages, settings)
        self.hostname = sysinfo.hostname()
        self.ip = sysinfo.primary_ip()
        # The stage sessions this node holds (TRANSCODER, FILE_WRITER), reported as viewers.
        self.viewers = ViewerRecorder(
            store, node_id=self.node_id, interval=settings.viewer_stats_interval
        )
        # The `removed_at` of the last removal this node answered by registering again.
        self._removal_seen: Any = None
        self._heartbeat_day: date | None = None
        self.stopping = False

    # -- life ----------------------------------------------------------------------------

    def _workers(self) -> list[Worker]:
        common: dict[str, Any] = {
            "redis_pool": self.redis,
            "handle_signals": False,
            "ctx": {"node": self, "webhooks": self.webhooks},
            "job_timeout": STAGE_TIMEOUT,
            "keep_result": 7 * 24 * 3600,
            "poll_delay": 0.2,
            "max_tries": 1000,
        }
        s = self.settings
        return [
            Worker(
                [func(download, name="download")],
                queue_name=DOWNLOAD_QUEUE,
                max_jobs=s.download_concurrency,
                **common,
            ),
            Worker(
                [
                    func(mux, name="mux"),
                    func(upload, name="upload"),
                    func(ping, name="ping", keep_result=60, timeout=10, max_tries=1),
                    func(run_task, name="task"),
                ],
                queue_name=node_queue(self.node_id),
                # One slot more than the stages' own limits (their semaphores still gate them):
                # a ping must not wait behind a long mux.
                max_jobs=s.mux_concurrency + s.upload_concurrency + 1 + s.task_concurrency,
                **common,
            ),
            Worker(
                [func(deliver_webhook, name="webhook", max_tries=s.webhook_attempts)],
                queue_name=WEBHOOK_QUEUE,
                max_jobs=10,
                **{**common, "job_timeout": 60},
            ),
        ]

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interrupt_grace: float = INTERRUPT_GRACE,
        cancel_grace: float = CANCEL_GRACE,
    ) -> None:
        """Work until `stop` is set; then interrupt what is running and say goodbye.

        Each running stage is told to stop (its download, FFmpeg or upload cut off) and records
        itself as interrupted, so that it runs again on the next start without spending an
        attempt; one that does not stop within `interrupt_grace` seconds is cancelled and
        recorded here. Units still waiting for a slot go back to their queue untouched.
        """
        log_context.NODE_ID.set(self.node_id)  # on every record of the node's tasks
        self.workroot.mkdir(parents=True, exist_ok=True)
        self._removal_seen = await self._removed_at()
        await self._register()
        await self.viewers.start()
        workers = self._workers()
        tasks = [
            asyncio.create_task(_keep_working(w, stop), name=f"arq:{w.queue_name}") for w in workers
        ]
        ticker = asyncio.create_task(self._tick_forever(stop), name="heartbeat")
        log.info("node %s working (download queue + %s)", self.node_id, node_queue(self.node_id))
        await stop.wait()
        self.stopping = True
        for w in workers:
            w.allow_pick_jobs = False  # nothing new from now on
        left = await self._interrupt_running(interrupt_grace)
        for w in workers:
            w.handle_sig(signal.SIGTERM)  # cancels its jobs (arq queues them again) and its loop
        for t in tasks:
            t.cancel()  # a worker stopped before its poll loop began has nothing to signal
        jobs = [j for w in workers for j in w.tasks.values()]
        await asyncio.wait([*tasks, *jobs], timeout=cancel_grace)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for unit in left:
            with contextlib.suppress(Exception):
                await self._interrupt(unit)
        await self._append_node(node.NodeStopped(node_id=self.node_id))
        await self.viewers.aclose()
        await self.storages.aclose()

    async def _interrupt_running(self, grace: float) -> list[RunningUnit]:
        """Tell every running stage to stop; the units still running after `grace` seconds."""
        for unit in self.running.values():
            unit.interrupted = True
            unit.cancel.set()
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return list(self.running.values())

    async def _register(self) -> None:
        """Tell the cluster who this node is (at start, and again after an admin removed it)."""
        await self._append_node(
            node.NodeStarted(
                node_id=self.node_id,
                hostname=self.hostname,
                ip=self.ip,
                role=self.settings.role,
                tags=list(self.settings.tags),
                capabilities=msgspec.structs.replace(
                    sysinfo.capabilities(self.workroot, ["download", "mux", "upload"]),
                    task_types=advertised(self.settings),
                    internet=has_internet(),
                ),
                concurrency={
                    "download": self.settings.download_concurrency,
                    "mux": self.settings.mux_concurrency,
                    "upload": self.settings.upload_concurrency,
                    "task": self.settings.task_concurrency,
                },
            )
        )

    async def _removed_at(self) -> Any:
        """When an admin last removed this node, if the `nodes` projection says so."""
        return await self.store.pool.fetchval(
            "SELECT removed_at FROM nodes WHERE node_id = $1", self.node_id
        )

    async def _check_removed(self) -> None:
        """Register again after a removal: heartbeats alone never bring a removed node back."""
        removed_at = await self._removed_at()
        if removed_at is not None and removed_at != self._removal_seen:
            self._removal_seen = removed_at
            log.warning("node %s was removed from the cluster: registering again", self.node_id)
            await self._register()

    async def _append_node(self, ev: Event) -> None:
        await self.store.append(node.stream_id(self.node_id), [NewEvent(ev, self.meta)], None)

    # -- the heartbeat -------------------------------------------------------------------

    async def _tick_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # the heartbeat must outlive a database hiccup
                log.warning("heartbeat failed, will retry: %s", exc)
            elapsed = time.monotonic() - started
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.05, self.settings.heartbeat_interval - elapsed)
                )

    def counts(self) -> dict[str, int]:
        counts = {"download": 0, "mux": 0, "upload": 0}
        for unit in self.running.values():
            counts[unit.stage] += 1
        return counts

    async def tick(self) -> None:
        """Heartbeat + progress in one transaction; then cancellations and stalls."""
        # Off the loop: the first sample of a process waits out its CPU measuring span.
        usage = await asyncio.to_thread(sysinfo.usage, self.workroot)
        counts = self.counts()
        beat = node.NodeHeartbeat(
            node_id=self.node_id,
            hostname=self.hostname,
            ip=self.ip,
            downloading=counts["download"],
            muxing=counts["mux"],
            uploading=counts["upload"],
            running=sorted(self.claimed | set(self.running)),
            usage=usage,
        )
        today = datetime.now(UTC).date()
        if today != self._heartbeat_day:
            # Tomorrow's partition too, so the first beat after midnight waits on no DDL.
            await event_partitions.ensure_ahead(self.store.pool, today)
            self._heartbeat_day = today
        beats = node.heartbeat_stream_id(self.node_id, today)
        appends = [StreamAppend(beats, [NewEvent(beat, self.meta)])]
        reported: list[RunningUnit] = []
        for unit in list(self.running.values()):
            if (
                unit.progress is not None
                and unit.progress != unit.reported
                and job.is_current(unit.state, unit.stage, unit.run, unit.attempt)
            ):
                ev = job.StageProgressed(run=unit.run, attempt=unit.attempt, progress=unit.progress)
                # At the version the node knows: progress never lands after the stage's own
                # completion (or a cancel) appended meanwhile.
                appends.append(
                    StreamAppend(
                        job.stream_id(unit.job_id), [NewEvent(ev, unit.meta)], unit.state.version
                    )
                )
                reported.append(unit)
        try:
            # Re-sent every second: not worth a WAL flush each (1,000 nodes are 1,000 commits/s).
            results = await self.store.append_many(appends, durable=False)
        except ConcurrencyError:
            # A job stream moved under us (its stage completing, a cancel): send the heartbeat
            # alone now; read those jobs again so that next second's progress goes at the
            # version they have now, if their stage is still running.
            await self.store.append_many(appends[:1], durable=False)
            for unit in reported:
                fresh = await load_job(self.store, unit.job_id)
                if fresh is not None and fresh.version > unit.state.version:
                    unit.state = fresh
        else:
            versions = {r.stream_id: r.version for r in results}
            now = datetime.now(UTC)
            for unit, sent in zip(reported, appends[1:], strict=True):
                unit.reported = unit.progress
                # Right after the version the node knows: the node's view stays exact. After
                # anything else, the next append at the known version clashes and re-reads.
                if versions[sent.stream_id] == unit.state.version + 1:
                    unit.state = job.evolve(
                        unit.state, sent.events[0].event, now, unit.state.version + 1
                    )
        await self._check_cancellations()
        self._check_stalls()
        await self._check_removed()

    async def _check_cancellations(self) -> None:
        if not self.running:
            return
        units = list(self.running.values())
        rows = await self.store.pool.fetch(
            # One probe per stream, by (stream_id, version): a join lets the planner weigh a
            # scan of every partition, heartbeat days included, against probes it cannot
            # tell will find nothing there.
            """
            SELECT r.stream_id FROM unnest($1::text[], $2::int[]) AS r(stream_id, v)
            WHERE (SELECT true FROM events e
                   WHERE e.stream_id = r.stream_id AND e.version > r.v
                     AND e.type = 'JobCancelled' LIMIT 1)
            """,
            [job.stream_id(u.job_id) for u in units],
            [u.since_version for u in units],
        )
        cancelled = {r[0] for r in rows}
        for unit in units:
            if job.stream_id(unit.job_id) in cancelled:
                unit.cancel.set()

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for unit in self.running.values():
            if not unit.stalled and now - unit.last_progress > self.settings.stall_timeout:
                unit.stalled = True
                unit.cancel.set()

    # -- the stage runner ----------------------------------------------------------------

    async def run_stage(
        self, stage: job.Stage, job_id: str, run: int, attempt: int, cause: Metadata = NO_CAUSE
    ) -> str:
        """Run one unit of work if it is still the job's current one; returns what happened.

        `cause` holds the correlation and causation ids the dispatcher gave the unit.
        """
        unit_id = job.arq_job_id(job_id, run, stage, attempt)
        if unit_id in self.claimed:
            return "already running here"
        self.claimed.add(unit_id)
        try:
            return await self._claimed(unit_id, stage, job_id, run, attempt, cause)
        finally:
            self.claimed.discard(unit_id)

    async def _claimed(
        self,
        unit_id: str,
        stage: job.Stage,
        job_id: str,
        run: int,
        attempt: int,
        cause: Metadata,
    ) -> str:
        workdir = self.workdir(job_id, run)
        try:
            async with self.slots[stage]:
                if self.stopping:
                    raise Retry(defer=0)  # back to the queue, for the next start or another node
                unit = await self._start(stage, job_id, run, attempt, cause)
                if isinstance(unit, str):
                    return unit
                self.running[unit_id] = unit
                if self.stopping:  # started while the stop went round the running units
                    unit.interrupted = True
                    unit.cancel.set()
                outcome = await self._execute(unit, workdir)
            # The slot is free while the result is recorded: the next unit need not wait for it.
            if isinstance(outcome, str):
                return outcome
            return await self._complete(unit, outcome, workdir)
        finally:
            self.running.pop(unit_id, None)

    async def _start(
        self, stage: job.Stage, job_id: str, run: int, attempt: int, cause: Metadata
    ) -> RunningUnit | str:
        """Append StageStarted; the running unit, or why it does not run here."""
        state = self.known.pop(job_id, None)
        fresh = state is None
        if state is None:
            state = await _through_outage(f"job {job_id}", lambda: load_job(self.store, job_id))
            if state is None:
                # Not this database's job: the unit goes back to the queue for its owner (a
                # process of the cluster it came from), never done in that cluster's name.
                log.warning(
                    "%s unit of job %s: no such job in this cluster's database; left queued",
                    stage,
                    job_id,
                )
                raise Retry(defer=UNKNOWN_JOB_DEFER)
        meta = self.meta.following(cause)
        unit = RunningUnit(job_id, stage, run, attempt, state, state.version, meta)

        def start(s: job.JobState) -> list[Event]:
            if stage != "download" and s.node_id != self.node_id:
                return []  # the files are elsewhere: start nothing
            return job.start_stage(s, stage, run, attempt, self.node_id)

        try:
            started = await self._record(unit, start, fresh=fresh)
        except InvalidTransition:
            return "taken or changed"
        if started is None:
            return "stale"
        if stage != "download" and started.node_id != self.node_id:
            return f"files are on node {started.node_id}"
        unit.since_version = started.version
        return unit

    def _remember(self, state: job.JobState) -> None:
        if state.terminal:
            return
        self.known[state.job_id] = state
        while len(self.known) > 1000:
            del self.known[next(iter(self.known))]  # the oldest: dicts keep insertion order

    async def _record(
        self,
        unit: RunningUnit,
        decide: Callable[[job.JobState], list[Event]],
        *,
        fresh: bool = False,
    ) -> job.JobState | None:
        """Append what `decide` makes of the job at the version this node knows.

        Through the jobs' repository, every read and append ridden through a database outage
        (`_through_outage`). The job is read again only when the append clashes (a cancel, a
        retry, a progress event landed first) or when the state held (not `fresh` from the
        store) says the unit is no longer current; then `decide` runs again on what was read.
        Returns the job after the append, also kept in `unit.state`; None when the unit is no
        longer the job's current one (`unit.state` is then the job as read). InvalidTransition
        from `decide` propagates.
        """
        held = unit.state
        known = None
        if fresh or job.is_current(held, unit.stage, unit.run, unit.attempt):
            known = Loaded(held, held.version)
        current = True

        def decide_if_current(state: job.JobState) -> list[Event]:
            nonlocal current
            current = job.is_current(state, unit.stage, unit.run, unit.attempt)
            # The one door a unit's events go through: a source's title, description, codecs
            # or error text become data the log takes (domain/source_data.py).
            return [made_safe(e) for e in decide(state)] if current else []

        repository = replace(jobs(self.store), patience=_through_outage)
        state, appended = await repository.execute(
            unit.job_id, decide_if_current, unit.meta, known=known
        )
        if state is None:
            return None
        unit.state = state
        if not current:
            return None
        if appended is not None:
            # What the unit appends next follows from this.
            unit.meta = msgspec.structs.replace(unit.meta, causation_id=event_id(appended.position))
        return state

    def _progress_sink(self, unit: RunningUnit) -> stages.ProgressSink:
        def sink(p: job.Progress) -> None:
            unit.progress = p
            unit.last_progress = time.monotonic()

        return sink

    def workdir(self, job_id: str, run: int) -> Path:
        return self.workroot / job_id / str(run)

    async def _execute(self, unit: RunningUnit, workdir: Path) -> Event | str:
        """Run the stage: its result event to record, or what happened instead."""
        state = unit.state
        sink = self._progress_sink(unit)
        try:
            if unit.stage == "download":
                if workdir.exists():  # a previous attempt's leftovers
                    stages.remove_workdir(workdir)
                policy = await load_policy(self.store, state.account_id)
                return await stages.download(
                    state,
                    self.node_id,
                    workdir,
                    self.guard,
                    sink,
                    unit.cancel,
                    max_media_seconds=seconds_quota(policy),
                )
            if unit.stage == "mux":
                return await stages.mux(
                    state, self.node_id, workdir, sink, unit.cancel, self.viewers, self.ip
                )
            storage = await self.storages.for_job(state.account_id, state.storage_override)
            return await stages.upload(
                state,
                self.node_id,
                storage,
                sink,
                unit.cancel,
                self.viewers,
                self.ip,
                prefix=self.storages.key_prefix(storage, state.account_id),
            )
        except Exception as exc:
            if unit.interrupted:
                return await self._interrupt(unit)  # the stop cut it short, whatever it raised
            if isinstance(exc, stages.StageError):
                return await self._fail(unit, exc)
            if not isinstance(exc, stages.StageCancelled):
                log.exception("%s of job %s failed unexpectedly", unit.stage, unit.job_id)
                return await self._fail(unit, stages.unexpected(exc))
            if unit.stalled:
                return await self._fail(
                    unit,
                    stages.StageError(
                        f"No progress for {self.settings.stall_timeout:g} s during {unit.stage}",
                        retryable=True,
                    ),
                )
            stages.remove_workdir(workdir)
            return "cancelled"

    async def _complete(self, unit: RunningUnit, done: Event, workdir: Path) -> str:
        """Record a stage's result, unless the job moved on (cancel wins).

        A result the store refuses fails the stage with that refusal as its reason; when the
        same result would be refused again, at once, without spending the job's retries.
        """
        try:
            state = await self._record(unit, lambda _: [done])
        except Exception as exc:
            if unreachable(exc):
                raise  # past APPEND_PATIENCE: nothing can be recorded, the reconciler takes it
            return await self._unrecordable(unit, done, exc)
        if state is None:
            current = unit.state  # the job as read: cancelled, or moved on to another attempt
            if isinstance(done, job.JobCompleted):
                # Another attempt may have completed the job under the same key: keep its files.
                owned = (
                    {current.key, current.subtitle_key, current.thumbnail_key}
                    if current.status == "Completed"
                    else set()
                )
                storage = await self.storages.for_job(current.account_id, current.storage_override)
                # Only what this attempt wrote and is still as it wrote it: another job may
                # hold the key by now.
                await delete_owned(
                    storage,
                    [o for o in job.recorded_objects(done) if o.key not in owned],
                    current.job_id,
                )
            # A later attempt of this run (a retry after a wrong "worker lost") still needs the
            # files; only a job that ended, or a run that started over, frees them.
            if current.terminal or current.run != unit.run:
                stages.remove_workdir(workdir)
            return "cancelled" if current.status == "Cancelled" else "stale"
        if isinstance(done, job.JobCompleted):
            stages.remove_workdir(self.workroot / unit.job_id)
        self._remember(state)
        return "completed"

    async def _unrecordable(self, unit: RunningUnit, done: Event, exc: Exception) -> str:
        """Fail the stage whose result `done` could not be appended, naming why."""
        for_good = refused_for_good(exc)
        log.error(
            "the %s result of job %s could not be recorded%s",
            unit.stage,
            unit.job_id,
            " (for good)" if for_good else " (perhaps not for good: it counts as one attempt)",
            exc_info=exc,
        )
        if isinstance(done, job.JobCompleted):
            # The upload is not on record: its objects would be nobody's. A retry uploads again.
            storage = await self.storages.for_job(
                unit.state.account_id, unit.state.storage_override
            )
            try:
                await delete_owned(storage, job.recorded_objects(done), unit.job_id)
            except StorageError as cleanup:
                log.warning(
                    "could not remove the unrecorded upload of job %s: %s", unit.job_id, cleanup
                )
        reason = f"The {unit.stage} result could not be recorded: " + (
            refusal_reason(exc) if for_good else f"{type(exc).__name__}: {exc}"
        )
        return await self._fail(unit, stages.StageError(reason, retryable=not for_good))

    async def _interrupt(self, unit: RunningUnit) -> str:
        """Record that this node's stop cut the unit short: the stage runs again, no attempt
        spent. A download's partial files go; a mux or upload keeps the files it works from."""

        def decide(state: job.JobState) -> list[Event]:
            return job.interrupt_stage(
                state, unit.stage, unit.run, unit.attempt, node_id=self.node_id
            )

        state = await self._record(unit, decide)
        if unit.stage == "download":
            stages.remove_workdir(self.workdir(unit.job_id, unit.run))
        if state is None:
            return "stale"
        log.info("%s of job %s interrupted by the node's stop", unit.stage, unit.job_id)
        return "interrupted"

    async def _fail(self, unit: RunningUnit, exc: stages.StageError) -> str:
        events: list[Event] = []

        def decide(state: job.JobState) -> list[Event]:
            events[:] = job.fail_stage(
                state,
                unit.stage,
                unit.run,
                unit.attempt,
                node_id=self.node_id,
                reason=exc.reason,
                error_type=exc.error_type,
                retryable=exc.retryable,
                max_attempts=self.settings.stage_attempts,
                backoff=self.settings.retry_backoff,
                unfinished_uploads=exc.unfinished_uploads,
            )
            return events

        state = await self._record(unit, decide)
        if state is None:
            return "stale"
        if any(isinstance(e, job.JobFailed) for e in events):
            stages.remove_workdir(self.workroot / unit.job_id)
            return "failed"
        if unit.stage == "download":
            stages.remove_workdir(self.workdir(unit.job_id, unit.run))
        self._remember(state)
        return "will retry"


WORKER_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)
"""Seconds before an arq worker that died is started again: the first tries, then each later."""


async def _keep_working(worker: Worker, stop: asyncio.Event) -> None:
    """Run an arq worker until `stop`; one whose poll loop dies (Redis gone) starts again.

    arq's loop ends at the first Redis error. Without this the node went on beating, so the
    cluster took it for alive, while it took no more work from that queue, ever. The jobs the
    worker was running carry on (their results go to PostgreSQL; the reconciler re-dispatches
    whatever the queue lost), and the same worker, its limits counting them, polls again.
    """
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await worker.async_run()
            return  # stopped on purpose (`handle_sig`)
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started > 60:
                failures = 0  # it ran fine for a while: this is a new outage
            delay = WORKER_RESTART_DELAYS[min(failures, len(WORKER_RESTART_DELAYS) - 1)]
            failures += 1
            log.warning(
                "arq worker of %s stopped (%s: %s); polling again in %g s",
                worker.queue_name,
                type(exc).__name__,
                exc,
                delay,
            )
        await asyncio.sleep(delay)


async def _through_outage(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again while the database cannot be reached, for `APPEND_PATIENCE` s."""
    give_up = time.monotonic() + APPEND_PATIENCE
    delay = 0.25
    while True:
        try:
            return await call()
        except Exception as exc:
            if not unreachable(exc) or time.monotonic() >= give_up:
                raise
            log.warning("%s: the database is unreachable, retrying: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)


# arq entry points: the function names are the stage names the dispatcher enqueues.


def _stage_function(stage: job.Stage) -> WorkerCoroutine:
    async def run_unit(
        ctx: dict[str, Any],
        job_id: str,
        run: int,
        attempt: int,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> str:
        node_: Node = ctx["node"]
        cause = Metadata(correlation_id=correlation_id, causation_id=causation_id)
        with log_context.bound(job_id=job_id):
            outcome = await node_.run_stage(stage, job_id, run, attempt, cause)
            log.info("%s of job %s (run %d, attempt %d): %s", stage, job_id, run, attempt, outcome)
        return outcome

    run_unit.__name__ = run_unit.__qualname__ = stage
    return run_unit


download = _stage_function("download")
mux = _stage_function("mux")
upload = _stage_function("upload")


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """A round trip through this node's own queue: `POST /api/v1/devices/{id}/ping`."""
    node_: Node = ctx["node"]
    return {"node_id": node_.node_id, "hostname": node_.hostname, "answered_at": time.time()}
