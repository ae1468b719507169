"""The job aggregate: its events, its state, and the pure decide/evolve functions over them.

A job runs in *runs* (a retry starts a new run from download) made of *stages* (download, mux,
upload), each tried in numbered *attempts*. `(run, stage, attempt)` names one unit of work; a
worker holding a unit that is no longer the job's current one does nothing, which is what makes
duplicate deliveries harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from spool.domain import failure_groups, not_ready
from spool.domain.aggregate import Aggregate
from spool.domain.errors import InvalidTransition
from spool.domain.events import Event, event, registry
from spool.domain.job_labels import changed, check_labels
from spool.domain.job_options import JobOptions as JobOptions
from spool.domain.job_options import output_ext as output_ext
from spool.domain.loudness import Loudness
from spool.domain.node_health import Blame
from spool.domain.storage_config import StorageConfigured
from spool.domain.verification import Verification

JobStatus = Literal["Pending", "Processing", "Completed", "Failed", "Cancelled", "Skipped"]
JobStep = Literal["Queued", "Downloading", "Muxing", "Uploading", "Finished"]
Stage = Literal["download", "mux", "upload"]
ErrorType = Literal["error", "warning"]

TERMINAL: frozenset[str] = frozenset({"Completed", "Failed", "Cancelled", "Skipped"})
STEP_OF: dict[Stage, JobStep] = {"download": "Downloading", "mux": "Muxing", "upload": "Uploading"}
NEXT_STAGE: dict[Stage, Stage | None] = {"download": "mux", "mux": "upload", "upload": None}


class MediaFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file a stage left on its node's disk."""

    path: str
    kind: str
    size: int


class StoredFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One object a job wrote, as the storage described it just after: what tells it from
    whatever may lie at its key later (someone else's object, or nothing)."""

    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sha256: str | None = None
    """The SHA-256 (hex) of the bytes sent, computed as they were read for the upload; None in
    completions recorded before checksums were."""
    sha256_checked: bool = False
    """Whether the storage answered a checksum of what it stored and it matched `sha256` (S3's
    SHA-256 checksums); False where the storage returns none (a folder, Azure Blob)."""


class Progress(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How far the running stage is."""

    stage: Stage
    percent: float | None = None
    bytes: int | None = None
    total_bytes: int | None = None
    speed: float | None = None
    eta: float | None = None


# -- events ----------------------------------------------------------------------------------


@event
class JobCreated(Event, frozen=True, kw_only=True):
    """A user asked for a URL to be fetched; v2 nests the options (v1 had a flat `format`)."""

    schema_version = 2

    job_id: str
    account_id: str
    url: str
    options: JobOptions = JobOptions()
    batch_id: str | None = None
    # A job of a paused batch waits for JobReleased; a feed entry brings its own title.
    held: bool = False
    title: str | None = None
    # A storage for this job only, its credentials sealed with the account's key.
    storage: StorageConfigured | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """The user's `key=value` tags (domain/job_labels.py); none in histories before them."""
    subscription_id: str | None = None
    """The subscription whose check found the entry (domain/subscription.py)."""


@event
class JobReleased(Event, frozen=True, kw_only=True):
    """Its paused batch was started: the job may download now."""


@event
class JobRenamed(Event, frozen=True, kw_only=True):
    """The file name was changed while the job was held in a paused batch."""

    filename: str


@registry.upcaster("JobCreated", 1)
def _job_created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if data.get("format") is not None:
        options["format"] = data["format"]
    return {
        "job_id": data["job_id"],
        "account_id": data["account_id"],
        "url": data["url"],
        "options": options,
    }


@event
class StageStarted(Event, frozen=True, kw_only=True):
    stage: Stage
    run: int
    attempt: int
    node_id: str


@event
class StageProgressed(Event, frozen=True, kw_only=True):
    run: int
    attempt: int
    progress: Progress


@event
class DownloadCompleted(Event, frozen=True, kw_only=True):
    run: int
    attempt: int
    node_id: str
    files: list[MediaFile]
    bytes: int
    seconds: float
    title: str | None = None
    description: str | None = None
    release_date: str | None = None
    duration: float | None = None
    native_video_codec: str | None = None
    native_audio_codec: str | None = None
    width: int | None = None
    height: int | None = None
    chained: bool = False
    """The node went straight on to the mux: its StageStarted follows in the same append, and
    nothing is dispatched for it (`chain`)."""
    paused: bool = False
    """The job was paused (`JobPaused`): the mux waits for its `JobResumed`, which dispatches
    it; nothing is dispatched for this result (`record_result`)."""
    extractor: str | None = None
    """yt-dlp's extractor key (`Youtube`, `Generic`); None for a live recording and in results
    recorded before the download archive."""
    item_id: str | None = None
    """The item's id as that extractor gives it."""
    archive_id: str | None = None
    """The item's name in the account's download archive (domain/archive.py `archive_id`):
    once the job completes, its account's later jobs of the item are skipped."""


@event
class MuxCompleted(Event, frozen=True, kw_only=True):
    run: int
    attempt: int
    node_id: str
    output: MediaFile
    seconds: float
    duration: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    # What the downloaded files held, as FFmpeg read and names them (`h264`, `hevc`, `aac`); the
    # job's state says them in the request's words (`codec_word`: `h265`). The download's own
    # figures (yt-dlp's, from a manifest: `avc1.42c00d`, or none for a direct file) stand only
    # until the mux.
    native_video_codec: str | None = None
    native_audio_codec: str | None = None
    # The written file's frame: what was delivered (after `max_resolution`), not the source's.
    width: int | None = None
    height: int | None = None
    verification: Verification | None = None
    """What the output was held to and passed (domain/verification.py); None: `verify: off`,
    or a mux recorded before outputs were verified."""
    loudness: Loudness | None = None
    """Measured before and after, when the job normalised its audio (`normalize_audio`)."""
    previews: list[MediaFile] = msgspec.field(default_factory=list)
    """The previews made of the written file (`domain.previews.KINDS`), for the upload."""
    hls: MediaFile | None = None
    """The HLS package's folder on the node (`hls`, domain/hls.py), for the upload: one record
    however many segments it holds."""
    chained: bool = False
    """The node went straight on to the upload (see `DownloadCompleted.chained`)."""
    paused: bool = False
    """The job was paused: the upload waits for its resume (see `DownloadCompleted.paused`)."""


@event
class JobCompleted(Event, frozen=True, kw_only=True):
    """The upload finished: the file is in storage. The one terminal success event."""

    run: int
    attempt: int
    node_id: str
    key: str
    storage: str
    size: int
    seconds: float
    subtitle_key: str | None = None
    thumbnail_key: str | None = None
    aborted_uploads: list[str] = msgspec.field(default_factory=list)
    """Earlier attempts' unfinished uploads this attempt aborted first."""
    objects: list[StoredFile] = msgspec.field(default_factory=list)
    """Every object written (the media first, then subtitle and thumbnail, then previews), with
    what identifies it: a delete removes an object only while it is still this one."""
    preview_keys: dict[str, str] = msgspec.field(default_factory=dict)
    """Each preview's key by its kind (`domain.previews.KINDS`)."""
    hls_key: str | None = None
    """The HLS package's master playlist; its media playlists and segments are in `objects`."""
    archive_id: str | None = None
    """The item's archive id its download recorded (domain/archive.py), said again here so the
    archive projection reads the job's history only for a completion that has one."""


@event
class JobSkipped(Event, frozen=True, kw_only=True):
    """The download found the item already in the account's download archive, fetched by job
    `archived_by_job`, and fetched nothing: the job ends here (no file, no upload). Decided by
    the node right after yt-dlp extracted the item's info; a job asked with `force` is never
    skipped."""

    run: int
    attempt: int
    node_id: str
    archive_id: str
    archived_by_job: str
    extractor: str | None = None
    item_id: str | None = None
    title: str | None = None


@event
class StageFailed(Event, frozen=True, kw_only=True):
    """An attempt failed. `retry_stage` / `retry_attempt` say what runs next (None: nothing)."""

    stage: Stage
    run: int
    attempt: int
    node_id: str | None
    reason: str
    error_type: ErrorType = "error"
    retry_stage: Stage | None = None
    retry_attempt: int | None = None
    retry_in: float = 0.0
    unfinished_uploads: list[str] = msgspec.field(default_factory=list)
    """Multipart uploads the attempt began and could not abort (the storage was gone by then):
    kept on the job until a later upload aborts them, since their parts cost storage."""
    blame: Blame | None = None
    """Whose fault the failure is (domain/node_health.py); None in failures recorded before
    failures carried one."""
    lease_expired: bool = False
    """The reconciler handed the attempt on because its node's lease on it expired
    (domain/lease.py): the node stopped saying it runs it, not the work that failed."""


@event
class StageInterrupted(Event, frozen=True, kw_only=True):
    """The node running this attempt was stopped (SIGINT / SIGTERM) and cut it short.

    Not the job's fault: the same stage runs again as attempt `attempt + 1`, which spends none
    of the stage's attempts (see `JobState.interruptions`). The new attempt number gives the
    unit a queue id of its own (`arq_job_id`), since the interrupted one's result is kept.
    """

    stage: Stage
    run: int
    attempt: int
    node_id: str
    reason: Literal["shutdown"] = "shutdown"


@event
class JobFailed(Event, frozen=True, kw_only=True):
    run: int
    stage: Stage
    reason: str
    error_type: ErrorType = "error"


@event
class JobCancelled(Event, frozen=True, kw_only=True):
    run: int
    stage: Stage | None
    reason: str = "cancelled by the user"


@event
class JobRetried(Event, frozen=True, kw_only=True):
    """The job runs again as run `run`, from `from_stage`: a retry from `mux` or `upload` reuses
    the files the last run left on node `node_id` (retries recorded before it: download)."""

    run: int
    from_stage: Stage = "download"
    node_id: str | None = None


@event
class FileDeleted(Event, frozen=True, kw_only=True):
    """The job's uploaded files were deleted from storage; `reason` says why when it was not
    asked for by hand ("retention of subscription <id>")."""

    key: str
    reason: str | None = None


WebhookKind = Literal["job.completed", "job.failed"]


@event
class JobLabelled(Event, frozen=True, kw_only=True):
    """The user changed the job's labels (`PATCH /jobs/{id}`): `labels` is the whole set after
    the change, `changes` what was asked (a key's None removed it)."""

    labels: dict[str, str]
    changes: dict[str, str | None] = msgspec.field(default_factory=dict)


@event
class WebhookDelivered(Event, frozen=True, kw_only=True):
    kind: WebhookKind
    url: str
    attempt: int
    status_code: int
    seconds: float


@event
class WebhookFailed(Event, frozen=True, kw_only=True):
    """A delivery attempt failed; `final` when no retry follows."""

    kind: WebhookKind
    url: str
    attempt: int
    reason: str
    final: bool


PausedBy = Literal["job", "batch", "account", "cluster"]
"""What holds a job back (domain/pause.py): its own pause, its batch's, its account's, or the
cluster's intake."""


@event
class JobPaused(Event, frozen=True, kw_only=True):
    """The job was paused: a running stage finishes, the next one does not start."""


@event
class JobResumed(Event, frozen=True, kw_only=True):
    """The pause was lifted. `due`: the job's current unit `(run, stage, attempt)` has not
    started and is to be dispatched now (on `node_id`'s queue for a mux or an upload)."""

    run: int
    stage: Stage
    attempt: int
    node_id: str | None = None
    due: bool = False


@event
class StageDeferred(Event, frozen=True, kw_only=True):
    """A node took a unit of a paused job and left it unstarted (`paused_by` says what held
    it). Like an interruption it spends no attempt: the same stage waits as `attempt + 1`, a
    unit id of its own, for the resume to dispatch it."""

    stage: Stage
    run: int
    attempt: int
    node_id: str
    paused_by: PausedBy


@event
class MediaNotReady(Event, frozen=True, kw_only=True):
    """The download found its media not out yet (a premiere, an upcoming live stream, a video
    still being processed: domain/not_ready.py). No failure and no attempt spent: the job
    waits, Pending, and the download runs again as `attempt + 1` in `retry_in` seconds."""

    run: int
    attempt: int
    node_id: str
    reason: str
    """What the source said."""
    ready_at: datetime | None = None
    """When the source says the media is out, if it says."""
    retry_in: float

    @property
    def stage(self) -> Stage:
        """The stage it ends an attempt of: always the download."""
        return "download"


# -- state -----------------------------------------------------------------------------------


class StageTiming(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    started_at: datetime | None = None
    seconds: float | None = None
    bytes: int | None = None


class JobState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A job folded from its events: what `GET /jobs/{id}` shows."""

    job_id: str
    account_id: str
    url: str
    options: JobOptions
    status: JobStatus
    step: JobStep
    batch_id: str | None = None
    subscription_id: str | None = None
    held: bool = False
    storage_override: StorageConfigured | None = None
    created_at: datetime
    updated_at: datetime
    # The current run's: a retry starts them over (earlier runs stay in the job's events).
    started_at: datetime | None = None
    """When the current run's first stage started."""
    retried_at: datetime | None = None
    """When the current run was asked for by a retry; None in the first run (see `queued_at`)."""
    finished_at: datetime | None = None
    error: str | None = None
    error_type: ErrorType | None = None
    version: int = 0
    # Where the pipeline stands: the current unit of work.
    run: int = 1
    stage: Stage = "download"
    attempt: int = 1
    node_id: str | None = None
    progress: Progress | None = None
    retries: dict[str, int] = msgspec.field(default_factory=dict)
    interruptions: int = 0
    """Attempts of the current stage that a node's shutdown cut short: they spend no attempt,
    so `attempt - interruptions` is how many of the stage's attempts are used."""
    # What the stages produced.
    files: list[MediaFile] = msgspec.field(default_factory=list)
    unfinished_uploads: list[str] = msgspec.field(default_factory=list)
    """Failed attempts' multipart uploads still to abort (`StorageError.unfinished`)."""
    output: MediaFile | None = None
    title: str | None = None
    description: str | None = None
    release_date: str | None = None
    native_video_codec: str | None = None
    native_audio_codec: str | None = None
    actual_quality: str | None = None
    source_quality: int | None = None
    """The shorter side of the format downloaded, as the source described it (None: it did
    not say): what the output's resolution is held to (domain/verification.py)."""
    verification: Verification | None = None
    """The current run's mux output's passed verification (`MuxCompleted.verification`)."""
    video_codec: str | None = None
    audio_codec: str | None = None
    duration: float | None = None
    key: str | None = None
    subtitle_key: str | None = None
    thumbnail_key: str | None = None
    preview_keys: dict[str, str] = msgspec.field(default_factory=dict)
    hls_key: str | None = None
    objects: list[StoredFile] = msgspec.field(default_factory=list)
    loudness: Loudness | None = None
    previews: list[MediaFile] = msgspec.field(default_factory=list)
    """The mux's previews on its node, until uploaded."""
    hls: MediaFile | None = None
    """The mux's HLS package on its node, until uploaded."""
    storage: str | None = None
    file_size: int | None = None
    file_deleted: bool = False
    webhook_status: Literal["pending", "retrying", "delivered", "failed"] | None = None
    webhook_attempts: int = 0
    timings: dict[str, StageTiming] = msgspec.field(default_factory=dict)
    """Each stage's timing in the current run."""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    paused: bool = False
    """Paused by its own `JobPaused` (not by its batch, account or the cluster: domain/pause.py)."""
    archive_id: str | None = None
    """The item's name in the download archive (domain/archive.py), once a download said it."""
    extractor: str | None = None
    item_id: str | None = None
    archived_by_job: str | None = None
    """A Skipped job's: the job that holds the item in the account's archive."""
    waits: int = 0
    """The current run's waits for media not out yet (`MediaNotReady`)."""
    waiting_since: datetime | None = None
    """When the current run first found its media not out yet."""
    next_try_at: datetime | None = None
    """While the job waits for its media: when its download tries again."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def unit_started(self) -> bool:
        """Whether a node has started the current unit: a start sets `progress`, and every
        event that moves the job to another unit (or ends it) clears it."""
        return self.progress is not None and not self.terminal

    @property
    def queued_at(self) -> datetime:
        """When the current run was asked for: the job's creation, or its latest retry."""
        return self.retried_at or self.created_at

    @property
    def failure_group(self) -> str | None:
        """The group of a Failed job's failure (domain/failure_groups.py); None otherwise, so a
        retried job leaves its group."""
        if self.status != "Failed" or self.error is None:
            return None
        return failure_groups.group_id(self.error_type or "error", self.error)


API_CODEC_WORDS: dict[str, str] = {"hevc": "h265"}
"""FFmpeg's codec names that the job API words otherwise: a job asked for `video_codec: h265`
reports `h265`, not FFmpeg's `hevc`. Every other name (h264, vp9, aac, opus, mp3, ...) is the
same in both."""


def codec_word(name: str | None) -> str | None:
    """A codec as the job API names it (`h265`), given FFmpeg's or a source's name for it."""
    return None if name is None else API_CODEC_WORDS.get(name, name)


def stream_id(job_id: str) -> str:
    """The event stream that holds one job."""
    return f"job-{job_id}"


def arq_job_id(job_id: str, run: int, stage: Stage, attempt: int) -> str:
    """The deterministic queue id of one unit of work: a replayed dispatch enqueues nothing."""
    return f"{job_id}:{run}:{stage}:{attempt}"


# -- decide ----------------------------------------------------------------------------------


def create(
    *,
    job_id: str,
    account_id: str,
    url: str,
    options: JobOptions,
    batch_id: str | None = None,
    held: bool = False,
    title: str | None = None,
    storage: StorageConfigured | None = None,
    labels: dict[str, str] | None = None,
    subscription_id: str | None = None,
) -> list[Event]:
    """Decide the events that create a job."""
    return [
        JobCreated(
            job_id=job_id,
            account_id=account_id,
            url=url,
            options=options,
            batch_id=batch_id,
            held=held,
            title=title,
            storage=storage,
            labels=check_labels(labels or {}),
            subscription_id=subscription_id,
        )
    ]


def release(state: JobState) -> list[Event]:
    """Let a held job download; a job already released or finished needs nothing."""
    return [JobReleased()] if state.held and not state.terminal else []


def rename(state: JobState, filename: str) -> list[Event]:
    """Change the file name of a job that is still held."""
    if not state.held:
        raise InvalidTransition("Only jobs of a paused batch can be renamed")
    return [JobRenamed(filename=filename)]


def is_current(state: JobState, stage: Stage, run: int, attempt: int) -> bool:
    """Whether `(run, stage, attempt)` is the unit of work the job is waiting on."""
    return (
        not state.terminal
        and not state.held
        and state.run == run
        and state.stage == stage
        and state.attempt == attempt
    )


PROGRESS_STEP = 10.0
"""Percent between two progress events a stage's history keeps (`progress_milestone`)."""


def _progress_step(p: Progress) -> int | None:
    if p.percent is None:
        return None
    return int(min(max(p.percent, 0.0), 100.0) // PROGRESS_STEP)


def progress_milestone(last_recorded: Progress | None, now: Progress) -> bool:
    """Whether `now` is worth a `StageProgressed` in the job's history: its percent entered a
    step of `PROGRESS_STEP` past the last recorded one's (the stage's start counts as zero). A
    stage without a known percent (a live recording) has none: its history keeps the start and
    the result, and its progress lives outside the log (adapters/live_progress.py)."""
    step = _progress_step(now)
    if step is None:
        return False
    last = None if last_recorded is None or last_recorded.stage != now.stage else last_recorded
    before = _progress_step(last) if last is not None else None
    return step > (before or 0)


def with_live_progress(
    state: JobState, stage: Stage, run: int, attempt: int, progress: Progress
) -> JobState:
    """The job showing a node's latest progress, if `(run, stage, attempt)` is the unit it
    waits on; as it is for any other unit's (one it moved off, or it ended)."""
    if not is_current(state, stage, run, attempt) or progress.stage != stage:
        return state
    return msgspec.structs.replace(state, progress=progress)


def _require_current(state: JobState, stage: Stage, run: int, attempt: int) -> None:
    if not is_current(state, stage, run, attempt):
        raise InvalidTransition(
            f"job {state.job_id} is at {state.status}/{state.stage} run {state.run} attempt "
            f"{state.attempt}, not {stage} run {run} attempt {attempt}"
        )


def start_stage(state: JobState, stage: Stage, run: int, attempt: int, node_id: str) -> list[Event]:
    """A node begins a unit of work."""
    _require_current(state, stage, run, attempt)
    return [StageStarted(stage=stage, run=run, attempt=attempt, node_id=node_id)]


def stage_after(done: Event) -> Stage | None:
    """The stage a result calls for on its own node: the mux after a download, the upload
    after a mux; None for any other event."""
    if isinstance(done, DownloadCompleted):
        return "mux"
    if isinstance(done, MuxCompleted):
        return "upload"
    return None


def chain(done: DownloadCompleted | MuxCompleted) -> list[Event]:
    """A stage's result and the next stage's start on the same node, to be appended together.

    Mux and upload must run where the download's files are; a node with a free slot for the
    next stage starts it in the append that records the result, instead of a round trip
    through its queue. Each stage keeps its own events, and the next stage is a started unit
    under the node's lease like any other.
    """
    nxt = stage_after(done)
    assert nxt is not None
    return [
        msgspec.structs.replace(done, chained=True),
        StageStarted(stage=nxt, run=done.run, attempt=1, node_id=done.node_id),
    ]


def fail_stage(
    state: JobState,
    stage: Stage,
    run: int,
    attempt: int,
    *,
    node_id: str | None,
    reason: str,
    error_type: ErrorType = "error",
    retryable: bool = True,
    max_attempts: int = 3,
    backoff: float = 2.0,
    restart_from_download: bool = False,
    unfinished_uploads: Sequence[str] = (),
    blame: Blame | None = None,
    lease_expired: bool = False,
) -> list[Event]:
    """An attempt failed: retry it with exponential backoff, or fail the job when out of tries.

    `restart_from_download` is for a lost node: its local files went with it. `blame` says whose
    fault it is; None (the reconciler's verdicts on a lost node or worker, an expired lease) is
    no one's in particular and counts toward no quarantine: a lost node is gone, or restarts
    clean. `lease_expired`: the failure is the reconciler's, on an expired lease
    (`StageFailed.lease_expired`).
    """
    _require_current(state, stage, run, attempt)
    spent = attempt - state.interruptions  # an attempt cut short by a shutdown is not one
    if retryable and spent < max_attempts:
        retry_stage: Stage = "download" if restart_from_download else stage
        return [
            StageFailed(
                stage=stage,
                run=run,
                attempt=attempt,
                node_id=node_id,
                reason=reason,
                error_type=error_type,
                retry_stage=retry_stage,
                retry_attempt=attempt + 1,
                retry_in=backoff * 2 ** (spent - 1),
                unfinished_uploads=list(unfinished_uploads),
                blame=blame,
                lease_expired=lease_expired,
            )
        ]
    return [
        StageFailed(
            stage=stage,
            run=run,
            attempt=attempt,
            node_id=node_id,
            reason=reason,
            error_type=error_type,
            unfinished_uploads=list(unfinished_uploads),
            blame=blame,
            lease_expired=lease_expired,
        ),
        JobFailed(run=run, stage=stage, reason=reason, error_type=error_type),
    ]


def wait_for_media(
    state: JobState,
    run: int,
    attempt: int,
    *,
    node_id: str,
    reason: str,
    ready_at: datetime | None,
    now: datetime,
    policy: not_ready.WaitPolicy,
) -> list[Event]:
    """The download found its media not out yet: wait and try again later, spending no attempt;
    or, once the run has waited its limit (or the media comes out only after it), fail the
    job saying so (domain/not_ready.py)."""
    _require_current(state, "download", run, attempt)
    since = state.waiting_since or now
    delay = not_ready.next_try(
        policy,
        waits=state.waits,
        waited=(now - since).total_seconds(),
        ready_in=None if ready_at is None else (ready_at - now).total_seconds(),
    )
    if delay is None:
        failure = not_ready.given_up(reason, policy, ready_at, now)
        return fail_stage(
            state,
            "download",
            run,
            attempt,
            node_id=node_id,
            reason=failure,
            error_type="warning",
            retryable=False,
            blame="source",
        )
    return [
        MediaNotReady(
            run=run,
            attempt=attempt,
            node_id=node_id,
            reason=reason,
            ready_at=ready_at,
            retry_in=delay,
        )
    ]


def interrupt_stage(
    state: JobState, stage: Stage, run: int, attempt: int, *, node_id: str
) -> list[Event]:
    """A stopping node cut its attempt short: the same stage runs again, no attempt spent."""
    _require_current(state, stage, run, attempt)
    return [StageInterrupted(stage=stage, run=run, attempt=attempt, node_id=node_id)]


def cancel(state: JobState) -> list[Event]:
    """Cancel a Pending or Processing job; a finished one cannot be."""
    if state.terminal:
        raise InvalidTransition(f"Job is already {state.status.lower()} and cannot be cancelled")
    running = state.stage if state.status == "Processing" else None
    return [JobCancelled(run=state.run, stage=running)]


def retry(state: JobState, from_stage: Stage = "download") -> list[Event]:
    """Start a Failed or Cancelled job again, from download or (`from_stage`) from the mux or
    upload of the files its last run left on its node."""
    if state.status not in ("Failed", "Cancelled"):
        raise InvalidTransition(
            f"Only failed or cancelled jobs can be retried (this job is {state.status})"
        )
    if from_stage == "download":
        return [JobRetried(run=state.run + 1)]
    if reusable_from(state) not in (from_stage, "upload") or state.node_id is None:
        raise InvalidTransition(
            f"This job's last run made no files to {from_stage} from; retry from download"
        )
    return [JobRetried(run=state.run + 1, from_stage=from_stage, node_id=state.node_id)]


def reusable_from(state: JobState) -> Stage:
    """The latest stage a retry can start from with what the job's last run made: `upload`
    with a mux output, `mux` with downloaded files, else `download`."""
    if state.stage == "upload" and state.output is not None:
        return "upload"
    if state.stage in ("mux", "upload") and state.files:
        return "mux"
    return "download"


def recorded_objects(completed: JobState | JobCompleted) -> list[StoredFile]:
    """The objects a completed job (or one completion) wrote, as recorded.

    A completion recorded before objects were (its `objects` empty) names its keys and the
    media's size only; those are all a check can hold the objects to.
    """
    if completed.objects:
        return list(completed.objects)
    if completed.key is None:
        return []
    size = completed.file_size if isinstance(completed, JobState) else completed.size
    found = [StoredFile(key=completed.key, size=size)]
    found += [StoredFile(key=k) for k in (completed.subtitle_key, completed.thumbnail_key) if k]
    return found


def file_key(state: JobState, kind: str) -> str | None:
    """The key of a completed job's file of `kind`: `media`, `subtitle`, `thumbnail`, `hls`
    (the master playlist) or a preview's (`domain.previews.KINDS`)."""
    named = {
        "media": state.key,
        "subtitle": state.subtitle_key,
        "thumbnail": state.thumbnail_key,
        "hls": state.hls_key,
    }
    return named[kind] if kind in named else state.preview_keys.get(kind)


def delete_file(state: JobState, reason: str | None = None) -> list[Event]:
    """Record that the uploaded object was deleted (and why, when it was not by hand)."""
    if state.key is None or state.status != "Completed":
        raise InvalidTransition("Job has no uploaded file")
    if state.file_deleted:
        raise InvalidTransition("File already deleted")
    return [FileDeleted(key=state.key, reason=reason)]


def label(state: JobState, changes: dict[str, str | None]) -> list[Event]:
    """Change a job's labels, whatever its status; nothing when they would stay the same."""
    after = changed(state.labels, changes)
    return [] if after == state.labels else [JobLabelled(labels=after, changes=dict(changes))]


def pause(state: JobState) -> list[Event]:
    """Pause a job: a running stage finishes, the next does not start; twice: nothing."""
    if state.terminal:
        raise InvalidTransition(f"Job is already {state.status.lower()} and cannot be paused")
    return [] if state.paused else [JobPaused()]


def resume(state: JobState) -> list[Event]:
    """Lift a job's pause; its current unit is dispatched if it has not started. Not paused:
    nothing."""
    if not state.paused:
        return []
    due = not (state.terminal or state.held or state.unit_started)  # see pause.may_start
    return [
        JobResumed(
            run=state.run, stage=state.stage, attempt=state.attempt, node_id=state.node_id, due=due
        )
    ]


def defer_stage(
    state: JobState, stage: Stage, run: int, attempt: int, *, node_id: str, paused_by: PausedBy
) -> list[Event]:
    """Leave a unit of a paused job unstarted: the same stage waits for the resume."""
    _require_current(state, stage, run, attempt)
    return [
        StageDeferred(stage=stage, run=run, attempt=attempt, node_id=node_id, paused_by=paused_by)
    ]


def record_result(state: JobState, done: Event, *, go_on: bool) -> list[Event]:
    """A stage's result as its node appends it: with the next stage's start when the node can
    go on (`chain`), unless the job is paused, whose result says so and starts nothing."""
    if isinstance(done, DownloadCompleted | MuxCompleted):
        if state.paused:
            return [msgspec.structs.replace(done, paused=True)]
        if go_on:
            return chain(done)
    return [done]


# -- evolve ----------------------------------------------------------------------------------


def evolve(state: JobState | None, ev: Event, at: datetime, version: int) -> JobState:
    """Apply one recorded event to a job's state: a new state (states are frozen)."""
    if isinstance(ev, JobCreated):
        if state is not None:
            raise InvalidTransition(f"job {ev.job_id} created twice")
        return JobState(
            job_id=ev.job_id,
            account_id=ev.account_id,
            url=ev.url,
            options=ev.options,
            status="Pending",
            step="Queued",
            batch_id=ev.batch_id,
            subscription_id=ev.subscription_id,
            held=ev.held,
            title=ev.title,
            storage_override=ev.storage,
            labels=dict(ev.labels),
            created_at=at,
            updated_at=at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before JobCreated")
    replace = msgspec.structs.replace
    if isinstance(ev, StageStarted):
        waited = state.next_try_at is not None  # the note it showed while it waited goes
        return replace(
            state,
            updated_at=at,
            version=version,
            next_try_at=None,
            error=None if waited else state.error,
            error_type=None if waited else state.error_type,
            status="Processing",
            step=STEP_OF[ev.stage],
            node_id=ev.node_id,
            progress=Progress(stage=ev.stage, percent=0.0),
            started_at=state.started_at or at,
            timings={**state.timings, ev.stage: StageTiming(started_at=at)},
        )
    if isinstance(ev, StageProgressed):
        if ev.run == state.run and ev.attempt == state.attempt and not state.terminal:
            return replace(state, updated_at=at, version=version, progress=ev.progress)
    elif isinstance(ev, DownloadCompleted):
        return replace(
            state,
            updated_at=at,
            version=version,
            files=list(ev.files),
            # A feed entry's own title wins over what the media file says about itself.
            title=state.title or ev.title,
            description=ev.description,
            release_date=ev.release_date,
            native_video_codec=codec_word(ev.native_video_codec),
            native_audio_codec=codec_word(ev.native_audio_codec),
            actual_quality=_quality(ev.width, ev.height) or state.actual_quality,
            source_quality=min(ev.width, ev.height) if ev.width and ev.height else None,
            duration=ev.duration,
            timings=_timed(state, "download", ev.seconds, ev.bytes),
            archive_id=ev.archive_id,
            extractor=ev.extractor,
            item_id=ev.item_id,
            **_advanced("download"),
        )
    elif isinstance(ev, MuxCompleted):
        return replace(
            state,
            updated_at=at,
            version=version,
            output=ev.output,
            video_codec=codec_word(ev.video_codec),
            audio_codec=codec_word(ev.audio_codec),
            native_video_codec=codec_word(ev.native_video_codec) or state.native_video_codec,
            native_audio_codec=codec_word(ev.native_audio_codec) or state.native_audio_codec,
            actual_quality=_quality(ev.width, ev.height) or state.actual_quality,
            duration=ev.duration or state.duration,
            verification=ev.verification,
            loudness=ev.loudness,
            previews=list(ev.previews),
            hls=ev.hls,
            timings=_timed(state, "mux", ev.seconds, ev.output.size),
            **_advanced("mux"),
        )
    elif isinstance(ev, JobCompleted):
        aborted = set(ev.aborted_uploads)
        return replace(
            state,
            updated_at=at,
            version=version,
            key=ev.key,
            storage=ev.storage,
            file_size=ev.size,
            subtitle_key=ev.subtitle_key,
            thumbnail_key=ev.thumbnail_key,
            preview_keys=dict(ev.preview_keys),
            hls_key=ev.hls_key,
            objects=list(ev.objects),
            unfinished_uploads=[u for u in state.unfinished_uploads if u not in aborted],
            timings=_timed(state, "upload", ev.seconds, ev.size),
            status="Completed",
            step="Finished",
            finished_at=at,
            progress=None,
            # A verified output below what was asked completes with a warning that says so.
            error=_warning(state),
            error_type="warning" if _warning(state) else None,
            webhook_status="pending" if state.options.webhook_url else None,
        )
    elif isinstance(ev, JobSkipped):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="Skipped",
            step="Finished",
            finished_at=at,
            progress=None,
            error=None,
            error_type=None,
            title=state.title or ev.title,
            archive_id=ev.archive_id,
            extractor=ev.extractor,
            item_id=ev.item_id,
            archived_by_job=ev.archived_by_job,
        )
    elif isinstance(ev, StageFailed):
        failed = replace(
            state,
            updated_at=at,
            version=version,
            retries={**state.retries, ev.stage: state.retries.get(ev.stage, 0) + 1},
            error=ev.reason,
            error_type=ev.error_type,
            unfinished_uploads=state.unfinished_uploads + ev.unfinished_uploads,
        )
        if ev.retry_stage is None or ev.retry_attempt is None:
            return failed
        return replace(
            failed,
            stage=ev.retry_stage,
            attempt=ev.retry_attempt,
            progress=None,
            # A lost node's stage starts over from download, its interruptions with it.
            interruptions=0 if ev.retry_stage != state.stage else state.interruptions,
        )
    elif isinstance(ev, StageInterrupted):
        if ev.run == state.run and ev.stage == state.stage and ev.attempt == state.attempt:
            return replace(
                state,
                updated_at=at,
                version=version,
                attempt=ev.attempt + 1,
                interruptions=state.interruptions + 1,
                progress=None,
            )
    elif isinstance(ev, MediaNotReady):
        if (ev.run, ev.attempt) == (state.run, state.attempt) and state.stage == "download":
            next_at = at + timedelta(seconds=ev.retry_in)
            return replace(
                state,
                updated_at=at,
                version=version,
                status="Pending",
                step="Queued",
                attempt=ev.attempt + 1,
                interruptions=state.interruptions + 1,  # spends no attempt, as a shutdown does
                progress=None,
                waits=state.waits + 1,
                waiting_since=state.waiting_since or at,
                next_try_at=next_at,
                error=not_ready.note(ev.reason, ev.ready_at, next_at),
                error_type="warning",
            )
    elif isinstance(ev, JobFailed):
        return replace(
            state,
            updated_at=at,
            version=version,
            next_try_at=None,
            status="Failed",
            step="Finished",
            error=ev.reason,
            error_type=ev.error_type,
            finished_at=at,
            progress=None,
            webhook_status="pending" if state.options.webhook_url else None,
        )
    elif isinstance(ev, WebhookDelivered):
        return replace(
            state,
            updated_at=at,
            version=version,
            webhook_status="delivered",
            webhook_attempts=ev.attempt,
        )
    elif isinstance(ev, WebhookFailed):
        return replace(
            state,
            updated_at=at,
            version=version,
            webhook_status="failed" if ev.final else "retrying",
            webhook_attempts=ev.attempt,
        )
    elif isinstance(ev, JobCancelled):
        return replace(
            state,
            updated_at=at,
            version=version,
            next_try_at=None,
            status="Cancelled",
            step="Finished",
            error=None,
            error_type=None,
            finished_at=at,
            progress=None,
        )
    elif isinstance(ev, JobRetried):
        # From mux or upload, the last run's files (on `ev.node_id`) are what the stage reads.
        reused: dict[str, Any] = {"node_id": ev.node_id}
        if ev.from_stage != "upload":
            reused |= {"output": None, "verification": None, "loudness": None, "previews": []}
            reused["hls"] = None
        if ev.from_stage == "download":
            reused |= {"files": [], "archive_id": None, "extractor": None, "item_id": None}
        return replace(
            state,
            updated_at=at,
            version=version,
            status="Pending",
            step="Queued",
            webhook_status=None,
            webhook_attempts=0,
            run=ev.run,
            stage=ev.from_stage,
            attempt=1,
            interruptions=0,
            waits=0,
            waiting_since=None,
            next_try_at=None,
            progress=None,
            finished_at=None,
            retried_at=at,
            started_at=None,
            timings={},
            error=None,
            error_type=None,
            key=None,
            subtitle_key=None,
            thumbnail_key=None,
            preview_keys={},
            hls_key=None,
            objects=[],
            **reused,
        )
    elif isinstance(ev, FileDeleted):
        return replace(state, updated_at=at, version=version, file_deleted=True)
    elif isinstance(ev, JobReleased):
        return replace(state, updated_at=at, version=version, held=False)
    elif isinstance(ev, JobRenamed):
        options = replace(state.options, filename=ev.filename)
        return replace(state, updated_at=at, version=version, options=options)
    elif isinstance(ev, JobLabelled):
        return replace(state, updated_at=at, version=version, labels=dict(ev.labels))
    elif isinstance(ev, JobPaused):
        return replace(state, updated_at=at, version=version, paused=True)
    elif isinstance(ev, JobResumed):
        return replace(state, updated_at=at, version=version, paused=False)
    elif isinstance(ev, StageDeferred) and (ev.run, ev.stage, ev.attempt) == (
        state.run,
        state.stage,
        state.attempt,
    ):
        return replace(
            state,
            updated_at=at,
            version=version,
            attempt=ev.attempt + 1,
            interruptions=state.interruptions + 1,  # spends no attempt, as a shutdown does
            progress=None,
        )
    return replace(state, updated_at=at, version=version)


def _warning(state: JobState) -> str | None:
    return state.verification.warning if state.verification is not None else None


def _quality(width: int | None, height: int | None) -> str | None:
    """The delivered quality a frame names (`720p`); None when the frame is not known."""
    return f"{min(width, height)}p" if width and height else None


def _timed(state: JobState, stage: Stage, seconds: float, size: int) -> dict[str, StageTiming]:
    """The run's timings with `stage` finished: its start kept, its duration and bytes set."""
    started = state.timings.get(stage)
    timing = StageTiming(
        started_at=started.started_at if started else None, seconds=seconds, bytes=size
    )
    return {**state.timings, stage: timing}


def _advanced(done: Stage) -> dict[str, Any]:
    """The changes that move a job past a finished stage to the first attempt of the next."""
    nxt = NEXT_STAGE[done]
    assert nxt is not None
    return {"stage": nxt, "attempt": 1, "progress": None, "interruptions": 0}


COUNTERS = (
    "jobs_created",
    "jobs_completed",
    "jobs_failed",
    "jobs_cancelled",
    "bytes_downloaded",
    "bytes_uploaded",
)
"""What `count` adds up, by name: the columns of `job_minutes`."""

USAGE_COUNTERS = (*COUNTERS, "bytes_deleted")
"""`COUNTERS` and the bytes of the files deleted (`FileDeleted`): the columns of `usage_daily`."""


def count(counts: dict[str, int], ev: Event) -> None:
    """Add one event to usage counters: jobs created / completed / failed / cancelled, bytes."""
    if isinstance(ev, JobCreated):
        counts["jobs_created"] += 1
    elif isinstance(ev, DownloadCompleted):
        counts["bytes_downloaded"] += ev.bytes
    elif isinstance(ev, JobCompleted):
        counts["jobs_completed"] += 1
        counts["bytes_uploaded"] += ev.size
    elif isinstance(ev, JobFailed):
        counts["jobs_failed"] += 1
    elif isinstance(ev, JobCancelled):
        counts["jobs_cancelled"] += 1


AGGREGATE: Aggregate[JobState] = Aggregate(
    name="job",
    stream_id=stream_id,
    evolve=evolve,
    # 2: `source_quality` (folded from DownloadCompleted's width and height, which older rows
    # never kept) and `verification` (migration 0032); 3: loudness, previews and their keys
    # (migration 0033; a row of an earlier version holds none, even where events have them);
    # 4: the HLS package on the node and its master playlist's key (migration 0034).
    snapshot_version=4,
    event_classes=(
        JobCreated,
        JobReleased,
        JobRenamed,
        StageStarted,
        StageProgressed,
        DownloadCompleted,
        MuxCompleted,
        JobCompleted,
        JobSkipped,
        StageFailed,
        StageInterrupted,
        JobFailed,
        JobCancelled,
        JobRetried,
        FileDeleted,
        WebhookDelivered,
        WebhookFailed,
        JobLabelled,
        JobPaused,
        JobResumed,
        StageDeferred,
        MediaNotReady,
    ),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types
"""Every event type a job stream holds."""

fold = AGGREGATE.fold
