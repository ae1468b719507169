"""The job API (seed 002): create, read and list jobs, and read a job's event history."""

from __future__ import annotations

import base64
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from spool.adapters import live_progress
from spool.adapters.account_storage import AccountStorages
from spool.adapters.downloader import DownloadFailed
from spool.adapters.event_store import EventStore
from spool.adapters.file_links import file_link
from spool.adapters.job_store import load_job_as_of
from spool.adapters.playlists import Playlist, extract_playlist, looks_like_media
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.read_models import pauses
from spool.adapters.settings import Settings
from spool.adapters.ssrf import UrlGuard
from spool.api.as_of import BadAsOf, parse_as_of
from spool.api.auth import Principal
from spool.api.batches import create_bulk, job_storage
from spool.api.bodies import READS_BODY, reads_body
from spool.api.errors import JobApiError
from spool.api.idempotency import IdempotencyKey, created, earlier_answer, idempotency_of
from spool.api.job_filters import query_of_params
from spool.api.job_requests import CreateJobBody, decode_create_job_body, validate_create_job
from spool.api.probes import run_probe
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.api.targets import refuse_forbidden_target
from spool.application import jobs as commands
from spool.application.batches import BulkAnswer
from spool.application.jobs import BatchCreatedAnswer, JobCreatedAnswer, NewJob
from spool.domain import failure_groups, fair_share, job, pause, previews
from spool.domain.events import Metadata
from spool.domain.job import PausedBy
from spool.domain.job_query import JobQuery

_to_builtins = msgspec.to_builtins


class ProgressView(msgspec.Struct):
    """Where the running stage is: `speed` in bytes/s, `eta` in seconds."""

    stage: str
    percent: float | None
    bytes: int | None
    total_bytes: int | None
    speed: float | None
    eta: float | None


class ObjectView(msgspec.Struct):
    """One object a completed job wrote (its media first, then subtitle and thumbnail)."""

    key: str
    size: int | None
    sha256: str | None
    """Of the bytes uploaded, hashed as they were read; null for jobs completed before."""
    sha256_checked: bool
    """Whether the storage answered a checksum of what it stored and it matched (S3)."""


class LoudnessView(msgspec.Struct):
    """A normalised job's integrated loudness in LUFS: the target, and as measured before (the
    source's audio over the job's clip) and after (the file delivered); null: nothing to
    measure (no audio, or silence)."""

    target_lufs: float
    before_lufs: float | None
    after_lufs: float | None


class JobView(msgspec.Struct, omit_defaults=False):
    """A job as `GET /jobs/{id}` shows it; times are ms since the epoch."""

    id: str
    url: str
    status: str
    step: str
    progress: ProgressView | None
    s3_url: str | None
    subtitle_url: str | None
    thumbnail_url: str | None
    error: str | None
    error_type: str | None
    title: str | None
    description: str | None
    release_date: str | None
    folder: str | None
    filename: str | None
    format: str
    batch_id: str | None
    file_size: int | None
    file_deleted: bool
    storage_key: str | None
    native_video_codec: str | None
    native_audio_codec: str | None
    video_codec: str | None
    audio_codec: str | None
    requested_quality: str
    actual_quality: str | None
    duration_seconds: float | None
    download_retries: int
    mux_retries: int
    upload_retries: int
    queue_wait_ms: int | None
    download_duration_ms: int | None
    mux_duration_ms: int | None
    upload_duration_ms: int | None
    total_duration_ms: int | None
    download_speed_mbps: float | None
    upload_speed_mbps: float | None
    webhook_status: str | None
    created_at: int
    finished_at: int | None
    labels: dict[str, str]
    priority: str | int | None = None
    """As asked (a word where one fits); null: the account's default (domain/fair_share.py)."""
    paused: bool = False
    """Whether the job's next stage is held back by a pause (its status stays as it is)."""
    paused_by: PausedBy | None = None
    """What holds it: `job` (its own pause), `batch`, `account` or `cluster` (intake)."""
    subscription_id: str | None = None
    """The subscription whose check created it (null: asked for directly)."""
    archive_id: str | None = None
    """The item's id in the account's download archive (`GET /archive`), once downloaded."""
    archived_by_job: str | None = None
    """A Skipped job's: the job that holds the item in the archive (fetched it before)."""
    next_try_at: int | None = None
    """While it waits for media not out yet (Pending, `error` saying so): when its download
    tries again (domain/not_ready.py)."""
    verified: str | None = None
    """How the output passed verification after the mux: `fast` or `full`; null: `verify:
    off`, not muxed yet, or muxed before outputs were verified."""
    sha256: str | None = None
    """The media file's SHA-256 (hex), once uploaded."""
    objects: list[ObjectView] = msgspec.field(default_factory=list)
    """Every object the job wrote, with its size and SHA-256."""
    loudness: LoudnessView | None = None
    """Measured by `normalize_audio` (null: not asked, or not muxed yet)."""
    storyboard_url: str | None = None
    """Links, like `s3_url`, to the storyboard's sprite sheet (JPEG) and its WebVTT file."""
    storyboard_vtt_url: str | None = None
    preview_url: str | None = None
    """A link to the preview clip (`preview_clip`)."""
    hls_url: str | None = None
    """A link, like `s3_url`, to the HLS package's master playlist (`hls`)."""


class JobPauseAnswer(msgspec.Struct):
    """What `POST /jobs/{id}/pause` and `/resume` answer."""

    job_id: str
    status: str
    paused: bool
    paused_by: PausedBy | None


class JobAction(msgspec.Struct):
    job_id: str
    status: str


class FileDeletedAnswer(msgspec.Struct):
    job_id: str
    deleted: bool
    key: str


class JobPage(msgspec.Struct):
    jobs: list[JobView]
    next_cursor: str | None


class LabelsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`PATCH /jobs/{id}`: each key given a string is set, each given null removed, the others
    kept."""

    labels: dict[str, str | None]


class LabelsAnswer(msgspec.Struct):
    job_id: str
    labels: dict[str, str]


_decode_labels = msgspec.json.Decoder(LabelsBody).decode


class EventView(msgspec.Struct):
    """One recorded event; `metadata` always has every field (actor, node_id, correlation_id,
    causation_id, request_id), null where the event's writer had none."""

    position: int
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: str


class EventPage(msgspec.Struct):
    job_id: str
    events: list[EventView]
    next_from_version: int | None


def _metadata(meta: Metadata) -> dict[str, Any]:
    return {name: getattr(meta, name) for name in meta.__struct_fields__}


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def _stage_ms(state: job.JobState, stage: str) -> int | None:
    timing = state.timings.get(stage)
    return None if timing is None or timing.seconds is None else int(timing.seconds * 1000)


def _mbps(state: job.JobState, stage: str) -> float | None:
    timing = state.timings.get(stage)
    if timing is None or not timing.seconds or not timing.bytes:
        return None
    return round(timing.bytes * 8 / timing.seconds / 1_000_000, 2)


class Links(msgspec.Struct):
    """HTTP(S) links to a completed job's files: presigned, SAS or signed Spool links."""

    media: str | None = None
    subtitle: str | None = None
    thumbnail: str | None = None
    storyboard: str | None = None
    storyboard_vtt: str | None = None
    preview: str | None = None
    hls: str | None = None


def view(
    state: job.JobState, links: Links | None = None, paused: Collection[pause.Scope] = ()
) -> JobView:
    """The public view of a job's state; `paused`: the scopes paused now (domain/pause.py)."""
    held_by = pause.paused_by(state, paused)
    created = _ms(state.created_at)
    assert created is not None
    p = state.progress
    # Timings are the current run's: after a retry, from the retry (earlier runs: the events).
    queued = _ms(state.queued_at)
    assert queued is not None
    started = _ms(state.started_at)
    finished = _ms(state.finished_at)
    loud = state.loudness
    return JobView(
        id=state.job_id,
        url=state.url,
        status=state.status,
        step=state.step,
        progress=ProgressView(p.stage, p.percent, p.bytes, p.total_bytes, p.speed, p.eta)
        if p is not None and state.status == "Processing"
        else None,
        s3_url=links.media if links else None,
        subtitle_url=links.subtitle if links else None,
        thumbnail_url=links.thumbnail if links else None,
        error=state.error,
        error_type=state.error_type,
        title=state.title,
        description=state.description,
        release_date=state.release_date,
        folder=state.options.folder,
        filename=state.options.filename,
        format=job.output_ext(state.options),
        batch_id=state.batch_id,
        file_size=state.file_size,
        file_deleted=state.file_deleted,
        storage_key=state.key,
        native_video_codec=state.native_video_codec,
        native_audio_codec=state.native_audio_codec,
        video_codec=state.video_codec,
        audio_codec=state.audio_codec,
        requested_quality=state.options.quality_preset or state.options.max_resolution,
        actual_quality=state.actual_quality,
        duration_seconds=state.duration,
        download_retries=state.retries.get("download", 0),
        mux_retries=state.retries.get("mux", 0),
        upload_retries=state.retries.get("upload", 0),
        queue_wait_ms=started - queued if started is not None else None,
        download_duration_ms=_stage_ms(state, "download"),
        mux_duration_ms=_stage_ms(state, "mux"),
        upload_duration_ms=_stage_ms(state, "upload"),
        total_duration_ms=finished - queued
        if finished is not None and state.status == "Completed"
        else None,
        download_speed_mbps=_mbps(state, "download"),
        upload_speed_mbps=_mbps(state, "upload"),
        webhook_status=state.webhook_status,
        created_at=created,
        finished_at=finished,
        labels=state.labels,
        priority=None
        if state.options.priority is None
        else fair_share.priority_word(state.options.priority),
        paused=held_by is not None,
        paused_by=held_by,
        subscription_id=state.subscription_id,
        archive_id=state.archive_id,
        archived_by_job=state.archived_by_job,
        next_try_at=_ms(state.next_try_at),
        verified=state.verification.mode if state.verification is not None else None,
        sha256=next((o.sha256 for o in state.objects if o.key == state.key), None),
        objects=[ObjectView(o.key, o.size, o.sha256, o.sha256_checked) for o in state.objects],
        loudness=None if loud is None else LoudnessView(loud.target, loud.before, loud.after),
        storyboard_url=links.storyboard if links else None,
        storyboard_vtt_url=links.storyboard_vtt if links else None,
        preview_url=links.preview if links else None,
        hls_url=links.hls if links else None,
    )


async def playlist_of(services: Services, principal: Principal, url: str) -> Playlist | None:
    """The entries if `url` is a playlist or feed; None for one piece of media.

    A probe (api/probes.py): 504 past `probe_timeout`, 429 past the account's share.
    """
    if looks_like_media(url):
        return None
    guard: UrlGuard = services.guard
    try:
        return await run_probe(
            services,
            principal.account_id,
            lambda probe: extract_playlist(url, guard=guard, probe=probe),
        )
    except DownloadFailed as exc:
        if exc.retryable:
            return None  # a passing fault: the download stage will try (and report) again
        raise JobApiError(status_code=400, detail=str(exc)) from None


async def load_job(services: Services, job_id: str, principal: Principal) -> job.JobState:
    """A job of the caller's, exact to its last event; 404 for anyone else's."""
    return await commands.owned_job(services.store, principal.account_id, job_id)


async def load_job_then(services: Services, job_id: str, raw_as_of: str) -> job.JobState:
    """An (owned) job as it stood at `as_of`; 400 for a bad `as_of`, 404 before the job."""
    try:
        as_of = parse_as_of(raw_as_of)
    except BadAsOf as exc:
        raise JobApiError(status_code=400, detail=str(exc)) from None
    then = await load_job_as_of(services.store, job_id, as_of)
    if then is None:
        raise JobApiError(status_code=404, detail=f"Job did not exist yet at as_of={raw_as_of}")
    return then


async def _links(services: Services, state: job.JobState) -> Links | None:
    """Links (24 h) to a completed job's files, unless they were deleted: the storage's own
    presigned or SAS URLs, or signed Spool links for a local folder (`adapters.file_links`)."""
    if state.status != "Completed" or state.key is None or state.file_deleted:
        return None
    storages: AccountStorages = services.storages
    settings: Settings = services.settings
    storage = await storages.for_job(state.account_id, state.storage_override)
    now = time.time()

    async def link(kind: str, key: str | None) -> str | None:
        if key is None:
            return None
        return await file_link(
            storage,
            job_id=state.job_id,
            kind=kind,
            object_key=key,
            public_url=settings.resolved_public_url(),
            key=services.links_key,
            now=now,
        )

    found = {kind: await link(kind, job.file_key(state, kind)) for kind in previews.KINDS}
    return Links(
        await link("media", state.key),
        await link("subtitle", state.subtitle_key),
        await link("thumbnail", state.thumbnail_key),
        **found,
        hls=await link("hls", state.hls_key),
    )


def page_cursor(created_at: datetime, job_id: str) -> str:
    """The cursor after a page's last row, by its time and id (jobs, archive items)."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_page_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(at), job_id
    except (ValueError, UnicodeDecodeError):
        raise JobApiError(status_code=400, detail="Invalid cursor") from None


class FailureGroupView(msgspec.Struct):
    """Failed jobs that failed the same way: `message` with hosts, URLs, ids, sizes and quoted
    names made placeholders (domain/failure_groups.py); times are ms since the epoch."""

    group_id: str
    error_type: str
    message: str
    count: int
    first_failed_at: int
    last_failed_at: int
    job_ids: list[str]


class FailuresAnswer(msgspec.Struct):
    groups: list[FailureGroupView]


def _since(raw: str) -> datetime:
    """`since`: ms since the epoch, or an ISO 8601 time (naive is UTC); 400 otherwise."""
    text = raw.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        at = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise JobApiError(
            status_code=400,
            detail="since: expected ms since the epoch or an ISO 8601 time such as "
            f"2026-12-01T10:00:00Z, got {raw!r}",
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _failure_view(g: job_rows.FailureGroup) -> FailureGroupView:
    first, last = _ms(g.first_failed_at), _ms(g.last_failed_at)
    assert first is not None and last is not None
    return FailureGroupView(
        group_id=g.group_id,
        error_type=g.error_type,
        message=failure_groups.normalise(g.message),
        count=g.job_count,
        first_failed_at=first,
        last_failed_at=last,
        job_ids=g.job_ids,
    )


class RetryBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /jobs/{id}/retry`'s optional body."""

    from_stage: job.Stage = "download"


def _retry_body(raw: bytes) -> RetryBody:
    """The retry's body (none: from download); a 400 naming what is wrong."""
    try:
        return msgspec.json.decode(raw.strip() or b"{}", type=RetryBody, strict=True)
    except msgspec.ValidationError as exc:
        detail = f"Invalid body: {exc}; from_stage is one of download, mux, upload"
        raise JobApiError(status_code=400, detail=detail) from None
    except msgspec.DecodeError as exc:
        raise JobApiError(status_code=400, detail=f"The body is not valid JSON: {exc}") from None


def _pause_answer(state: job.JobState) -> JobPauseAnswer:
    held_by = pause.paused_by(state)
    return JobPauseAnswer(state.job_id, state.status, held_by is not None, held_by)


MAX_VERSION = 2**31 - 1  # stream versions are PostgreSQL integers


class JobsController(Controller):
    path = "/jobs"
    tags = ["jobs"]

    @post("/", status_code=201)
    async def create_job(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: CreateJobBody,
        principal: Principal,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[JobCreatedAnswer | BatchCreatedAnswer]:
        """Create a download job; a playlist or feed URL creates a batch of its entries.

        With an `Idempotency-Key` header, sending the same request again answers what the
        first one got (with `Idempotent-Replayed: true`) and creates nothing more.
        """
        store: EventStore = services.store
        idem = await idempotency_of(request, principal, idempotency_key)
        if idem is not None and (earlier := await earlier_answer(store, idem)) is not None:
            return earlier
        # `data` documents the body; the raw body is decoded again strictly, so "23" is not 23.
        body = decode_create_job_body(await request.body())
        valid = validate_create_job(body)
        await refuse_forbidden_target(services, valid.url)
        if valid.options.webhook_url is not None:
            await refuse_forbidden_target(services, valid.options.webhook_url, what="webhook_url")
        meta = command_metadata(request, principal.key_id)
        playlist = await playlist_of(services, principal, valid.url)
        if body.paused and playlist is None:
            raise JobApiError(status_code=400, detail="paused is only for playlist or feed URLs")
        storage = (
            await job_storage(request, services, principal, body.storage) if body.storage else None
        )
        new = NewJob(url=valid.url, options=valid.options, storage=storage, labels=valid.labels)
        account_id = principal.account_id
        if playlist is not None:
            batch = await commands.create_playlist(
                store, account_id, new, playlist, paused=body.paused, idem=idem, meta=meta
            )
            return created(*batch)
        return created(*await commands.create_job(store, account_id, new, idem, meta))

    @post("/bulk", status_code=201, opt=reads_body("jobs"))
    async def create_jobs_in_bulk(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: dict[str, Any],
        principal: Principal,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[BulkAnswer]:
        """Create up to 100 jobs at once: `{"jobs": [{"url", "filename"?}], <shared options>}`.

        All jobs or none: one invalid item rejects the request, naming its index.
        """
        return await create_bulk(request, services, principal, idempotency_key)

    @get("/{job_id:str}")
    async def get_job(
        self,
        services: Services,
        job_id: str,
        principal: Principal,
        as_of: str | None = None,
    ) -> JobView:
        """Get a job's status, with an HTTP(S) `s3_url` (24 h) once it is Completed.

        `progress` is the running stage's latest, as its node sent it at its last heartbeat.

        `as_of` (an event position, or an ISO 8601 time) answers the job as it stood then,
        folded from its events, without links to its files.
        """
        state = await load_job(services, job_id, principal)
        if as_of is None:
            if state.status == "Processing":  # no other job shows progress
                live = await live_progress.of_job(
                    services.pool, state.job_id, live_progress.fresh_within(services.settings)
                )
                state = live_progress.shown(state, live)
            paused = await pauses.paused_scopes(services.pool, [state])
            return view(state, await _links(services, state), paused)
        return view(await load_job_then(services, state.job_id, as_of))

    @delete("/{job_id:str}", status_code=200)
    async def cancel_job(
        self, request: Request[Any, Any, Any], services: Services, job_id: str, principal: Principal
    ) -> JobAction:
        """Cancel a Pending or Processing job; a running stage is aborted and its files removed."""
        meta = command_metadata(request, principal.key_id)
        state = await commands.cancel_job(services.store, principal.account_id, job_id, meta)
        return JobAction(job_id=state.job_id, status=state.status)

    @post("/{job_id:str}/retry", status_code=200, opt=READS_BODY)
    async def retry_job(
        self, request: Request[Any, Any, Any], services: Services, job_id: str, principal: Principal
    ) -> JobAction:
        """Start a Failed or Cancelled job again (within `max_running_jobs`): from download, or
        with `{"from_stage": "mux"|"upload"}` from the files its last run left on its node,
        without downloading again. 409 when that node is not online; should the node find the
        files gone, the stage fails saying so, and a retry from download is what is left."""
        from_stage = _retry_body(await request.body()).from_stage
        if from_stage != "download":
            owned = await load_job(services, job_id, principal)  # 404 for anyone else's
            node_id = owned.node_id
            if node_id is not None and not await node_rows.is_online(services.pool, node_id):
                raise JobApiError(
                    status_code=409,
                    detail=f"Node {node_id}, which holds this job's files, is not online; "
                    "retry from download",
                )
        meta = command_metadata(request, principal.key_id)
        state = await commands.retry_job(
            services.store, principal.account_id, job_id, meta, from_stage
        )
        return JobAction(job_id=state.job_id, status=state.status)

    @delete("/{job_id:str}/file", status_code=200)
    async def delete_file(
        self, request: Request[Any, Any, Any], services: Services, job_id: str, principal: Principal
    ) -> FileDeletedAnswer:
        """Delete a completed job's file from storage; the job records that it is gone."""
        storages: AccountStorages = services.storages
        meta = command_metadata(request, principal.key_id)
        # Its rendition is dropped where every deleted file's is (api/deleted_files.py).
        async with services.media.deleting(job_id):
            state = await commands.delete_job_file(
                services.store, storages, principal.account_id, job_id, meta
            )
        return FileDeletedAnswer(job_id=state.job_id, deleted=True, key=state.key or "")

    @post("/{job_id:str}/pause", status_code=200)
    async def pause_job(
        self, request: Request[Any, Any, Any], services: Services, job_id: str, principal: Principal
    ) -> JobPauseAnswer:
        """Pause a job: a running stage finishes and the next does not start until it is
        resumed; a job that has not started stays Pending. A finished job answers 409."""
        meta = command_metadata(request, principal.key_id)
        state = await commands.pause_job(services.store, principal.account_id, job_id, meta)
        return _pause_answer(state)

    @post("/{job_id:str}/resume", status_code=200)
    async def resume_job(
        self, request: Request[Any, Any, Any], services: Services, job_id: str, principal: Principal
    ) -> JobPauseAnswer:
        """Lift a job's own pause: the stage it waits for is dispatched. A job still held by
        its batch's, its account's or the cluster's pause says so in `paused_by`."""
        meta = command_metadata(request, principal.key_id)
        state = await commands.resume_job(services.store, principal.account_id, job_id, meta)
        return _pause_answer(state)

    @get("/", dependencies={"wanted": Provide(query_of_params, sync_to_thread=False)})
    async def list_jobs(
        self,
        services: Services,
        principal: Principal,
        wanted: JobQuery,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """The caller's jobs, newest first; pass `next_cursor` as `cursor` for the next page
        (with the same filters).

        Filters, all of which must match: `status` (repeatable or comma-separated: any of
        them), `batch_id`, `label=key=value` (repeatable: every pair), `host` (the source URL's
        host), `created_after` / `created_before`, `finished_after` / `finished_before` (ISO
        8601 or ms since the epoch; after inclusive, before exclusive), `error_type`, `error`
        (text the error contains), `q` (text the title, file name or URL contains; both
        case-insensitive), `failure_group` (a `group_id` of `GET /jobs/failures`) and
        `subscription_id` (the jobs a subscription's checks created).
        """
        after = parse_page_cursor(cursor) if cursor else None
        found = await job_rows.page(
            services.pool,
            principal.account_id,
            wanted,
            after=after,
            limit=limit,
            live_within=live_progress.fresh_within(services.settings),
        )
        paused = await pauses.paused_scopes(services.pool, found.states)
        return JobPage(
            jobs=[view(state, paused=paused) for state in found.states],
            next_cursor=page_cursor(*found.last) if found.more and found.last else None,
        )

    @get("/{job_id:str}/events")
    async def job_events(
        self,
        services: Services,
        job_id: str,
        principal: Principal,
        from_version: Annotated[int, Parameter(ge=1, le=MAX_VERSION)] = 1,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> EventPage:
        """A job's full event history, oldest first: the audit trail."""
        jid = (await load_job(services, job_id, principal)).job_id
        store: EventStore = services.store
        events = await store.read_stream(job.stream_id(jid), from_version, limit=limit + 1)
        page = events[:limit]
        return EventPage(
            job_id=jid,
            events=[
                EventView(
                    position=e.position,
                    version=e.version,
                    type=e.type,
                    schema_version=e.schema_version,
                    data=_to_builtins(e.data),
                    metadata=_metadata(e.metadata),
                    recorded_at=e.recorded_at.isoformat(),
                )
                for e in page
            ],
            next_from_version=page[-1].version + 1 if len(events) > limit else None,
        )

    @patch("/{job_id:str}", status_code=200)
    async def label_job(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        job_id: str,
        principal: Principal,
        data: LabelsBody,
    ) -> LabelsAnswer:
        """Change a job's labels: `{"labels": {"key": "value", "gone": null}}` sets `key`,
        removes `gone` and keeps every other label; recorded as a `JobLabelled` event."""
        try:
            body = _decode_labels(await request.body())  # strictly: `1` is not "1"
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise JobApiError(status_code=400, detail=f"Invalid body: {exc}") from None
        meta = command_metadata(request, principal.key_id)
        state = await commands.label_job(
            services.store, principal.account_id, job_id, body.labels, meta
        )
        return LabelsAnswer(job_id=state.job_id, labels=state.labels)

    @get("/failures")
    async def job_failures(
        self,
        services: Services,
        principal: Principal,
        since: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        all_accounts: bool = False,
    ) -> FailuresAnswer:
        """Why jobs fail: the caller's Failed jobs grouped by error type and normalised message
        (hosts, URLs, ids, sizes stripped), most jobs first, each with its count, first and
        last failure, up to 5 job ids and its `group_id`. A retried job leaves its group.

        `since` (ms since the epoch or ISO 8601) counts only jobs that failed since then;
        `all_accounts=true` (an admin key only) groups every account's jobs.
        """
        if all_accounts and not principal.admin:
            raise JobApiError(status_code=403, detail="all_accounts needs an admin key")
        found = await job_rows.failures(
            services.pool,
            None if all_accounts else principal.account_id,
            since=_since(since) if since is not None else None,
            limit=limit,
        )
        return FailuresAnswer(groups=[_failure_view(g) for g in found])
