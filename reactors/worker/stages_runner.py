"""A node's stage runner: takes a unit, runs its stage, records what came of it.

Every event a unit appends goes through `StageRunner._record`, through the jobs' repository: at
the version the node knows, read again only on a clash (optimistic concurrency on the job stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from arq.worker import Retry

from spool.adapters import log_context
from spool.adapters.account_policy_store import load_policy, seconds_quota
from spool.adapters.database import unreachable
from spool.adapters.event_store import refusal_reason, refused_for_good
from spool.adapters.job_store import jobs, load_job, load_job_gated
from spool.adapters.owned_objects import delete_owned
from spool.adapters.read_models import archive as archive_rows
from spool.adapters.read_models import pauses
from spool.adapters.repository import Loaded
from spool.adapters.storage import StorageError
from spool.domain import job, pause, work_files
from spool.domain.errors import InvalidTransition
from spool.domain.events import NO_CAUSE, Event, Metadata, event_id
from spool.domain.node_health import Blame
from spool.domain.source_data import made_safe
from spool.reactors import stages
from spool.reactors.worker.drain import Drain
from spool.reactors.worker.outage import through_outage
from spool.reactors.worker.unit import RunningUnit

RECORD_TRIES = 1_000
"""How many clashes in a row `_record` re-decides before giving up (each one a fresh read)."""

log = logging.getLogger("spool.node")

UNKNOWN_JOB_DEFER = 5.0
"""Seconds a unit of a job this database does not know waits before it is offered again."""


STALL_BLAME: dict[job.Stage, Blame] = {"download": "source", "mux": "node", "upload": "storage"}
"""Whose fault a stage that stops making progress is: a download waits on its source, an
upload on the storage, a mux on nothing but this node."""


class StageRunner(Drain):
    """Runs the download, mux and upload units the node's arq workers take."""

    async def run_stage(
        self, stage: job.Stage, job_id: str, run: int, attempt: int, cause: Metadata = NO_CAUSE
    ) -> str:
        """Run one unit of work if it is still the job's current one; returns what happened.

        `cause` holds the correlation and causation ids the dispatcher gave the unit.
        """
        unit_id = job.arq_job_id(job_id, run, stage, attempt)
        if unit_id in self.claimed or unit_id in self.running:
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
        slot = self.slots[stage]
        await slot.acquire()
        try:
            if self.stopping:
                raise Retry(defer=0)  # back to the queue, for the next start or another node
            read: Loaded[job.JobState | None] | None = None
            paused: set[pause.Scope] | None = None
            if stage == "download":
                gate = None
                if job_id not in self.known:
                    # The job, the node's gate and the pauses over the job in one round trip:
                    # a download's usual case.
                    gated = await through_outage(
                        f"job {job_id}", lambda: load_job_gated(self.store, job_id, self.node_id)
                    )
                    state, gate, paused = gated
                    read = Loaded(state, state.version if state is not None else 0)
                # Taken just before a drain, a quarantine or the disk floor reached us.
                await self._refuse_new_download(unit_id, job_id, run, gate)
            unit = await self._start(stage, job_id, run, attempt, cause, read, paused)
        except BaseException:
            slot.release()
            raise
        if isinstance(unit, str):
            slot.release()
            return unit
        return await self._work(unit)

    async def _work(self, unit: RunningUnit) -> str:
        """Run a started unit whose stage slot is held: the slot is freed once the work is over
        (the next unit need not wait for the result's append), then the result is recorded."""
        workdir = self.workdir(unit.job_id, unit.run)
        self.running[unit.unit_id] = unit
        try:
            try:
                if self.stopping:  # started while the stop went round the running units
                    unit.interrupted = True
                    unit.cancel.set()
                outcome = await self._execute(unit, workdir)
                unit.worked = True
            finally:
                self.slots[unit.stage].release()
            if isinstance(outcome, str):
                return outcome
            return await self._complete(unit, outcome, workdir)
        finally:
            self.running.pop(unit.unit_id, None)

    async def _next_slot(self, done: Event) -> job.Stage | None:
        """The stage after `done` when this node can start it now, its slot taken; else None.

        Only a free slot is taken, never one a queued unit waits for (`locked` counts waiters),
        so going straight on jumps no queue the node's own units stand in.
        """
        nxt = job.stage_after(done)
        if self.stopping or nxt is None:
            return None
        slot = self.slots[nxt]
        if slot.locked():
            return None
        await slot.acquire()  # free, so taken at once: no suspension lets another take it first
        return nxt

    def _go_on(self, unit: RunningUnit, state: job.JobState) -> None:
        """Run the next stage, started in the append that recorded `unit`'s result, as a task
        of the node's own: the arq unit that ran `unit` ends, and its worker takes the next."""
        nxt = RunningUnit(
            unit.job_id, state.stage, state.run, state.attempt, state, state.version, unit.meta
        )
        self.running[nxt.unit_id] = nxt  # listed from now on: its lease is renewed from here
        task = asyncio.create_task(self._chained(nxt), name=f"{nxt.stage} {nxt.job_id}")
        self.chains.add(task)
        task.add_done_callback(self.chains.discard)

    async def _chained(self, unit: RunningUnit) -> str:
        with log_context.bound(job_id=unit.job_id):
            try:
                outcome = await self._work(unit)
            except Exception:
                # Nothing is lost: the unit is started, and its lease expires without a result.
                log.exception("%s of job %s failed unexpectedly", unit.stage, unit.job_id)
                return "failed unexpectedly"
            log.info(
                "%s of job %s (run %d, attempt %d, went straight on): %s",
                unit.stage, unit.job_id, unit.run, unit.attempt, outcome,
            )  # fmt: skip
            return outcome

    async def _start(
        self,
        stage: job.Stage,
        job_id: str,
        run: int,
        attempt: int,
        cause: Metadata,
        read: Loaded[job.JobState | None] | None = None,
        paused_read: set[pause.Scope] | None = None,
    ) -> RunningUnit | str:
        """Append StageStarted; the running unit, or why it does not run here. `read`: the job
        as just read from the store, if it was; `paused_read`: the paused scopes read with it,
        if they were."""
        state = self.known.pop(job_id, None)
        if state is not None and state.paused:
            state = None  # known while paused: the unit comes after a resume, so read again
        fresh = state is None
        if read is not None:
            state = read.state
        elif state is None:
            state = await through_outage(f"job {job_id}", lambda: load_job(self.store, job_id))
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
        held_by: job.PausedBy | None = None
        # A batch's, an account's or the cluster's pause holds back a run that has not started.
        loaded = state
        paused = paused_read
        if paused is None or read is None:
            paused = await through_outage(
                f"pauses of job {job_id}", lambda: pauses.paused_scopes(self.store.pool, [loaded])
            )

        def start(s: job.JobState) -> list[Event]:
            nonlocal held_by
            if stage != "download" and s.node_id != self.node_id:
                return []  # the files are elsewhere: start nothing
            held_by = pause.paused_by(s, paused)
            if held_by is not None:
                # Left unstarted, and recorded: its resume dispatches the stage again.
                return job.defer_stage(
                    s, stage, run, attempt, node_id=self.node_id, paused_by=held_by
                )
            return job.start_stage(s, stage, run, attempt, self.node_id)

        try:
            # A start alone need not wait for its WAL flush: its result's append is durable and
            # flushes it too (the WAL is written in order). A crash of the database server can
            # lose only a start whose result is not yet recorded: the unit is then unstarted in
            # the log (its node's heartbeats still list it), and its result, when it comes, is
            # decided on the job as it stands (clash, re-read): recorded, the start missing
            # from the history, or refused if the job moved on meanwhile.
            started = await self._record(unit, start, fresh=fresh, durable=False)
        except InvalidTransition:
            return "taken or changed"
        if started is None:
            return "stale"
        if held_by is not None:
            log.info("%s of job %s left for later: paused (%s)", stage, job_id, held_by)
            return f"paused ({held_by})"
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
        durable: bool = True,
    ) -> job.JobState | None:
        """Append what `decide` makes of the job at the version this node knows.

        Through the jobs' repository, every read and append ridden through a database outage
        (`through_outage`). The job is read again only when the append clashes (a cancel, a
        retry, a progress event landed first) or when the state held (not `fresh` from the
        store) says the unit is no longer current; then `decide` runs again on what was read.
        Returns the job after the append, also kept in `unit.state`; None when the unit is no
        longer the job's current one (`unit.state` is then the job as read). InvalidTransition
        from `decide` propagates. `durable=False` commits without waiting for the WAL flush.
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

        # The work is done and on disk: a result lost to busy writers (progress, webhooks) would
        # cost a whole stage again, so clashes are re-decided for as long as they come.
        repository = replace(jobs(self.store), patience=through_outage, tries=RECORD_TRIES)
        state, appended = await repository.execute(
            unit.job_id, decide_if_current, unit.meta, known=known, durable=durable
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
                    archived=self._archived(state)
                    if self.settings.archive_skips and not state.options.force
                    else None,
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
            if isinstance(exc, stages.NotReady):
                return await self._wait(unit, exc)
            if isinstance(exc, stages.StageError):
                return await self._fail(unit, exc)
            if not isinstance(exc, stages.StageCancelled):
                log.exception("%s of job %s failed unexpectedly", unit.stage, unit.job_id)
                return await self._fail(unit, stages.unexpected(exc))
            if unit.moved_on:
                return await self._left_behind(unit, workdir)
            if unit.stalled:
                return await self._fail(
                    unit,
                    stages.StageError(
                        f"No progress for {self.settings.stall_timeout:g} s during {unit.stage}",
                        retryable=True,
                        blame=STALL_BLAME[unit.stage],
                    ),
                )
            stages.remove_workdir(workdir)
            return "cancelled"

    def _archived(self, state: job.JobState) -> stages.Archived:
        """Which other job holds an item in the job's account's download archive."""

        async def holder(archive_id: str) -> str | None:
            return await through_outage(
                f"the archive of job {state.job_id}",
                lambda: archive_rows.holder(
                    self.store.pool, state.account_id, archive_id, besides=state.job_id
                ),
            )

        return holder

    async def _complete(self, unit: RunningUnit, done: Event, workdir: Path) -> str:
        """Record a stage's result, unless the job moved on (cancel wins); with a slot free for
        the next stage, start it in the same append and go straight on (`job.chain`).

        A result the store refuses fails the stage with that refusal as its reason; when the
        same result would be refused again, at once, without spending the job's retries.
        """
        nxt = await self._next_slot(done)
        went_on = False

        def result(s: job.JobState) -> list[Event]:
            nonlocal went_on
            recorded = job.record_result(s, done, go_on=nxt is not None)
            went_on = len(recorded) > 1  # a paused job's result starts nothing
            return recorded

        try:
            state = await self._record(unit, result)
        except Exception as exc:
            if nxt is not None:
                self.slots[nxt].release()
            if unreachable(exc):
                raise  # past APPEND_PATIENCE: nothing can be recorded, the reconciler takes it
            return await self._unrecordable(unit, done, exc)
        if nxt is not None and (state is None or not went_on):
            self.slots[nxt].release()
            nxt = None
        if state is None:
            current = unit.state  # the job as read: cancelled, or moved on to another attempt
            if isinstance(done, job.JobCompleted):
                # Another attempt may have completed the job under the same key: keep its files.
                owned = (
                    {current.key, current.subtitle_key, current.thumbnail_key}
                    | set(current.preview_keys.values())
                    | {o.key for o in current.objects}
                    if current.status == "Completed"
                    else set()
                )
                if not current.terminal:
                    # The attempt the job went on to writes the same keys, and may have by now:
                    # same owner, same bytes, same ETag, so its object would pass for this
                    # one's and go. Left to it, which overwrites them; should the job end
                    # without completing, they stay behind (an orphan, not a lost file).
                    owned = {o.key for o in job.recorded_objects(done)}
                storage = await self.storages.for_job(current.account_id, current.storage_override)
                # Only what this attempt wrote and is still as it wrote it: another job may
                # hold the key by now.
                await delete_owned(
                    storage,
                    [o for o in job.recorded_objects(done) if o.key not in owned],
                    current.job_id,
                )
            return await self._left_behind(unit, workdir)
        if isinstance(done, job.JobCompleted | job.JobSkipped):
            stages.remove_workdir(self.workroot / unit.job_id)
        if nxt is not None:
            self._go_on(unit, state)
            return f"completed; {nxt} started here"
        self._remember(state)
        return "skipped" if isinstance(done, job.JobSkipped) else "completed"

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
        return await self._fail(
            unit, stages.StageError(reason, retryable=not for_good, blame="cluster")
        )

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

    async def _left_behind(
        self, unit: RunningUnit, workdir: Path, unfinished: Sequence[str] = ()
    ) -> str:
        """The job moved on without the unit (`unit.state`, as read): abort the multipart
        uploads it began and could not abort (no later attempt learns of them: the job takes
        no event of this unit's now), and free the run's files unless the job's current unit
        on this node still needs them or another unit of the run works on them here."""
        current = unit.state
        if unfinished:
            storage = await self.storages.for_job(current.account_id, current.storage_override)
            aborted = await stages.abort_unfinished(storage, list(unfinished))
            if len(aborted) < len(unfinished):
                log.warning(
                    "%d multipart upload(s) of job %s's stale %s are still not aborted",
                    len(unfinished) - len(aborted),
                    unit.job_id,
                    unit.stage,
                )
        in_use = any(
            other is not unit and other.job_id == unit.job_id and other.run == unit.run
            for other in self.running.values()
        )
        if not in_use and not work_files.still_needed(current, self.node_id, unit.run):
            stages.remove_workdir(workdir)
        return "cancelled" if current.status == "Cancelled" else "stale"

    def _keep_for_retry(self, state: job.JobState) -> bool:
        """Whether a job that just failed here keeps its files for a retry from mux or upload
        (`domain.work_files.kept_for_retry`; the node's sweep reclaims them after); never
        below the node's disk floor."""
        return (
            self.settings.failed_files_keep > 0
            and self.disk_floor is None
            and job.reusable_from(state) != "download"
        )

    async def _wait(self, unit: RunningUnit, exc: stages.NotReady) -> str:
        """The media is not out yet: record the wait (the download runs again later, no attempt
        spent, on whichever node takes it then), or the job's failure once its run has waited
        its limit. Either way the slot is free now: nothing here waits."""
        events: list[Event] = []

        def decide(state: job.JobState) -> list[Event]:
            events[:] = job.wait_for_media(
                state,
                unit.run,
                unit.attempt,
                node_id=self.node_id,
                reason=exc.reason,
                ready_at=exc.ready_at,
                now=datetime.now(UTC),
                policy=self.settings.not_ready_policy(),
            )
            return events

        state = await self._record(unit, decide)
        workdir = self.workdir(unit.job_id, unit.run)
        if state is None:
            return await self._left_behind(unit, workdir)
        stages.remove_workdir(workdir)
        if any(isinstance(e, job.JobFailed) for e in events):
            return "failed: not out in time"
        self._remember(state)
        waited = next(e for e in events if isinstance(e, job.MediaNotReady))
        return f"not out yet: tries again in {waited.retry_in:g} s"

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
                blame=exc.blame,
            )
            return events

        state = await self._record(unit, decide)
        if state is None:
            workdir = self.workdir(unit.job_id, unit.run)
            return await self._left_behind(unit, workdir, exc.unfinished_uploads)
        if any(isinstance(e, job.JobFailed) for e in events):
            if not self._keep_for_retry(state):
                stages.remove_workdir(self.workroot / unit.job_id)
            return "failed"
        if unit.stage == "download":
            stages.remove_workdir(self.workdir(unit.job_id, unit.run))
        self._remember(state)
        return "will retry"
