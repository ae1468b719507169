"""Bulk actions by query (issue 24, Deliver 3): `POST /jobs/actions` asks for an operation over
the jobs a filter matches and answers at once; `GET /operations/{id}` shows how far it is and
the jobs it touched. The work is done by the operations runner (reactors/operations.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, get_args

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter

from spool.adapters.event_store import EventStore
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.job_filters import query_of_body
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application.operations import Asked, request_operation, visible_operation
from spool.domain import operation

ACTION_NAMES: tuple[str, ...] = get_args(operation.Action)


class ActionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /jobs/actions`: an action, a filter (`GET /jobs`'s filters; `labels` an object),
    `dry_run` to count only; an admin key may add `all_accounts` or an `account_id`."""

    action: str
    filter: dict[str, Any] = msgspec.field(default_factory=dict)
    dry_run: bool = False
    all_accounts: bool = False
    account_id: str | None = None


class OperationCounts(msgspec.Struct):
    matched: int
    done: int
    skipped: int
    failed: int


class TouchedJob(msgspec.Struct):
    """A job the operation handled: `outcome` done, skipped or failed, and why."""

    job_id: str
    outcome: str
    reason: str | None


class OperationView(msgspec.Struct, omit_defaults=False):
    """An operation as `GET /operations/{id}` shows it; times are ms since the epoch."""

    operation_id: str
    action: str
    status: str
    dry_run: bool
    filter: dict[str, Any]
    all_accounts: bool
    counts: OperationCounts
    created_at: int
    finished_at: int | None
    jobs: list[TouchedJob]
    next_after: int | None


_decode_body = msgspec.json.Decoder(ActionBody).decode


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def _touched(e: msgspec.Struct) -> TouchedJob | None:
    if isinstance(e, operation.OperationJobDone):
        return TouchedJob(job_id=e.job_id, outcome="done", reason=None)
    if isinstance(e, operation.OperationJobSkipped):
        return TouchedJob(job_id=e.job_id, outcome="skipped", reason=e.reason)
    if isinstance(e, operation.OperationJobFailed):
        return TouchedJob(job_id=e.job_id, outcome="failed", reason=e.reason)
    return None


class OperationsController(Controller):
    path = "/"
    tags = ["operations"]

    @post("/jobs/actions", status_code=202)
    async def act_on_jobs(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: ActionBody,
    ) -> Asked:
        """Act on every job a filter matches: `{"action": "cancel"|"retry"|"pause"|"resume"|
        "delete_file", "filter": {...}, "dry_run": false}`. Answers at once with the
        operation's id; the jobs matched now are the ones acted on (at most 10,000), each
        through its single-job command."""
        try:
            body = _decode_body(await request.body())  # strictly: `"true"` is not true
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise JobApiError(status_code=400, detail=f"Invalid body: {exc}") from None
        if body.action not in ACTION_NAMES:
            raise JobApiError(
                status_code=400, detail=f"action must be one of {', '.join(ACTION_NAMES)}"
            )
        query = query_of_body(body.filter)
        accounts: list[str] | None = [principal.account_id]
        if body.all_accounts or body.account_id is not None:
            if not principal.admin:
                raise JobApiError(
                    status_code=403, detail="Only an admin key may act on other accounts' jobs"
                )
            accounts = None if body.all_accounts else [body.account_id or ""]
        store: EventStore = services.store
        return await request_operation(
            store,
            account_id=principal.account_id,
            accounts=accounts,
            action=body.action,  # type: ignore[arg-type]  # checked against ACTION_NAMES
            query=query,
            dry_run=body.dry_run,
            meta=command_metadata(request, principal.key_id),
        )

    @get("/operations/{operation_id:str}")
    async def get_operation(
        self,
        services: Services,
        principal: Principal,
        operation_id: str,
        after: Annotated[int, Parameter(ge=1, le=2**31 - 1)] = 1,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 100,
    ) -> OperationView:
        """An operation of yours: its status, counts and a page of the jobs it touched, in the
        order it handled them (pass `next_after` as `after` for the next page)."""
        store: EventStore = services.store
        state = await visible_operation(
            store, principal.account_id, operation_id, admin=principal.admin
        )
        events = await store.read_stream(
            operation.stream_id(state.operation_id), after + 1, limit=limit + 1
        )
        page = events[:limit]
        touched = [t for e in page if (t := _touched(e.data)) is not None]
        return OperationView(
            operation_id=state.operation_id,
            action=state.action,
            status=state.status,
            dry_run=state.dry_run,
            filter=msgspec.to_builtins(state.filter),
            all_accounts=state.accounts is None,
            counts=OperationCounts(state.matched, state.done, state.skipped, state.failed),
            created_at=_ms(state.created_at) or 0,
            finished_at=_ms(state.finished_at),
            jobs=touched,
            next_after=page[-1].version if len(events) > limit else None,
        )
