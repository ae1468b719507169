"""Properties of the job state machine under any interleaving of commands and deliveries.

Users cancel and retry while nodes start, report, complete and fail stages; arq may deliver a
unit twice or late, and a node may act on a job it read a while ago. Whatever the order, the
job's history stays legal (nothing leaves a terminal state but a retry of a failed or cancelled
job; at most one terminal event per run; stage events only for the unit the job waits on) and
the `jobs` projection row is exactly the fold of the stream.

Commands go through the same decide functions the API and the nodes use (`job.cancel`,
`job.retry`, `job.start_stage`, `job.fail_stage`, and a completion appended only while its unit
is current, as `Node._record` does). Many examples run through the pure fold; a bounded number
run concurrently against the real event store and the real projection.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs, load_job
from spool.adapters.read_models.jobs import JobsProjection
from spool.domain import job
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event, Metadata, NewEvent, RecordedEvent
from spool.reactors.projection import ProjectionRunner

STAGES: tuple[job.Stage, ...] = ("download", "mux", "upload")
TERMINAL_EVENTS = (job.JobCompleted, job.JobFailed, job.JobCancelled)
# Events that may land on a finished job without changing where it stands.
AFTERMATH = (job.StageProgressed, job.FileDeleted, job.WebhookDelivered, job.WebhookFailed)
LEGAL_STATUS_MOVES: dict[str, set[str]] = {
    # A unit lost before it started (a worker died holding it) fails a Pending job.
    "Pending": {"Pending", "Processing", "Failed", "Cancelled"},
    "Processing": {"Processing", "Completed", "Failed", "Cancelled"},
    "Completed": {"Completed"},
    "Failed": {"Failed", "Pending"},
    "Cancelled": {"Cancelled", "Pending"},
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Retry:
    pass


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class DeleteFile:
    """The user deletes a completed job's file (`DELETE /jobs/{id}/file`)."""


@dataclass(frozen=True)
class Unit:
    stage: job.Stage
    run: int
    attempt: int


@dataclass(frozen=True)
class Deliver:
    """A node acting on a unit near the job's current one (a delta of 0 is the current one)."""

    kind: Literal["start", "progress", "complete", "fail", "interrupt"]
    stage: job.Stage | None  # None: the job's current stage
    run_delta: int
    attempt_delta: int
    retryable: bool = True
    restart_from_download: bool = False

    def resolve(self, state: job.JobState) -> Unit:
        """The unit this delivery names, as seen by a node that read `state`."""
        return Unit(
            self.stage or state.stage,
            max(1, state.run + self.run_delta),
            max(1, state.attempt + self.attempt_delta),
        )


@dataclass(frozen=True)
class Redeliver:
    """The same unit again, as it was resolved earlier: a duplicate or a late delivery."""

    index: int


Command = Cancel | Retry | Release | DeleteFile | Deliver | Redeliver


def _command(roll: int, aim: int, index: int, retryable: bool, restart: bool) -> Command:
    """One command from dice: mostly nodes acting on the current unit, sometimes another one."""
    if roll < 30:
        return Deliver("complete", None, 0, 0, retryable, restart)
    if roll < 50:
        return Deliver("start", None, 0, 0)
    if roll < 58:
        return Deliver("progress", None, 0, 0)
    if roll < 62:
        return Deliver("fail", None, 0, 0, retryable, restart)
    if roll < 66:  # the node stopping under the unit (spool stopped with Ctrl-C)
        return Deliver("interrupt", None, 0, 0)
    if roll < 76:  # a stale, early or misrouted unit: another stage, run or attempt
        kind: Literal["start", "progress", "complete", "fail"] = (
            "start",
            "progress",
            "complete",
            "fail",
        )[aim % 4]
        return Deliver(
            kind, STAGES[aim % 3], aim // 3 % 3 - 1, aim // 9 % 3 - 1, retryable, restart
        )
    if roll < 88:
        return Redeliver(index)
    return (Release(), Retry(), Cancel(), DeleteFile())[roll % 4]


commands: st.SearchStrategy[Command] = st.builds(
    _command,
    st.integers(0, 99),
    st.integers(0, 35),
    st.integers(0, 40),
    st.booleans(),
    st.booleans(),
)


def _done_event(unit: Unit, node_id: str) -> Event:
    """What a node appends when a stage of `unit` finishes."""
    if unit.stage == "download":
        media = job.MediaFile(path=f"/w/{unit.run}/in.mp4", kind="video", size=10)
        return job.DownloadCompleted(
            run=unit.run, attempt=unit.attempt, node_id=node_id, files=[media], bytes=10,
            seconds=1.0, title="clip", width=640, height=360,
        )  # fmt: skip
    if unit.stage == "mux":
        out = job.MediaFile(path=f"/w/{unit.run}/out.mp4", kind="video", size=9)
        return job.MuxCompleted(
            run=unit.run, attempt=unit.attempt, node_id=node_id, output=out, seconds=1.0
        )
    return job.JobCompleted(
        run=unit.run, attempt=unit.attempt, node_id=node_id, key=f"k/{unit.run}.mp4",
        storage="s3", size=9, seconds=1.0,
    )  # fmt: skip


def decide_delivery(state: job.JobState, kind: str, unit: Unit, d: Deliver) -> list[Event]:
    """What a node decides for `unit` on the job as it reads it now (no-op when not current)."""
    if kind == "progress":
        # Progress is appended without a version check, so it also lands late.
        p = job.Progress(stage=unit.stage, percent=50.0)
        return [job.StageProgressed(run=unit.run, attempt=unit.attempt, progress=p)]
    if not job.is_current(state, unit.stage, unit.run, unit.attempt):
        return []  # the job moved on: a stale or duplicate unit does nothing
    if kind == "start":
        return job.start_stage(state, unit.stage, unit.run, unit.attempt, "node-a")
    if kind == "complete":
        # A node has a result only for a unit it started (its StageStarted came first).
        return [_done_event(unit, "node-a")] if state.status == "Processing" else []
    if kind == "interrupt":
        return job.interrupt_stage(state, unit.stage, unit.run, unit.attempt, node_id="node-a")
    return job.fail_stage(
        state, unit.stage, unit.run, unit.attempt, node_id="node-a", reason="boom",
        retryable=d.retryable, max_attempts=3, backoff=0.0,
        restart_from_download=d.restart_from_download,
    )  # fmt: skip


def decide_command(state: job.JobState, cmd: Cancel | Retry | Release | DeleteFile) -> list[Event]:
    """A user's command, refused (no events) where the API would answer 409 or 400."""
    try:
        if isinstance(cmd, Cancel):
            return job.cancel(state)
        if isinstance(cmd, Retry):
            return job.retry(state)
        if isinstance(cmd, DeleteFile):
            return job.delete_file(state)
        return job.release(state)
    except InvalidTransition:
        return []


# -- the properties --------------------------------------------------------------------------


def assert_legal_history(events: list[Event]) -> job.JobState:
    """Fold `events`, checking every step against the job state machine; the final state."""
    assert isinstance(events[0], job.JobCreated)
    state = job.evolve(None, events[0], T0, 1)
    terminal_runs: list[int] = []
    completed_stages: set[tuple[int, str]] = set()
    for version, ev in enumerate(events[1:], start=2):
        before = msgspec.structs.replace(state, retries=dict(state.retries))
        unit: tuple[job.Stage, int, int] | None = None
        if isinstance(ev, job.StageStarted | job.StageFailed | job.StageInterrupted):
            unit = (ev.stage, ev.run, ev.attempt)
        elif isinstance(ev, job.DownloadCompleted):
            unit = ("download", ev.run, ev.attempt)
        elif isinstance(ev, job.MuxCompleted):
            unit = ("mux", ev.run, ev.attempt)
        elif isinstance(ev, job.JobCompleted):
            unit = ("upload", ev.run, ev.attempt)
            assert (ev.run, "download") in completed_stages
            assert (ev.run, "mux") in completed_stages
        if unit is not None:
            assert job.is_current(before, *unit), f"{type(ev).__name__} for a stale unit"
            if isinstance(ev, job.DownloadCompleted | job.MuxCompleted):
                completed_stages.add((ev.run, unit[0]))
        if isinstance(ev, TERMINAL_EVENTS):
            terminal_runs.append(ev.run)
        state = job.evolve(state, ev, T0 + timedelta(seconds=version), version)
        if isinstance(ev, job.StageInterrupted):
            # A stop is not a failure: the stage runs again and no retry is spent.
            assert state.retries == before.retries
            assert (state.status, state.stage) == (before.status, before.stage)

        assert state.status in LEGAL_STATUS_MOVES[before.status], (
            f"{before.status} -> {state.status} by {type(ev).__name__}"
        )
        if before.terminal:
            if isinstance(ev, job.JobRetried):
                assert before.status in ("Failed", "Cancelled")
                assert state.run == before.run + 1
            else:
                assert isinstance(ev, AFTERMATH), type(ev).__name__
                assert (state.status, state.run, state.stage, state.attempt) == (
                    before.status, before.run, before.stage, before.attempt,
                )  # fmt: skip
    # A stage's last failure and JobFailed are one decision; nothing else ends a run twice.
    assert len(terminal_runs) == len(set(terminal_runs)), f"terminal events by run {terminal_runs}"
    return state


def run_pure(held: bool, cmds: list[Command]) -> list[Event]:
    """Apply `cmds` one after the other to a new job; every event appended."""
    state: job.JobState | None = None
    events: list[Event] = list(
        job.create(job_id="j", account_id="a", url="http://x/", options=job.JobOptions(), held=held)
    )
    resolved: list[tuple[Deliver, Unit]] = []
    for cmd in cmds:
        state = job.fold([(e, T0, i) for i, e in enumerate(events, start=1)])
        assert state is not None
        if isinstance(cmd, Deliver):
            unit = cmd.resolve(state)
            resolved.append((cmd, unit))
            decided = decide_delivery(state, cmd.kind, unit, cmd)
        elif isinstance(cmd, Redeliver):
            if not resolved:
                continue
            d, unit = resolved[cmd.index % len(resolved)]
            decided = decide_delivery(state, d.kind, unit, d)
        else:
            decided = decide_command(state, cmd)
        events.extend(decided)
    return events


@settings(max_examples=400, deadline=None, derandomize=True)
@given(held=st.booleans(), cmds=st.lists(commands, min_size=4, max_size=40))
def test_any_interleaving_keeps_the_job_state_machine_legal(
    held: bool, cmds: list[Command]
) -> None:
    events = run_pure(held, cmds)
    assert_legal_history(events)


def test_a_full_run_then_duplicates_changes_nothing() -> None:
    here = [Deliver("start", None, 0, 0), Deliver("complete", None, 0, 0)] * 3
    events = run_pure(False, [*here, Redeliver(0), Redeliver(1), Redeliver(5), Cancel(), Retry()])
    state = assert_legal_history(events)
    assert state.status == "Completed"
    assert sum(isinstance(e, job.JobCompleted) for e in events) == 1
    assert sum(isinstance(e, job.StageStarted) for e in events) == 3


def test_cancel_wins_over_a_late_completion_and_retry_starts_a_new_run() -> None:
    cmds: list[Command] = [
        Deliver("start", None, 0, 0),
        Cancel(),
        Redeliver(0),
        Deliver("complete", "download", 0, 0),
        Retry(),
        Deliver("start", None, 0, 0),
        Deliver("complete", "download", -1, 0),  # the old run's node reporting late
    ]
    events = run_pure(False, cmds)
    state = assert_legal_history(events)
    assert (state.status, state.run, state.stage) == ("Processing", 2, "download")
    assert not any(isinstance(e, job.DownloadCompleted) for e in events)


# -- the same, concurrently, through the real store and projection ---------------------------


async def _run_live(
    store: EventStore, job_id: str, cmd: Command, resolved: list[tuple[Deliver, Unit]]
) -> None:
    """Run one command the way the API or a node does: read, decide, append, retry on a clash."""
    meta = Metadata(actor="property-test")
    if isinstance(cmd, Cancel | Retry | Release | DeleteFile):
        await jobs(store).execute(job_id, lambda s: decide_command(s, cmd), meta)
        return
    seen = await load_job(store, job_id)
    assert seen is not None
    if isinstance(cmd, Redeliver):
        if not resolved:
            return
        d, unit = resolved[cmd.index % len(resolved)]
    else:
        d, unit = cmd, cmd.resolve(seen)
        resolved.append((d, unit))
    if d.kind == "progress":
        events = decide_delivery(seen, "progress", unit, d)
        await store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in events], None)
        return
    await jobs(store).execute(job_id, lambda s: decide_delivery(s, d.kind, unit, d), meta)


async def _apply_in_chunks(
    store: EventStore, recorded: list[RecordedEvent], cuts: list[int], again: list[int]
) -> job.JobState:
    """Feed the projection the stream in chunks, some twice (a rebuild overlapping the runner).

    Runs in a transaction that is rolled back, so the live row is left to the live runner.
    """
    chunks = [recorded[a:b] for a, b in zip([0, *cuts], [*cuts, len(recorded)], strict=True)]
    chunks = [c for c in chunks if c]
    projection = JobsProjection()
    job_id = recorded[0].stream_id.removeprefix("job-")
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("DELETE FROM jobs WHERE job_id = $1", job_id)
            for i, chunk in enumerate(chunks):
                await projection.apply(conn, chunk)
                if i in again:
                    await projection.apply(conn, chunk)
                    await projection.apply(conn, chunks[max(0, i - 1)])
            row = await conn.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
        finally:
            await tx.rollback()
    return msgspec.json.decode(row, type=job.JobState)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    held=st.booleans(),
    rounds=st.lists(st.lists(commands, min_size=1, max_size=3), min_size=1, max_size=10),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=4, unique=True),
    again=st.lists(st.integers(min_value=0, max_value=4), max_size=2),
)
async def test_concurrent_commands_on_the_real_store_keep_history_legal_and_projection_exact(
    store: EventStore,
    runner: ProjectionRunner,
    held: bool,
    rounds: list[list[Command]],
    cuts: list[int],
    again: list[int],
) -> None:
    job_id = str(uuid.uuid4())
    created = job.create(
        job_id=job_id, account_id="prop", url="http://x/", options=job.JobOptions(), held=held
    )
    await store.append(job.stream_id(job_id), [NewEvent(e) for e in created], 0)
    resolved: list[tuple[Deliver, Unit]] = []
    for commands_at_once in rounds:
        # Each round's commands race: they read the same version and clash on append.
        await asyncio.gather(*(_run_live(store, job_id, c, resolved) for c in commands_at_once))

    recorded = await store.read_stream(job.stream_id(job_id))
    assert_legal_history([e.data for e in recorded])
    folded = job.fold([(e.data, e.recorded_at, e.version) for e in recorded])
    assert folded is not None

    await runner.settle("jobs")
    row = await store.pool.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
    assert msgspec.json.decode(row, type=job.JobState) == folded
    assert await load_job(store, job_id) == folded
    assert await _apply_in_chunks(store, recorded, sorted(cuts), again) == folded
