"""Bulk jobs and batches (seed 002): create many jobs at once, pause, rename, start, cancel."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post

from spool.adapters.event_store import EventStore
from spool.adapters.history import AsOf, read_stream_as_of
from spool.adapters.job_store import load_job_as_of
from spool.api.as_of import BadAsOf, parse_as_of
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.idempotency import created, earlier_answer, idempotency_of
from spool.api.job_requests import CreateJobBody, validate_create_job, validate_filename
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.api.targets import refuse_forbidden_target
from spool.api.user import sealed_storage, storage_spec
from spool.application import batches as commands
from spool.application.batches import RenameAnswer, batch_jobs, owned_batch
from spool.application.jobs import NewJob
from spool.domain import batch, job
from spool.domain.storage_config import StorageConfigured

MAX_BULK = 100


class BatchJob(msgspec.Struct):
    id: str
    status: str
    step: str
    title: str | None
    filename: str | None
    error: str | None


class BatchView(msgspec.Struct):
    batch_id: str
    kind: str
    status: str
    title: str | None
    source_url: str | None
    total_jobs: int
    counts: dict[str, int]
    progress: float
    jobs: list[BatchJob]
    paused: bool = False
    """Whether its jobs that have not started wait: created paused, or paused after its start."""


class BatchPauseAnswer(msgspec.Struct):
    """What `POST /batch/{id}/pause` and `/resume` answer."""

    batch_id: str
    status: str
    paused: bool


def _paused(state: batch.BatchState) -> bool:
    return state.status == "paused" or state.paused


class Rename(msgspec.Struct, forbid_unknown_fields=True):
    job_id: str
    filename: str


class Renames(msgspec.Struct, forbid_unknown_fields=True):
    renames: list[Rename]


class StartAnswer(msgspec.Struct):
    batch_id: str
    started_jobs: int
    status: str


class CancelAnswer(msgspec.Struct):
    batch_id: str
    cancelled_jobs: int
    status: str


def _bulk_items(raw: bytes) -> tuple[list[CreateJobBody], bool]:
    """Each item of a bulk body merged with the shared options, decoded strictly."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise JobApiError(status_code=400, detail=f"Invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise JobApiError(status_code=400, detail="Expected a JSON object with `jobs`")
    items = body.pop("jobs", None)
    if not isinstance(items, list) or not items:
        raise JobApiError(status_code=400, detail="`jobs` must be a non-empty list")
    if len(items) > MAX_BULK:
        raise JobApiError(status_code=400, detail=f"Too many jobs (max {MAX_BULK} per request)")
    paused = body.pop("paused", False)
    if not isinstance(paused, bool):
        raise JobApiError(status_code=400, detail="`paused` must be true or false")
    unknown_shared = sorted(set(body) - set(CreateJobBody.__struct_fields__))
    if unknown_shared:
        raise JobApiError(
            status_code=400, detail=f"Object contains unknown field `{unknown_shared[0]}`"
        )
    bodies = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: expected an object")
        unknown = set(item) - {"url", "filename", "labels"}
        if unknown:
            raise JobApiError(
                status_code=400,
                detail=f"jobs[{index}]: only url, filename and labels may be set per item "
                f"(got {', '.join(sorted(unknown))})",
            )
        merged = {**body, **item}
        # The request's labels go on every job, an item's own on top of them.
        if isinstance(body.get("labels"), dict) and isinstance(item.get("labels"), dict):
            merged["labels"] = {**body["labels"], **item["labels"]}
        try:
            bodies.append(msgspec.convert(merged, CreateJobBody, strict=True))
        except msgspec.ValidationError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc}") from None
    return bodies, paused


async def load_batch(services: Services, batch_id: str, principal: Principal) -> batch.BatchState:
    """A batch of the caller's; 404 for anyone else's."""
    return await owned_batch(services.store, principal.account_id, batch_id)


async def batch_then(
    store: EventStore, batch_id: str, raw_as_of: str
) -> tuple[batch.BatchState, list[job.JobState]]:
    """An (owned) batch and its jobs as they stood at `as_of`; 400 / 404 as the job API does."""
    try:
        as_of: AsOf = parse_as_of(raw_as_of)
    except BadAsOf as exc:
        raise JobApiError(status_code=400, detail=str(exc)) from None
    events = await read_stream_as_of(store, batch.stream_id(batch_id), as_of)
    state = batch.fold([(e.data, e.recorded_at, e.version) for e in events])
    if state is None:
        raise JobApiError(status_code=404, detail=f"Batch did not exist yet at as_of={raw_as_of}")
    found = [await load_job_as_of(store, job_id, as_of) for job_id in state.job_ids]
    return state, [j for j in found if j is not None]


class BatchController(Controller):
    path = "/batch"
    tags = ["batches"]

    @get("/{batch_id:str}")
    async def get_batch(
        self,
        services: Services,
        batch_id: str,
        principal: Principal,
        as_of: str | None = None,
    ) -> BatchView:
        """A batch's status, job counts by status, progress, and its jobs.

        `as_of` (an event position, or an ISO 8601 time) answers the batch and its jobs as they
        stood then.
        """
        state = await load_batch(services, batch_id, principal)
        store: EventStore = services.store
        if as_of is None:
            jobs = await batch_jobs(store, state)
        else:
            state, jobs = await batch_then(store, state.batch_id, as_of)
        shown = batch.summarize(state, [batch.facts_of(j) for j in jobs])
        return BatchView(
            batch_id=state.batch_id,
            kind=state.kind,
            status=shown.status,
            title=state.title,
            source_url=state.source_url,
            total_jobs=len(state.job_ids),
            counts={s: n for s, n in shown.counts.items() if n},  # zeros left out, as always
            progress=shown.progress,
            jobs=[
                BatchJob(
                    id=j.job_id,
                    status=j.status,
                    step=j.step,
                    title=j.title,
                    filename=j.options.filename,
                    error=j.error,
                )
                for j in jobs
            ],
            paused=_paused(state),
        )

    @patch("/{batch_id:str}/jobs", status_code=200)
    async def rename_jobs(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        data: Renames,
        principal: Principal,
    ) -> RenameAnswer:
        """Rename jobs of a paused batch: `{"renames": [{"job_id", "filename"}]}`."""
        renames: list[commands.JobRename] = []
        for r in data.renames:
            try:
                renames.append(commands.JobRename(r.job_id, validate_filename(r.filename)))
            except JobApiError as exc:
                renames.append(commands.JobRename(r.job_id, r.filename, refused=str(exc.detail)))
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        return await commands.rename_jobs(store, principal.account_id, batch_id, renames, meta)

    @post("/{batch_id:str}/start", status_code=200)
    async def start_batch(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> StartAnswer:
        """Start a paused batch: its jobs begin downloading."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        started = await commands.start_batch(store, principal.account_id, batch_id, meta)
        return StartAnswer(started.batch_id, started_jobs=started.jobs, status="processing")

    @post("/{batch_id:str}/pause", status_code=200)
    async def pause_batch(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> BatchPauseAnswer:
        """Pause a started batch: its jobs that have not started do not start until it is
        resumed; running ones go on to the end. A cancelled batch answers 409."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        state = await commands.pause_batch(store, principal.account_id, batch_id, meta)
        return BatchPauseAnswer(state.batch_id, state.status, _paused(state))

    @post("/{batch_id:str}/resume", status_code=200)
    async def resume_batch(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> BatchPauseAnswer:
        """Resume a batch paused after its start: its waiting jobs are dispatched. A batch
        created paused is started with `POST /batch/{id}/start` instead (400)."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        state = await commands.resume_batch(store, principal.account_id, batch_id, meta)
        return BatchPauseAnswer(state.batch_id, state.status, _paused(state))

    @delete("/{batch_id:str}", status_code=200)
    async def cancel_batch(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> CancelAnswer:
        """Cancel a batch: every unfinished job of it is cancelled."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        cancelled = await commands.cancel_batch(store, principal.account_id, batch_id, meta)
        return CancelAnswer(cancelled.batch_id, cancelled_jobs=cancelled.jobs, status="cancelled")


async def job_storage(
    request: Request[Any, Any, Any], services: Services, principal: Principal, raw: dict[str, Any]
) -> StorageConfigured:
    """A job's own `storage`: parsed like `/user/...`, checked with a probe, credentials sealed."""
    return await sealed_storage(services, principal, *storage_spec(raw))


async def create_bulk(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    idempotency_key: str | None,
) -> Response[Any]:
    """`POST /jobs/bulk`: all jobs or none; a bad item names its index."""
    store: EventStore = services.store
    idem = await idempotency_of(request, principal, idempotency_key)
    if idem is not None and (earlier := await earlier_answer(store, idem)) is not None:
        return earlier
    bodies, paused = _bulk_items(await request.body())
    valid: list[NewJob] = []
    for index, body in enumerate(bodies):
        try:
            checked = validate_create_job(body)
        except JobApiError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc.detail}") from None
        valid.append(NewJob(url=checked.url, options=checked.options, labels=checked.labels))
    for index, new in enumerate(valid):
        try:
            await refuse_forbidden_target(services, new.url)
            if new.options.webhook_url is not None:
                hook = new.options.webhook_url
                await refuse_forbidden_target(services, hook, what="webhook_url")
        except JobApiError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc.detail}") from None
    # One storage for the whole request (a shared option): checked and sealed once.
    shared = bodies[0].storage
    if shared is not None:
        sealed = await job_storage(request, services, principal, shared)
        valid = [msgspec.structs.replace(v, storage=sealed) for v in valid]
    meta = command_metadata(request, principal.key_id)
    made = await commands.create_bulk(
        store, principal.account_id, valid, paused=paused, idem=idem, meta=meta
    )
    return created(*made)
