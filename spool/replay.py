"""`spool replay`: a stream's history as a readable timeline, or as JSON Lines for machines."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import api_keys
from spool.domain import archive, batch, job, task
from spool.domain.events import Event, RecordedEvent

_encode = msgspec.json.Encoder().encode

Names = Mapping[str, str]
"""API key names by key id, to say on whose request an event happened."""


@dataclass
class Entry:
    """One event on the timeline, with what it means in words."""

    event: RecordedEvent
    elapsed: float
    note: str
    stage: str | None = None
    stage_seconds: float | None = None


@dataclass
class Timeline:
    """A stream's events in order, what each says, and what they add up to."""

    stream_id: str
    entries: list[Entry] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    status: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """A batch's jobs by status (nonzero only); empty for a job or a task."""


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def _by(e: RecordedEvent, names: Names) -> str:
    """Who caused an event: the API key (id and name), node or reactor that wrote it."""
    actor = e.metadata.actor
    if actor is None:
        return "by (unknown)"
    return f"by key {actor} ({names[actor]})" if actor in names else f"by {actor}"


def _data(ev: Event) -> str:
    """An event's fields, compactly, for types without a sentence of their own."""
    fields = msgspec.to_builtins(ev)
    return " ".join(f"{k}={_encode(v).decode()}" for k, v in fields.items() if v not in (None, []))


def _job_note(ev: Event, e: RecordedEvent, names: Names) -> str:
    if isinstance(ev, job.JobCreated):
        held = ", held in a paused batch" if ev.held else ""
        return f"{ev.url} {_by(e, names)}{held}"
    if isinstance(ev, job.StageStarted):
        return f"{ev.stage} run {ev.run} attempt {ev.attempt} on {ev.node_id}"
    if isinstance(ev, job.StageProgressed):
        p = ev.progress
        percent = f"{p.percent:.0f}%" if p.percent is not None else "?%"
        return f"{p.stage} {percent}" + (f" of {_size(p.total_bytes)}" if p.total_bytes else "")
    if isinstance(ev, job.DownloadCompleted):
        fetched = f"{_size(ev.bytes)} on {ev.node_id}" + (f", {ev.title!r}" if ev.title else "")
        return fetched + (f", archive id {ev.archive_id!r}" if ev.archive_id else "")
    if isinstance(ev, job.JobSkipped):
        return (
            f"{ev.archive_id!r} is already in the account's archive, fetched by job "
            f"{ev.archived_by_job}: nothing downloaded (on {ev.node_id})"
        )
    if isinstance(ev, job.MuxCompleted):
        words = (job.codec_word(ev.video_codec), job.codec_word(ev.audio_codec))
        codecs = "/".join(c for c in words if c)
        loud = ev.loudness
        if loud is not None and loud.before is not None and loud.after is not None:
            codecs += f", {loud.before:g} -> {loud.after:g} LUFS"
        return f"{_size(ev.output.size)} {codecs} on {ev.node_id}".rstrip()
    if isinstance(ev, job.JobCompleted):
        return f"{ev.key} ({_size(ev.size)}) in {ev.storage} from {ev.node_id}"
    if isinstance(ev, job.StageFailed):
        then = (
            f"; retry {ev.retry_stage} attempt {ev.retry_attempt} in {ev.retry_in:g}s"
            if ev.retry_stage
            else "; no retry"
        )
        return f"{ev.stage} attempt {ev.attempt} on {ev.node_id}: {ev.reason}{then}"
    if isinstance(ev, job.StageInterrupted):
        return (
            f"{ev.stage} attempt {ev.attempt} on {ev.node_id}: interrupted by {ev.reason}; "
            f"{ev.stage} runs again as attempt {ev.attempt + 1} (no attempt spent)"
        )
    if isinstance(ev, job.MediaNotReady):
        out = f"; out at {ev.ready_at:%Y-%m-%d %H:%M:%S %Z}" if ev.ready_at else ""
        return (
            f"download attempt {ev.attempt} on {ev.node_id}: not out yet ({ev.reason}){out}; "
            f"waits {ev.retry_in:g}s, then download attempt {ev.attempt + 1} (no attempt spent)"
        )
    if isinstance(ev, job.JobFailed):
        return f"at {ev.stage}: {ev.reason}"
    if isinstance(ev, job.JobCancelled):
        return f"{_by(e, names)}: {ev.reason}" + (f" (during {ev.stage})" if ev.stage else "")
    if isinstance(ev, job.JobRetried | job.JobReleased | job.JobRenamed | job.FileDeleted):
        return f"{_data(ev)} {_by(e, names)}".strip()
    if isinstance(ev, job.JobLabelled):
        shown = ", ".join(f"{k}={v}" for k, v in ev.labels.items()) or "none"
        return f"labels now {shown} {_by(e, names)}".strip()
    return _data(ev)


_STAGE_DONE = {
    job.DownloadCompleted: "download",
    job.MuxCompleted: "mux",
    job.JobCompleted: "upload",
}


def job_timeline(stream_id: str, events: Sequence[RecordedEvent], names: Names) -> Timeline:
    """A job's events with stage durations (wall time from start to end), retries and nodes."""
    timeline = Timeline(stream_id)
    started: dict[str, datetime] = {}
    state: job.JobState | None = None
    for e in events:
        ev = e.data
        state = job.evolve(state, ev, e.recorded_at, e.version)
        entry = Entry(e, _elapsed(events, e), _job_note(ev, e, names))
        if isinstance(ev, job.StageStarted):
            started[ev.stage] = e.recorded_at
            entry.stage = ev.stage
            if ev.node_id not in timeline.nodes:
                timeline.nodes.append(ev.node_id)
        ended = (
            ev
            if isinstance(ev, job.StageFailed | job.StageInterrupted | job.MediaNotReady)
            else None
        )
        stage = _STAGE_DONE.get(type(ev)) or (ended.stage if ended is not None else None)
        if stage is not None and stage in started:
            seconds = (e.recorded_at - started.pop(stage)).total_seconds()
            entry.stage, entry.stage_seconds = stage, round(seconds, 3)
            entry.note += f"; {stage} took {seconds:.2f}s"
            if not ended:
                timeline.stage_seconds[stage] = round(seconds, 3)
        if isinstance(ev, job.StageFailed) and ev.retry_stage is not None:
            timeline.retries[ev.stage] = timeline.retries.get(ev.stage, 0) + 1
        if isinstance(ev, job.JobRetried):
            timeline.retries["run"] = timeline.retries.get("run", 0) + 1
        timeline.entries.append(entry)
    timeline.status = state.status if state else None
    return timeline


def _task_note(ev: Event, e: RecordedEvent, names: Names) -> str:
    if isinstance(ev, task.TaskSubmitted):
        return f"{ev.task_type} ({ev.priority}) {_by(e, names)}"
    if isinstance(ev, task.TaskCancelled):
        return f"{_by(e, names)}: {ev.reason}"
    return _data(ev)


def task_timeline(stream_id: str, events: Sequence[RecordedEvent], names: Names) -> Timeline:
    """A task's events: submitted, assigned, run, and how it ended."""
    timeline = Timeline(stream_id)
    state: task.TaskState | None = None
    for e in events:
        state = task.evolve(state, e.data, e.recorded_at, e.version)
        entry = Entry(e, _elapsed(events, e), _task_note(e.data, e, names))
        if isinstance(e.data, task.TaskAssigned) and e.data.device_id not in timeline.nodes:
            timeline.nodes.append(e.data.device_id)
        if isinstance(e.data, task.TaskRetried):
            timeline.retries["task"] = timeline.retries.get("task", 0) + 1
        timeline.entries.append(entry)
    timeline.status = state.status if state else None
    return timeline


def batch_timeline(
    stream_id: str,
    events: Sequence[RecordedEvent],
    names: Names,
    jobs: Sequence[job.JobState] = (),
) -> Timeline:
    """A batch's own events (its jobs have timelines of their own), and its status and job
    counts as every read shows them (`domain.batch.summarize` of `jobs`, its jobs folded)."""
    timeline = Timeline(stream_id)
    state: batch.BatchState | None = None
    for e in events:
        state = batch.evolve(state, e.data, e.recorded_at, e.version)
        note = f"{_data(e.data)} {_by(e, names)}".strip()
        timeline.entries.append(Entry(e, _elapsed(events, e), note))
    if state is not None:
        shown = batch.summarize(state, [batch.facts_of(j) for j in jobs])
        timeline.status = shown.status
        timeline.counts = {s: n for s, n in shown.counts.items() if n}
    return timeline


def archive_timeline(stream_id: str, events: Sequence[RecordedEvent], names: Names) -> Timeline:
    """An account's archive stream: the items it removed from its archive, and by whom."""
    timeline = Timeline(stream_id)
    for e in events:
        ev = e.data
        note = (
            f"{ev.archive_id!r} removed {_by(e, names)}: its next job downloads again"
            if isinstance(ev, archive.ArchiveItemRemoved)
            else _data(ev)
        )
        timeline.entries.append(Entry(e, _elapsed(events, e), note))
    timeline.status = f"{len(events)} removals"
    return timeline


def _elapsed(events: Sequence[RecordedEvent], e: RecordedEvent) -> float:
    return round((e.recorded_at - events[0].recorded_at).total_seconds(), 3)


def render_text(timeline: Timeline, *, progress: bool = False) -> Iterator[str]:
    """The timeline for people: one line an event, then a summary."""
    yield f"{timeline.stream_id}"
    hidden = 0
    for entry in timeline.entries:
        e = entry.event
        if isinstance(e.data, job.StageProgressed) and not progress:
            hidden += 1
            continue
        at = e.recorded_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        yield (
            f"  {e.position:>8}  {at}  +{entry.elapsed:>8.3f}s  v{e.version:<3} {e.type:<18} "
            f"{entry.note}"
        )
    summary = [f"status {timeline.status}"]
    if timeline.counts:
        summary.append("jobs: " + ", ".join(f"{n} {s}" for s, n in timeline.counts.items()))
    if timeline.stage_seconds:
        stages = ", ".join(f"{s} {t:.2f}s" for s, t in timeline.stage_seconds.items())
        summary.append(f"stages: {stages}")
    retries = ", ".join(f"{s} {n}" for s, n in timeline.retries.items()) or "none"
    summary.append(f"retries: {retries}")
    if timeline.nodes:
        summary.append(f"nodes: {', '.join(timeline.nodes)}")
    if hidden:
        summary.append(f"{hidden} progress events not shown (--progress shows them)")
    yield "; ".join(summary)


def render_json_lines(timeline: Timeline) -> Iterator[str]:
    """The timeline for machines: one JSON object an event, in stream order."""
    for entry in timeline.entries:
        e = entry.event
        yield _encode(
            {
                "stream_id": e.stream_id,
                "position": e.position,
                "version": e.version,
                "type": e.type,
                "schema_version": e.schema_version,
                "recorded_at": e.recorded_at,
                "elapsed_seconds": entry.elapsed,
                "stage": entry.stage,
                "stage_seconds": entry.stage_seconds,
                "note": entry.note,
                "data": e.data,
                "metadata": {n: getattr(e.metadata, n) for n in e.metadata.__struct_fields__},
            }
        ).decode()


BUILDERS: dict[str, Callable[[str, Sequence[RecordedEvent], Names], Timeline]] = {
    "job": job_timeline,
    "batch": batch_timeline,
    "task": task_timeline,
    "archive": archive_timeline,
}
"""Timeline builders by the kind of stream they read."""


def stream_of(kind: str, raw_id: str) -> str:
    """The stream of the job, batch or task `raw_id` (ValueError unless it is a UUID), or of
    the account `raw_id`'s archive."""
    if kind == "archive":
        if not raw_id.strip():
            raise ValueError("an account id")
        return archive.stream_id(raw_id.strip())
    return f"{kind}-{uuid.UUID(raw_id)}"


async def batch_jobs(store: EventStore, events: Sequence[RecordedEvent]) -> list[job.JobState]:
    """The jobs a batch stream names, each folded from its own stream."""
    state = batch.fold([(e.data, e.recorded_at, e.version) for e in events])
    found = []
    for job_id in state.job_ids if state else []:
        recorded = await store.read_stream(job.stream_id(job_id))
        folded = job.fold([(e.data, e.recorded_at, e.version) for e in recorded])
        if folded is not None:
            found.append(folded)
    return found


async def load_timeline(store: EventStore, kind: str, stream_id: str) -> Timeline | None:
    """The timeline of a job, batch or task stream; None if it has no events."""
    events = await store.read_stream(stream_id)
    if not events:
        return None
    actors = list({e.metadata.actor for e in events if e.metadata.actor})
    names = await api_keys.names_of(store.pool, actors)
    if kind == "batch":
        return batch_timeline(stream_id, events, names, await batch_jobs(store, events))
    return BUILDERS[kind](stream_id, events, names)
