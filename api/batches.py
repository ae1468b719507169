"""Bulk jobs and batches (seed 002): create many jobs at once, pause, rename, start, cancel."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import Provide

from spool.adapters import batch_store
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.history import AsOf
from spool.adapters.job_store import JobChangingTooFast, decide_and_append, load_job, load_job_as_of
from spool.api.as_of import BadAsOf, parse_as_of
from spool.api.auth import Principal, job_api_principal
from spool.api.errors import JOB_API_ERRORS, JobApiError
from spool.api.idempotency import commit, earlier_answer, idempotency_of
from spool.api.job_requests import (
    CreateJobBody,
    ValidJob,
    validate_create_job,
    validate_filename,
)
from spool.api.requests import command_metadata
from spool.api.targets import refuse_forbidden_target
from spool.api.user import sealed_storage, storage_spec
from spool.domain import batch, job
from spool.domain.errors import ConcurrencyError, InvalidTransition
from spool.domain.events import Metadata, NewEvent
from spool.domain.storage_config import StorageConfigured

MAX_BULK = 100


class Episode(msgspec.Struct):
    job_id: str
    title: str | None
    url: str


class BatchCreatedAnswer(msgspec.Struct):
    """What `POST /jobs` answers for a playlist or feed URL."""

    batch_id: str
    total_episodes: int
    episode_jobs: list[Episode]


class BulkAnswer(msgspec.Struct):
    batch_id: str
    total_jobs: int
    job_ids: list[str]


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


class Rename(msgspec.Struct, forbid_unknown_fields=True):
    job_id: str
    filename: str


class Renames(msgspec.Struct, forbid_unknown_fields=True):
    renames: list[Rename]


class RenameError(msgspec.Struct):
    job_id: str
    error: str


class RenameAnswer(msgspec.Struct):
    updated: int
    errors: list[RenameError]


class StartAnswer(msgspec.Struct):
    batch_id: str
    started_jobs: int
    status: str


class CancelAnswer(msgspec.Struct):
    batch_id: str
    cancelled_jobs: int
    status: str


class NewJob(msgspec.Struct, frozen=True):
    """One job of a batch about to be created."""

    valid: ValidJob
    title: str | None = None
    storage: StorageConfigured | None = None


class BatchPlan(NamedTuple):
    """A new batch's id, its jobs' ids, and the appends that create them."""

    batch_id: str
    job_ids: list[str]
    appends: list[StreamAppend]


def plan_batch(
    meta: Metadata,
    principal: Principal,
    jobs: list[NewJob],
    *,
    kind: batch.BatchKind,
    paused: bool,
    source_url: str | None = None,
    title: str | None = None,
) -> BatchPlan:
    """A batch and all its jobs, to be appended in one transaction: all of them, or none."""
    batch_id = str(uuid.uuid4())
    job_ids = [str(uuid.uuid4()) for _ in jobs]
    appends = [
        StreamAppend(
            job.stream_id(job_id),
            [
                NewEvent(e, meta)
                for e in job.create(
                    job_id=job_id,
                    account_id=principal.account_id,
                    url=new.valid.url,
                    options=new.valid.options,
                    batch_id=batch_id,
                    held=paused,
                    title=new.title,
                    storage=new.storage,
                )
            ],
            0,
        )
        for job_id, new in zip(job_ids, jobs, strict=True)
    ]
    created = batch.BatchCreated(
        batch_id=batch_id,
        account_id=principal.account_id,
        kind=kind,
        job_ids=job_ids,
        paused=paused,
        source_url=source_url,
        title=title,
    )
    appends.append(StreamAppend(batch.stream_id(batch_id), [NewEvent(created, meta)], 0))
    return BatchPlan(batch_id, job_ids, appends)


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
        unknown = set(item) - {"url", "filename"}
        if unknown:
            raise JobApiError(
                status_code=400,
                detail=f"jobs[{index}]: only url and filename may be set per item "
                f"(got {', '.join(sorted(unknown))})",
            )
        try:
            bodies.append(msgspec.convert({**body, **item}, CreateJobBody, strict=True))
        except msgspec.ValidationError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc}") from None
    return bodies, paused


async def load_batch(
    request: Request[Any, Any, Any], batch_id: str, principal: Principal
) -> batch.BatchState:
    """A batch of the caller's; 404 for anyone else's."""
    try:
        bid = str(uuid.UUID(batch_id))
    except ValueError:
        raise JobApiError(status_code=404, detail="Batch not found") from None
    store: EventStore = request.app.state.store
    state = await batch_store.load_batch(store, bid)
    if state is None or state.account_id != principal.account_id:
        raise JobApiError(status_code=404, detail="Batch not found")
    return state


async def batch_jobs(store: EventStore, state: batch.BatchState) -> list[job.JobState]:
    """The batch's jobs, each exact to its last event."""
    found = [await load_job(store, job_id) for job_id in state.job_ids]
    return [j for j in found if j is not None]


async def batch_then(
    store: EventStore, batch_id: str, raw_as_of: str
) -> tuple[batch.BatchState, list[job.JobState]]:
    """An (owned) batch and its jobs as they stood at `as_of`; 400 / 404 as the job API does."""
    try:
        as_of: AsOf = parse_as_of(raw_as_of)
    except BadAsOf as exc:
        raise JobApiError(status_code=400, detail=str(exc)) from None
    state = await batch_store.load_batch(store, batch_id, as_of)
    if state is None:
        raise JobApiError(status_code=404, detail=f"Batch did not exist yet at as_of={raw_as_of}")
    found = [await load_job_as_of(store, job_id, as_of) for job_id in state.job_ids]
    return state, [j for j in found if j is not None]


class BatchController(Controller):
    path = "/batch"
    dependencies = {"principal": Provide(job_api_principal)}
    exception_handlers = JOB_API_ERRORS  # type: ignore[assignment]
    tags = ["batches"]

    @get("/{batch_id:str}")
    async def get_batch(
        self,
        request: Request[Any, Any, Any],
        batch_id: str,
        principal: Principal,
        as_of: str | None = None,
    ) -> BatchView:
        """A batch's status, job counts by status, progress, and its jobs.

        `as_of` (an event position, or an ISO 8601 time) answers the batch and its jobs as they
        stood then.
        """
        state = await load_batch(request, batch_id, principal)
        store: EventStore = request.app.state.store
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
        )

    @patch("/{batch_id:str}/jobs", status_code=200)
    async def rename_jobs(
        self, request: Request[Any, Any, Any], batch_id: str, data: Renames, principal: Principal
    ) -> RenameAnswer:
        """Rename jobs of a paused batch: `{"renames": [{"job_id", "filename"}]}`."""
        state = await load_batch(request, batch_id, principal)
        try:
            batch.require_paused_for_rename(state)
        except InvalidTransition as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
        store: EventStore = request.app.state.store
        meta = command_metadata(request, principal.key_id)
        errors: list[RenameError] = []
        updated = 0
        members = set(state.job_ids)
        for r in data.renames:
            if r.job_id not in members:
                errors.append(RenameError(r.job_id, "Job is not in this batch"))
                continue
            try:
                filename = validate_filename(r.filename)
            except JobApiError as exc:
                errors.append(RenameError(r.job_id, str(exc.detail)))
                continue
            if await _append_decided(store, meta, r.job_id, lambda s, f=filename: job.rename(s, f)):
                updated += 1
            else:
                errors.append(RenameError(r.job_id, "Job is no longer waiting in the batch"))
        return RenameAnswer(updated=updated, errors=errors)

    @post("/{batch_id:str}/start", status_code=200)
    async def start_batch(
        self, request: Request[Any, Any, Any], batch_id: str, principal: Principal
    ) -> StartAnswer:
        """Start a paused batch: its jobs begin downloading."""
        state = await load_batch(request, batch_id, principal)
        store: EventStore = request.app.state.store
        meta = command_metadata(request, principal.key_id)
        try:
            held = await batch_store.start_batch(store, state.batch_id, meta)
        except InvalidTransition as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
        except ConcurrencyError:
            raise JobApiError(
                status_code=409, detail="The batch changed meanwhile; try again"
            ) from None
        return StartAnswer(batch_id=state.batch_id, started_jobs=len(held), status="processing")

    @delete("/{batch_id:str}", status_code=200)
    async def cancel_batch(
        self, request: Request[Any, Any, Any], batch_id: str, principal: Principal
    ) -> CancelAnswer:
        """Cancel a batch: every unfinished job of it is cancelled."""
        state = await load_batch(request, batch_id, principal)
        store: EventStore = request.app.state.store
        meta = command_metadata(request, principal.key_id)
        cancelled = 0
        for job_id in state.job_ids:
            if await _append_decided(store, meta, job_id, job.cancel):
                cancelled += 1
        try:
            await batch_store.cancel_batch(store, state.batch_id, cancelled, meta)
        except InvalidTransition as exc:
            raise JobApiError(status_code=400, detail=str(exc)) from None
        except ConcurrencyError:
            raise JobApiError(
                status_code=409, detail="The batch changed meanwhile; try again"
            ) from None
        return CancelAnswer(batch_id=state.batch_id, cancelled_jobs=cancelled, status="cancelled")


async def _append_decided(store: EventStore, meta: Metadata, job_id: str, decide: Any) -> bool:
    """Whether the command (cancel, rename: they refuse rather than do nothing) was recorded."""
    try:
        return await decide_and_append(store, job_id, decide, meta) is not None
    except (InvalidTransition, JobChangingTooFast):
        return False


async def job_storage(
    request: Request[Any, Any, Any], principal: Principal, raw: dict[str, Any]
) -> StorageConfigured:
    """A job's own `storage`: parsed like `/user/...`, checked with a probe, credentials sealed."""
    return await sealed_storage(request, principal, *storage_spec(raw))


async def create_bulk(
    request: Request[Any, Any, Any], principal: Principal, idempotency_key: str | None
) -> Response[Any]:
    """`POST /jobs/bulk`: all jobs or none; a bad item names its index."""
    store: EventStore = request.app.state.store
    idem = await idempotency_of(request, principal, idempotency_key)
    if idem is not None and (earlier := await earlier_answer(store, idem)) is not None:
        return earlier
    bodies, paused = _bulk_items(await request.body())
    valid: list[NewJob] = []
    for index, body in enumerate(bodies):
        try:
            valid.append(NewJob(validate_create_job(body)))
        except JobApiError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc.detail}") from None
    for index, new in enumerate(valid):
        try:
            await refuse_forbidden_target(request, new.valid.url)
            if new.valid.options.webhook_url is not None:
                hook = new.valid.options.webhook_url
                await refuse_forbidden_target(request, hook, what="webhook_url")
        except JobApiError as exc:
            raise JobApiError(status_code=400, detail=f"jobs[{index}]: {exc.detail}") from None
    # One storage for the whole request (a shared option): checked and sealed once.
    shared = bodies[0].storage
    if shared is not None:
        sealed = await job_storage(request, principal, shared)
        valid = [msgspec.structs.replace(v, storage=sealed) for v in valid]
    meta = command_metadata(request, principal.key_id)
    plan = plan_batch(meta, principal, valid, kind="bulk", paused=paused)
    answer = BulkAnswer(batch_id=plan.batch_id, total_jobs=len(plan.job_ids), job_ids=plan.job_ids)
    return await commit(store, plan.appends, answer, idem, meta, quota_account=principal.account_id)
