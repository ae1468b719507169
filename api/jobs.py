"""The job API (seed 002): create, read and list jobs, and read a job's event history."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.params import Parameter

from adapters.event_store import EventStore
from api.auth import Principal, job_api_principal
from api.errors import JOB_API_ERRORS, JobApiError
from api.requests import command_metadata
from domain import job
from domain.events import NewEvent

_decode_state = msgspec.json.Decoder(job.JobState).decode
_to_builtins = msgspec.to_builtins


class CreateJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Body of `POST /jobs`."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    format: str | None = None
    filename: str | None = None
    folder: str | None = None


class JobCreatedAnswer(msgspec.Struct):
    job_id: str


class JobView(msgspec.Struct, omit_defaults=False):
    """A job as `GET /jobs/{id}` shows it; times are ms since the epoch."""

    id: str
    url: str
    status: str
    step: str
    batch_id: str | None
    folder: str | None
    filename: str | None
    format: str | None
    s3_url: str | None
    error: str | None
    error_type: str | None
    created_at: int
    finished_at: int | None


class JobPage(msgspec.Struct):
    jobs: list[JobView]
    next_cursor: str | None


class EventView(msgspec.Struct):
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


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def view(state: job.JobState) -> JobView:
    """The public view of a job's state."""
    created = _ms(state.created_at)
    assert created is not None
    return JobView(
        id=state.job_id,
        url=state.url,
        status=state.status,
        step=state.step,
        batch_id=state.batch_id,
        folder=state.options.folder,
        filename=state.options.filename,
        format=state.options.format,
        s3_url=None,
        error=state.error,
        error_type=state.error_type,
        created_at=created,
        finished_at=_ms(state.finished_at),
    )


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobApiError(status_code=400, detail="Invalid URL: expected an http(s) URL")
    return url.strip()


def _job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise JobApiError(status_code=404, detail="Job not found") from None


async def load_job(
    request: Request[Any, Any, Any], job_id: str, principal: Principal
) -> job.JobState:
    """A job of the caller's: from the projection, else folded from its stream.

    The fold answers for a job created a moment ago that the projection has not reached yet.
    """
    state: Any = request.app.state
    row = await state.pool.fetchrow("SELECT state FROM jobs WHERE job_id = $1", job_id)
    found: job.JobState | None
    if row is not None:
        found = _decode_state(row[0])
    else:
        store: EventStore = state.store
        events = await store.read_stream(job.stream_id(job_id))
        found = job.fold([(e.data, e.recorded_at, e.version) for e in events])
    if found is None or found.account_id != principal.account_id:
        raise JobApiError(status_code=404, detail="Job not found")
    return found


def _cursor(created_at: datetime, job_id: str) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(at), job_id
    except (ValueError, UnicodeDecodeError):
        raise JobApiError(status_code=400, detail="Invalid cursor") from None


StatusFilter = Literal["Pending", "Processing", "Completed", "Failed", "Cancelled"]


class JobsController(Controller):
    path = "/jobs"
    dependencies = {"principal": Provide(job_api_principal)}
    exception_handlers = JOB_API_ERRORS  # type: ignore[assignment]
    tags = ["jobs"]

    @post("/", status_code=201)
    async def create_job(
        self, request: Request[Any, Any, Any], data: CreateJob, principal: Principal
    ) -> JobCreatedAnswer:
        """Create a download job."""
        url = _check_url(data.url)
        job_id = str(uuid.uuid4())
        options = job.JobOptions(format=data.format, filename=data.filename, folder=data.folder)
        events = job.create(
            job_id=job_id, account_id=principal.account_id, url=url, options=options
        )
        meta = command_metadata(request, principal.key_id)
        store: EventStore = request.app.state.store
        await store.append(job.stream_id(job_id), [NewEvent(e, meta) for e in events], 0)
        return JobCreatedAnswer(job_id=job_id)

    @get("/{job_id:str}")
    async def get_job(
        self, request: Request[Any, Any, Any], job_id: str, principal: Principal
    ) -> JobView:
        """Get a job's status."""
        return view(await load_job(request, _job_id(job_id), principal))

    @get("/")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        status: StatusFilter | None = None,
        batch_id: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """The caller's jobs, newest first; pass `next_cursor` as `cursor` for the next page."""
        after = _parse_cursor(cursor) if cursor else None
        rows = await request.app.state.pool.fetch(
            """
            SELECT state, created_at, job_id FROM jobs
            WHERE account_id = $1
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR batch_id = $3)
              AND ($4::timestamptz IS NULL OR (created_at, job_id) < ($4, $5))
            ORDER BY created_at DESC, job_id DESC
            LIMIT $6
            """,
            principal.account_id,
            status,
            batch_id,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
        page = rows[:limit]
        more = len(rows) > limit
        return JobPage(
            jobs=[view(_decode_state(r[0])) for r in page],
            next_cursor=_cursor(page[-1][1], page[-1][2]) if more else None,
        )

    @get("/{job_id:str}/events")
    async def job_events(
        self,
        request: Request[Any, Any, Any],
        job_id: str,
        principal: Principal,
        from_version: Annotated[int, Parameter(ge=1)] = 1,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> EventPage:
        """A job's full event history, oldest first: the audit trail."""
        jid = _job_id(job_id)
        await load_job(request, jid, principal)
        store: EventStore = request.app.state.store
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
                    metadata=_to_builtins(e.metadata),
                    recorded_at=e.recorded_at.isoformat(),
                )
                for e in page
            ],
            next_from_version=page[-1].version + 1 if len(events) > limit else None,
        )
