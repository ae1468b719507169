"""`/api/v1/tasks` (seed 004): submit scheduled tasks, follow them, cancel and retry them.

Reads of one task fold its stream (exact at once); lists and statistics come from the `tasks`
projection, so they trail the log by a moment. A key sees its own account's tasks; an admin key
sees every task.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post

from spool.adapters.event_store import EventStore
from spool.adapters.task_store import (
    load_task,
    load_task_as_of,
    online_offers,
)
from spool.api.as_of import BadAsOf, parse_as_of
from spool.api.auth import Principal
from spool.api.bodies import reads_body
from spool.api.cluster_reads import may_read_cluster
from spool.api.envelope import (
    DEFAULT_PAGE_SIZE,
    ClusterApiError,
    Envelope,
    Pagination,
    iso,
    page_window,
    success,
    validation_error,
)
from spool.api.idempotency import REPLAYED, IdempotencyKey, idempotency_of
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application import tasks as commands
from spool.application.idempotency import earlier_record
from spool.application.tasks import recorded_task
from spool.domain import task
from spool.domain.account_policy import (
    InvalidPolicy,
    PolicyRefused,
)
from spool.domain.errors import Conflict, DomainError, InvalidTransition, NotFound

MAX_BODY_BYTES = 256 * 1024
"""A task's payload travels in an event: keep it small."""


class RequirementsBody(task.Requirements, frozen=True, forbid_unknown_fields=True):
    """The seed's requirements (`domain.task.Requirements`), refusing fields it does not know."""


class SubmitTaskBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/tasks`: `task_type` and `payload`, with optional priority, requirements,
    metadata."""

    task_type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: str = "normal"
    requirements: RequirementsBody | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


_decode_body = msgspec.json.Decoder(SubmitTaskBody).decode
_decode_requirements = msgspec.json.Decoder(task.Requirements).decode
_decode_state = msgspec.json.Decoder(task.TaskState).decode
_AT_PATH = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")


def _body(raw: bytes) -> SubmitTaskBody:
    """The request body, strictly decoded; a 400 naming the field at fault otherwise."""
    if len(raw) > MAX_BODY_BYTES:
        raise validation_error("body", f"The body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return _decode_body(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = _AT_PATH.search(message)
        field = path.group(1) if path else ""
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown:
            field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
        missing = re.search(r"missing required field `([^`]*)`", message)
        if missing and not field:
            field = missing.group(1)
        raise validation_error(
            field.replace("[", ".").replace("]", "") or "body", message
        ) from None
    except msgspec.DecodeError as exc:
        raise validation_error("body", f"The body is not valid JSON: {exc}") from None


class TypeStatistics(msgspec.Struct):
    """One task type's counts, success rate (percent, null before any finished) and execution
    times in seconds (null before any succeeded)."""

    total: int
    success: int
    failed: int
    timeout: int
    cancelled: int
    success_rate: float | None
    mean_execution_time_seconds: float | None
    p95_execution_time_seconds: float | None


class TaskStatistics(msgspec.Struct):
    """`GET /api/v1/tasks/statistics`: counts by status, success rate, execution times overall
    and by task type."""

    total_tasks: int
    by_status: dict[str, int]
    success_rate: float | None
    mean_execution_time_seconds: float | None
    p95_execution_time_seconds: float | None
    by_type: dict[str, TypeStatistics]


class TaskTypes(msgspec.Struct, omit_defaults=True):
    """`GET /api/v1/tasks/types`: the types online nodes run and the types Spool knows; for an
    admin key also which nodes run each type and how many devices are online."""

    task_types: list[str]
    known_task_types: list[str]
    by_type: dict[str, list[str]] | msgspec.UnsetType = msgspec.UNSET
    online_devices: int | msgspec.UnsetType = msgspec.UNSET


class TaskSummary(msgspec.Struct):
    task_id: str
    task_type: str
    status: str
    priority: str
    created_at: str | None


class Submitted(msgspec.Struct):
    task_id: str
    task: TaskSummary


class TaskView(msgspec.Struct):
    """A task in full: its request, where it runs, and what came of it."""

    task_id: str
    task_type: str
    status: str
    priority: str
    payload: dict[str, Any]
    requirements: dict[str, Any]
    metadata: dict[str, Any]
    device_id: str | None
    attempt: int
    retry_count: int
    max_retries: int
    timeout_seconds: int
    reason: str | None
    result_data: Any
    error: str | None
    execution_time_seconds: float | None
    created_at: str | None
    assigned_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str | None


class Progress(msgspec.Struct):
    elapsed_seconds: float | None
    timeout_seconds: int
    timeout_used_percent: float | None


class StatusView(msgspec.Struct):
    task_id: str
    status: str
    priority: str
    device_id: str | None
    attempt: int
    retry_count: int
    max_retries: int
    reason: str | None
    error: str | None
    progress: Progress
    created_at: str | None
    assigned_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str | None


class ResultView(msgspec.Struct):
    """The seed's result object (plus `error` for a task that did not succeed)."""

    task_id: str
    status: str
    result_data: Any
    execution_time_seconds: float | None
    worker_device_id: str | None
    started_at: str | None
    completed_at: str | None
    error: str | None


def summary(state: task.TaskState) -> TaskSummary:
    return TaskSummary(
        state.task_id, state.task_type, state.status, state.priority, iso(state.created_at)
    )


def _as_seen_by(principal: Principal, state: task.TaskState) -> task.TaskState:
    """A task as its caller may see it: the nodes its waiting reason names are the cluster's."""
    if may_read_cluster(principal.admin):
        return state
    return msgspec.structs.replace(state, reason=task.reason_without_nodes(state.reason))


def view(state: task.TaskState) -> TaskView:
    """The public view of a task's state."""
    req = state.requirements
    return TaskView(
        task_id=state.task_id,
        task_type=state.task_type,
        status=state.status,
        priority=state.priority,
        payload=state.payload,
        requirements=msgspec.to_builtins(req),
        metadata=state.metadata,
        device_id=state.device_id,
        attempt=state.attempt,
        retry_count=state.retry_count,
        max_retries=req.max_retries,
        timeout_seconds=req.timeout_seconds,
        reason=state.reason,
        result_data=state.result_data,
        error=state.error,
        execution_time_seconds=state.execution_time_seconds,
        created_at=iso(state.created_at),
        assigned_at=iso(state.assigned_at),
        started_at=iso(state.started_at),
        completed_at=iso(state.completed_at),
        updated_at=iso(state.updated_at),
    )


def _progress(state: task.TaskState) -> Progress:
    timeout = state.requirements.timeout_seconds
    if state.started_at is None:
        return Progress(None, timeout, None)
    end = state.completed_at or datetime.now(UTC)
    elapsed = max(0.0, (end - state.started_at).total_seconds())
    return Progress(round(elapsed, 3), timeout, round(min(100.0, 100 * elapsed / timeout), 1))


def _not_found(task_id: str) -> ClusterApiError:
    return ClusterApiError(
        404, "TASK_NOT_FOUND", f"Task {task_id!r} not found", {"task_id": task_id}
    )


def _refused(exc: DomainError, raw_id: str) -> ClusterApiError:
    """A refused task command in the envelope's words; `raw_id` is the task id as asked."""
    if isinstance(exc, NotFound):
        return _not_found(raw_id)
    if isinstance(exc, Conflict):
        return validation_error("task_id", str(exc))
    if isinstance(exc, InvalidTransition):
        return validation_error("status", str(exc))
    if isinstance(exc, task.InvalidTask | InvalidPolicy):
        return validation_error(exc.field, str(exc))
    if isinstance(exc, PolicyRefused):
        return ClusterApiError(
            403, "UNAUTHORIZED", str(exc), {"field": exc.field, "reason": "not_allowed"}
        )
    raise exc


async def _load(services: Services, raw_id: str, principal: Principal) -> task.TaskState:
    """A task the caller may see, exact to its last event; 404 for anyone else's."""
    store: EventStore = services.store
    try:
        return await commands.visible_task(
            store, principal.account_id, raw_id, admin=principal.admin
        )
    except NotFound as exc:
        raise _refused(exc, raw_id) from None


async def _task_then(services: Services, task_id: str, raw_as_of: str) -> task.TaskState:
    """A (visible) task as it stood at `as_of`; 400 for a bad `as_of`, 404 before the task."""
    try:
        as_of = parse_as_of(raw_as_of)
    except BadAsOf as exc:
        raise validation_error("as_of", str(exc)) from None
    then = await load_task_as_of(services.store, task_id, as_of)
    if then is None:
        raise ClusterApiError(
            404,
            "TASK_NOT_FOUND",
            f"Task {task_id!r} did not exist yet at as_of={raw_as_of}",
            {"task_id": task_id, "as_of": raw_as_of},
        )
    return then


def _choice(field: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise validation_error(field, f"{field} must be one of {', '.join(allowed)}")
    return value


_LIST = """
SELECT state, count(*) OVER () AS total FROM tasks
WHERE ($1::text IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR task_type = $3)
  AND ($4::text IS NULL OR priority = $4)
  AND ($5::text IS NULL OR device_id = $5)
ORDER BY created_at DESC, task_id DESC
LIMIT $6 OFFSET $7
"""

_COUNT = """
SELECT count(*) FROM tasks
WHERE ($1::text IS NULL OR account_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR task_type = $3)
  AND ($4::text IS NULL OR priority = $4)
  AND ($5::text IS NULL OR device_id = $5)
"""

_BY_STATUS = """
SELECT status, count(*) FROM tasks WHERE ($1::text IS NULL OR account_id = $1) GROUP BY status
"""

_BY_TYPE = """
SELECT task_type, count(*) AS total,
       count(*) FILTER (WHERE status = 'success') AS success,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'timeout') AS timeout,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       avg(execution_time_seconds) FILTER (WHERE status = 'success') AS mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY execution_time_seconds)
           FILTER (WHERE status = 'success') AS p95
FROM tasks WHERE ($1::text IS NULL OR account_id = $1)
GROUP BY task_type ORDER BY task_type
"""

_OVERALL_TIMES = """
SELECT avg(execution_time_seconds) AS mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY execution_time_seconds) AS p95
FROM tasks WHERE status = 'success' AND ($1::text IS NULL OR account_id = $1)
"""


def _rate(success: int, finished: int) -> float | None:
    """Percent of finished tasks (success, failed, timeout) that succeeded."""
    return round(100.0 * success / finished, 2) if finished else None


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def _submitted(
    request: Request[Any, Any, Any], store: EventStore, task_id: str, *, replayed: bool
) -> Response[Envelope[Submitted]]:
    """201 with the task as it is now; a replayed submission is marked as one."""
    state = await load_task(store, task_id)
    assert state is not None
    answer = success(
        request,
        Submitted(task_id=task_id, task=summary(state)),
        message="Task submitted",
        status_code=201,
    )
    if replayed:
        answer.headers[REPLAYED] = "true"
    return answer


class TasksController(Controller):
    path = "/tasks"
    tags = ["cluster: tasks"]

    @post("/", status_code=201, opt=reads_body("task_type"))
    async def submit(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: dict[str, Any],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Envelope[Submitted]]:
        """Submit a task; it waits `queued` until a node that meets its requirements is free.

        `command`, `python_eval` and `http_request` need an admin key or the account's grant
        (403 otherwise); `payload.env` names node environment variables the task's process
        may see (only those the grant allows); `urgent` needs an admin key.

        Body: `task_type`, `payload`, `priority` (low, normal, high, urgent), `requirements`
        (min_cpu_cores, min_memory_gb, min_storage_gb, required_platform, required_role,
        required_tags, gpu_required, internet_required, timeout_seconds, max_retries), `metadata`.
        """
        store: EventStore = services.store
        idem = await idempotency_of(request, principal, idempotency_key)
        if idem is not None and (first := await earlier_record(store, idem)) is not None:
            return await _submitted(request, store, recorded_task(first), replayed=True)
        # The raw body is decoded strictly here (not by the framework) to name a bad field.
        body = _body(await request.body())
        given = body.requirements or RequirementsBody()
        new = commands.NewTask(
            task_type=body.task_type,
            payload=body.payload,
            priority=body.priority,
            requirements=_decode_requirements(msgspec.json.encode(given)),
            metadata=body.metadata,
        )
        meta = command_metadata(request, principal.key_id)
        try:
            made = await commands.submit_task(
                store, principal.account_id, new, admin=principal.admin, idem=idem, meta=meta
            )
        except (task.InvalidTask, InvalidPolicy, PolicyRefused) as exc:
            raise _refused(exc, "") from None
        return await _submitted(request, store, made.task_id, replayed=made.replayed)

    @get("/")
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        status: str | None = None,
        task_type: str | None = None,
        priority: str | None = None,
        device_id: str | None = None,
    ) -> Response[Envelope[list[TaskView]]]:
        """Tasks, newest first, filtered by status, task_type, priority, device_id."""
        limit, offset = page_window(page, page_size)
        _choice("status", status, task.STATUSES)
        _choice("priority", priority, task.PRIORITIES)
        account = None if principal.admin else principal.account_id
        filters = (account, status, task_type, priority, device_id)
        rows = await services.pool.fetch(_LIST, *filters, limit, offset)
        if rows:
            total = rows[0]["total"]
        else:  # past the last page: the count still answers how many there are
            total = await services.pool.fetchval(_COUNT, *filters)
        return success(
            request,
            [view(_as_seen_by(principal, _decode_state(r["state"]))) for r in rows],
            pagination=Pagination.of(page, page_size, total),
        )

    @get("/statistics")
    async def statistics(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[TaskStatistics]]:
        """Counts by status, success rate, mean and p95 execution time (s) overall and by type."""
        pool = services.pool
        account = None if principal.admin else principal.account_id
        counts: dict[str, int] = {s: 0 for s in task.STATUSES}
        counts.update({r[0]: r[1] for r in await pool.fetch(_BY_STATUS, account)})
        finished = counts["success"] + counts["failed"] + counts["timeout"]
        overall = await pool.fetchrow(_OVERALL_TIMES, account)
        by_type = {
            r["task_type"]: TypeStatistics(
                total=r["total"],
                success=r["success"],
                failed=r["failed"],
                timeout=r["timeout"],
                cancelled=r["cancelled"],
                success_rate=_rate(r["success"], r["success"] + r["failed"] + r["timeout"]),
                mean_execution_time_seconds=_seconds(r["mean"]),
                p95_execution_time_seconds=_seconds(r["p95"]),
            )
            for r in await pool.fetch(_BY_TYPE, account)
        }
        answer = TaskStatistics(
            total_tasks=sum(counts.values()),
            by_status=counts,
            success_rate=_rate(counts["success"], finished),
            mean_execution_time_seconds=_seconds(overall["mean"]),
            p95_execution_time_seconds=_seconds(overall["p95"]),
            by_type=by_type,
        )
        return success(request, answer)

    @get("/types")
    async def types(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> Response[Envelope[TaskTypes]]:
        """The task types online nodes run (the union); for an admin, which nodes run each.

        Which nodes there are is a cluster-wide read (api/cluster_reads.py): a user key is told
        only which types it may submit.
        """
        offers = await online_offers(services.pool)
        by_type: dict[str, list[str]] = {}
        for o in offers:
            for t in o.task_types:
                by_type.setdefault(t, []).append(o.node_id)
        answer = TaskTypes(task_types=sorted(by_type), known_task_types=list(task.TASK_TYPES))
        if may_read_cluster(principal.admin):
            answer.by_type = {t: sorted(nodes) for t, nodes in sorted(by_type.items())}
            answer.online_devices = len(offers)
        return success(request, answer)

    @get("/{task_id:str}")
    async def get_task(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        task_id: str,
        as_of: str | None = None,
    ) -> Response[Envelope[TaskView]]:
        """A task in full: payload, requirements, where it runs, and its result.

        `as_of` (an event position, or an ISO 8601 time) answers the task as it stood then.
        """
        state = await _load(services, task_id, principal)
        if as_of is not None:
            state = await _task_then(services, state.task_id, as_of)
        return success(request, view(_as_seen_by(principal, state)))

    @get("/{task_id:str}/status")
    async def task_status(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        task_id: str,
    ) -> Response[Envelope[StatusView]]:
        """Where a task stands: status, device, attempt, why it waits, time used."""
        state = _as_seen_by(principal, await _load(services, task_id, principal))
        return success(
            request,
            StatusView(
                task_id=state.task_id,
                status=state.status,
                priority=state.priority,
                device_id=state.device_id,
                attempt=state.attempt,
                retry_count=state.retry_count,
                max_retries=state.requirements.max_retries,
                reason=state.reason,
                error=state.error,
                progress=_progress(state),
                created_at=iso(state.created_at),
                assigned_at=iso(state.assigned_at),
                started_at=iso(state.started_at),
                completed_at=iso(state.completed_at),
                updated_at=iso(state.updated_at),
            ),
        )

    @get("/{task_id:str}/result")
    async def task_result(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        task_id: str,
    ) -> Response[Envelope[ResultView]]:
        """What a finished task produced; `result_data` is null until it succeeds."""
        state = await _load(services, task_id, principal)
        answer = ResultView(
            task_id=state.task_id,
            status=state.status,
            result_data=state.result_data,
            execution_time_seconds=state.execution_time_seconds,
            worker_device_id=state.device_id,
            started_at=iso(state.started_at),
            completed_at=iso(state.completed_at),
            error=state.error,
        )
        message = None if state.terminal else f"Task is {state.status}: no result yet"
        return success(request, answer, message=message)

    @post("/{task_id:str}/cancel", status_code=200)
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        task_id: str,
    ) -> Response[Envelope[TaskView]]:
        """Cancel a queued, assigned or running task of the caller's account (an admin key: any
        task); a running one is stopped. Another account's task is a 404."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        try:
            state = await commands.cancel_task(
                store, principal.account_id, task_id, meta, admin=principal.admin
            )
        except (NotFound, InvalidTransition, Conflict) as exc:
            raise _refused(exc, task_id) from None
        return success(request, view(state), message="Task cancelled")

    @post("/{task_id:str}/retry", status_code=200)
    async def retry(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        task_id: str,
    ) -> Response[Envelope[TaskView]]:
        """Queue a failed, timed-out or cancelled task of the caller's account again (an admin
        key: any task). Another account's task is a 404."""
        meta = command_metadata(request, principal.key_id)
        store: EventStore = services.store
        try:
            state = await commands.retry_task(
                store, principal.account_id, task_id, meta, admin=principal.admin
            )
        except (NotFound, InvalidTransition, Conflict) as exc:
            raise _refused(exc, task_id) from None
        return success(request, view(state), message="Task queued again")
