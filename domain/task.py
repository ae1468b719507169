"""Scheduled tasks: their events, state, pure decide/evolve functions, and the placement plan.

A task waits `queued` until the scheduler assigns it to a node whose capabilities meet its
requirements and which has a free task slot. Every assignment is a numbered *attempt*: the node
runs `(task, attempt)` only while it is the task's current one, so a late or duplicate delivery
does nothing. A failure or timeout is retried automatically while `max_retries` allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from spool.domain.aggregate import Aggregate, event_types
from spool.domain.errors import DomainError, InvalidTransition
from spool.domain.events import Event, event
from spool.domain.node import Capabilities
from spool.domain.node_health import Blame

Priority = Literal["low", "normal", "high", "urgent"]
TaskStatus = Literal[
    "pending", "queued", "assigned", "running", "success", "failed", "cancelled", "timeout"
]

PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high", "urgent")
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
STATUSES: tuple[TaskStatus, ...] = (
    "pending",
    "queued",
    "assigned",
    "running",
    "success",
    "failed",
    "cancelled",
    "timeout",
)
TERMINAL: frozenset[str] = frozenset({"success", "failed", "cancelled", "timeout"})
ACTIVE: frozenset[str] = frozenset({"assigned", "running"})
"""Statuses that hold one of a node's task slots."""

TASK_TYPES: tuple[str, ...] = (
    "echo",
    "sleep",
    "system_info",
    "http_request",
    "command",
    "python_eval",
)
"""Every task type Spool knows; each node advertises the ones it runs."""

MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_RETRIES = 20
MAX_TASK_TYPE_LENGTH = 64


class InvalidTask(DomainError):
    """A task that cannot be submitted as given; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    """What a node must offer to run the task; the names are the seed's."""

    min_cpu_cores: int = 0
    min_memory_gb: float = 0.0
    min_storage_gb: float = 0.0
    required_platform: str | None = None
    required_role: str | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)
    gpu_required: bool = False
    internet_required: bool = False
    timeout_seconds: int = 300
    max_retries: int = 0


# -- events ----------------------------------------------------------------------------------


@event
class TaskSubmitted(Event, frozen=True, kw_only=True):
    task_id: str
    account_id: str
    task_type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: Priority = "normal"
    requirements: Requirements = Requirements()
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    env: list[str] = msgspec.field(default_factory=list)
    """The node environment variables its child process may see (decided at submission)."""
    by_grant: bool = False
    """Allowed by the account's grant (not an admin key): the node checks the grant again."""


@event
class TaskWaiting(Event, frozen=True, kw_only=True):
    """Still queued, and why: no online node meets the requirements, or none has a free slot."""

    reason: str


@event
class TaskAssigned(Event, frozen=True, kw_only=True):
    device_id: str
    attempt: int


@event
class TaskUnassigned(Event, frozen=True, kw_only=True):
    """Back to the queue before it started (its node went offline or was drained); not counted
    as a retry."""

    attempt: int
    reason: str


@event
class TaskStarted(Event, frozen=True, kw_only=True):
    device_id: str
    attempt: int


@event
class TaskSucceeded(Event, frozen=True, kw_only=True):
    device_id: str
    attempt: int
    result_data: Any = None
    execution_time_seconds: float = 0.0


@event
class TaskFailed(Event, frozen=True, kw_only=True):
    device_id: str | None
    attempt: int
    error: str
    execution_time_seconds: float | None = None
    blame: Blame | None = None
    """Whose fault the failure is (domain/node_health.py); None when no one's in particular (a
    node's stop) and in failures recorded before failures carried one."""


@event
class TaskTimedOut(Event, frozen=True, kw_only=True):
    device_id: str | None
    attempt: int
    timeout_seconds: int


@event
class TaskCancelled(Event, frozen=True, kw_only=True):
    reason: str = "cancelled by the user"


@event
class TaskRetried(Event, frozen=True, kw_only=True):
    """Queued again: by itself after a failure or timeout, or by a user (`automatic=False`)."""

    automatic: bool
    retry_count: int


EVENT_CLASSES: tuple[type[Event], ...] = (
    TaskSubmitted,
    TaskWaiting,
    TaskAssigned,
    TaskUnassigned,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    TaskTimedOut,
    TaskCancelled,
    TaskRetried,
)
EVENT_TYPES: frozenset[str] = event_types(EVENT_CLASSES)
"""Every event type a task stream holds."""


def stream_id(task_id: str) -> str:
    """The event stream that holds one task."""
    return f"task-{task_id}"


def arq_job_id(task_id: str, attempt: int) -> str:
    """The deterministic queue id of one attempt: a replayed assignment enqueues nothing."""
    return f"task:{task_id}:{attempt}"


# -- state -----------------------------------------------------------------------------------


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """A task folded from its events: what `GET /api/v1/tasks/{id}` shows."""

    task_id: str
    account_id: str
    task_type: str
    payload: dict[str, Any]
    priority: Priority
    requirements: Requirements
    metadata: dict[str, Any]
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    device_id: str | None = None
    attempt: int = 0
    retry_count: int = 0
    reason: str | None = None
    result_data: Any = None
    error: str | None = None
    execution_time_seconds: float | None = None
    version: int = 0
    env: list[str] = msgspec.field(default_factory=list)
    by_grant: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def priority_rank(self) -> int:
        return PRIORITY_RANK[self.priority]


# -- decide ----------------------------------------------------------------------------------


def submit(
    *,
    task_id: str,
    account_id: str,
    task_type: str,
    payload: dict[str, Any] | None = None,
    priority: str = "normal",
    requirements: Requirements | None = None,
    metadata: dict[str, Any] | None = None,
    env: list[str] | None = None,
    by_grant: bool = False,
) -> list[Event]:
    """Decide the event that submits a task, refusing what could never run.

    Whether the caller may submit it (`domain.account_policy.task_env`) is decided before.
    """
    if not task_type or len(task_type) > MAX_TASK_TYPE_LENGTH:
        raise InvalidTask("task_type", "task_type must be a non-empty name")
    if task_type not in TASK_TYPES:
        raise InvalidTask(
            "task_type", f"Unknown task_type {task_type!r}; known: {', '.join(TASK_TYPES)}"
        )
    if priority not in PRIORITY_RANK:
        raise InvalidTask("priority", f"priority must be one of {', '.join(PRIORITIES)}")
    req = requirements or Requirements()
    for name in ("min_cpu_cores", "min_memory_gb", "min_storage_gb"):
        if getattr(req, name) < 0:
            raise InvalidTask(f"requirements.{name}", f"{name} must not be negative")
    if not 1 <= req.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidTask(
            "requirements.timeout_seconds",
            f"timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}",
        )
    if not 0 <= req.max_retries <= MAX_RETRIES:
        raise InvalidTask(
            "requirements.max_retries", f"max_retries must be between 0 and {MAX_RETRIES}"
        )
    rank: Priority = PRIORITIES[PRIORITY_RANK[priority]]
    return [
        TaskSubmitted(
            task_id=task_id,
            account_id=account_id,
            task_type=task_type,
            payload=payload or {},
            priority=rank,
            requirements=req,
            metadata=metadata or {},
            env=list(env or []),
            by_grant=by_grant,
        )
    ]


def wait(state: TaskState, reason: str) -> list[Event]:
    """Record why a queued task still waits; nothing if it already says so."""
    if state.status != "queued":
        raise InvalidTransition(f"Task is {state.status}, not queued")
    return [] if state.reason == reason else [TaskWaiting(reason=reason)]


def assign(state: TaskState, device_id: str) -> list[Event]:
    """Give a queued task to a node, as its next attempt."""
    if state.status != "queued":
        raise InvalidTransition(f"Task is {state.status} and cannot be assigned")
    return [TaskAssigned(device_id=device_id, attempt=state.attempt + 1)]


def unassign(state: TaskState, reason: str) -> list[Event]:
    """Put an assigned task that never started back in the queue."""
    if state.status != "assigned":
        raise InvalidTransition(f"Task is {state.status}, not assigned")
    return [TaskUnassigned(attempt=state.attempt, reason=reason)]


def is_current(state: TaskState, device_id: str, attempt: int) -> bool:
    """Whether `attempt` on `device_id` is the one the task is waiting on."""
    return state.status in ACTIVE and state.attempt == attempt and state.device_id == device_id


def _require_current(state: TaskState, device_id: str, attempt: int) -> None:
    if not is_current(state, device_id, attempt):
        raise InvalidTransition(
            f"task {state.task_id} is {state.status} at attempt {state.attempt} on "
            f"{state.device_id}, not attempt {attempt} on {device_id}"
        )


def start(state: TaskState, device_id: str, attempt: int) -> list[Event]:
    """The node begins the attempt it was assigned."""
    _require_current(state, device_id, attempt)
    if state.status != "assigned":
        raise InvalidTransition(f"Task is already {state.status}")
    return [TaskStarted(device_id=device_id, attempt=attempt)]


def succeed(
    state: TaskState, device_id: str, attempt: int, result_data: Any, seconds: float
) -> list[Event]:
    """The running attempt finished with a result."""
    _require_current(state, device_id, attempt)
    if state.status != "running":
        raise InvalidTransition(f"Task is {state.status}, not running")
    return [
        TaskSucceeded(
            device_id=device_id,
            attempt=attempt,
            result_data=result_data,
            execution_time_seconds=seconds,
        )
    ]


def _retry_after_failure(state: TaskState, retryable: bool) -> list[Event]:
    if retryable and state.retry_count < state.requirements.max_retries:
        return [TaskRetried(automatic=True, retry_count=state.retry_count + 1)]
    return []


def fail(
    state: TaskState,
    device_id: str | None,
    attempt: int,
    error: str,
    *,
    retryable: bool = True,
    seconds: float | None = None,
    blame: Blame | None = None,
) -> list[Event]:
    """The attempt failed; it is queued again while `max_retries` allows and a retry can help.
    `blame` says whose fault it is (only the node's counts toward its quarantine)."""
    if state.status not in ACTIVE or state.attempt != attempt:
        raise InvalidTransition(f"Task is {state.status} at attempt {state.attempt}")
    if device_id is not None and state.device_id != device_id:
        raise InvalidTransition(f"Task runs on {state.device_id}, not {device_id}")
    failed = TaskFailed(
        device_id=state.device_id,
        attempt=attempt,
        error=error,
        execution_time_seconds=seconds,
        blame=blame,
    )
    return [failed, *_retry_after_failure(state, retryable)]


def deadline(state: TaskState) -> datetime | None:
    """When the current attempt runs out of time: its timeout after it started (or assigned)."""
    since = state.started_at if state.status == "running" else state.assigned_at
    if state.status not in ACTIVE or since is None:
        return None
    return since + timedelta(seconds=state.requirements.timeout_seconds)


def overdue(state: TaskState, now: datetime) -> bool:
    """Whether the current attempt is past its timeout at `now`."""
    limit = deadline(state)
    return limit is not None and now >= limit


def time_out(state: TaskState, attempt: int) -> list[Event]:
    """The attempt exceeded `timeout_seconds`; queued again while `max_retries` allows."""
    if state.status not in ACTIVE or state.attempt != attempt:
        raise InvalidTransition(f"Task is {state.status} at attempt {state.attempt}")
    timed_out = TaskTimedOut(
        device_id=state.device_id,
        attempt=attempt,
        timeout_seconds=state.requirements.timeout_seconds,
    )
    return [timed_out, *_retry_after_failure(state, True)]


def cancel(state: TaskState, reason: str = "cancelled by the user") -> list[Event]:
    """Cancel a task that has not finished; a running attempt is stopped by its node."""
    if state.terminal:
        raise InvalidTransition(f"Task is already {state.status} and cannot be cancelled")
    return [TaskCancelled(reason=reason)]


def retry(state: TaskState) -> list[Event]:
    """Queue a failed, timed-out or cancelled task again, with a fresh retry budget."""
    if state.status not in ("failed", "timeout", "cancelled"):
        raise InvalidTransition(
            f"Only failed, timed-out or cancelled tasks can be retried (this task is "
            f"{state.status})"
        )
    return [TaskRetried(automatic=False, retry_count=0)]


# -- evolve ----------------------------------------------------------------------------------


def evolve(state: TaskState | None, ev: Event, at: datetime, version: int) -> TaskState:
    """Apply one recorded event to a task's state."""
    if isinstance(ev, TaskSubmitted):
        if state is not None:
            raise InvalidTransition(f"task {ev.task_id} submitted twice")
        return TaskState(
            task_id=ev.task_id,
            account_id=ev.account_id,
            task_type=ev.task_type,
            payload=ev.payload,
            priority=ev.priority,
            requirements=ev.requirements,
            metadata=ev.metadata,
            status="queued",
            created_at=at,
            updated_at=at,
            version=version,
            env=list(ev.env),
            by_grant=ev.by_grant,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before TaskSubmitted")
    replace = msgspec.structs.replace
    if isinstance(ev, TaskWaiting):
        return replace(state, updated_at=at, version=version, reason=ev.reason)
    if isinstance(ev, TaskAssigned):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="assigned",
            device_id=ev.device_id,
            attempt=ev.attempt,
            assigned_at=at,
            started_at=None,
            reason=None,
        )
    if isinstance(ev, TaskUnassigned):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="queued",
            device_id=None,
            assigned_at=None,
            reason=ev.reason,
        )
    if isinstance(ev, TaskStarted):
        return replace(state, updated_at=at, version=version, status="running", started_at=at)
    if isinstance(ev, TaskSucceeded):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="success",
            completed_at=at,
            result_data=ev.result_data,
            error=None,
            execution_time_seconds=ev.execution_time_seconds,
        )
    if isinstance(ev, TaskFailed):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="failed",
            completed_at=at,
            error=ev.error,
            execution_time_seconds=ev.execution_time_seconds,
        )
    if isinstance(ev, TaskTimedOut):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="timeout",
            completed_at=at,
            error=f"Exceeded its timeout of {ev.timeout_seconds} s",
        )
    if isinstance(ev, TaskCancelled):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="cancelled",
            completed_at=at,
            reason=ev.reason,
        )
    if isinstance(ev, TaskRetried):
        return replace(
            state,
            updated_at=at,
            version=version,
            status="queued",
            retry_count=ev.retry_count,
            device_id=None,
            assigned_at=None,
            started_at=None,
            completed_at=None,
            result_data=None,
            execution_time_seconds=None,
            reason=f"retry {ev.retry_count} after: {state.error}" if ev.automatic else None,
        )
    return replace(state, updated_at=at, version=version)


AGGREGATE: Aggregate[TaskState] = Aggregate(
    name="task",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=EVENT_CLASSES,
)

fold = AGGREGATE.fold
"""A task's events, in stream order, folded into its state."""


# -- placement -------------------------------------------------------------------------------


class NodeOffer(msgspec.Struct, frozen=True, kw_only=True):
    """An online node as the scheduler sees it: what it is, and how many task slots it has."""

    node_id: str
    role: str
    tags: list[str]
    capabilities: Capabilities
    task_types: list[str]
    internet: bool
    slots: int
    busy: int = 0
    draining: bool = False
    """An admin drained the node: it finishes what it runs and is given nothing new."""
    quarantined: bool = False
    """Units failed in a row on the node: it is given nothing new until released."""


class QueuedTask(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    task_type: str
    priority: Priority
    created_at: datetime
    requirements: Requirements


class Assignment(msgspec.Struct, frozen=True):
    task_id: str
    node_id: str


class Plan(msgspec.Struct, frozen=True):
    """What to assign now, and why each other task still waits."""

    assignments: list[Assignment]
    waiting: dict[str, str]


def unmet(requirements: Requirements, offer: NodeOffer, task_type: str | None = None) -> str | None:
    """Why `offer` cannot run a task with these requirements; None if it can."""
    caps = offer.capabilities
    if offer.quarantined:
        return "is quarantined"
    if offer.draining:
        return "is draining"
    if task_type is not None and task_type not in offer.task_types:
        return f"does not run {task_type} tasks"
    if caps.cpu_count < requirements.min_cpu_cores:
        return f"has {caps.cpu_count} CPU cores, needs {requirements.min_cpu_cores}"
    if caps.memory_total_gb < requirements.min_memory_gb:
        return f"has {caps.memory_total_gb:g} GB memory, needs {requirements.min_memory_gb:g}"
    if caps.storage_total_gb < requirements.min_storage_gb:
        return f"has {caps.storage_total_gb:g} GB storage, needs {requirements.min_storage_gb:g}"
    platform = requirements.required_platform
    if platform is not None and caps.platform.lower() != platform.lower():
        return f"runs {caps.platform}, needs {platform}"
    role = requirements.required_role
    if role is not None and offer.role.lower() != role.lower():
        return f"has role {offer.role}, needs {role}"
    missing = [t for t in requirements.required_tags if t not in offer.tags]
    if missing:
        return f"lacks tag{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if requirements.gpu_required and not caps.has_gpu:
        return "has no GPU"
    if requirements.internet_required and not offer.internet:
        return "has no internet access"
    return None


def _order(task: QueuedTask) -> tuple[int, datetime, str]:
    return (-PRIORITY_RANK[task.priority], task.created_at, task.task_id)


NO_NODE_MEETS = "No online node meets the requirements"
NO_FREE_SLOT = "Waiting for a free task slot"


def _no_node_reason(task: QueuedTask, offers: Sequence[NodeOffer]) -> str:
    if not offers:
        return "No online node"
    why = "; ".join(
        f"{o.node_id} {unmet(task.requirements, o, task.task_type)}" for o in offers[:5]
    )
    more = f" (and {len(offers) - 5} more)" if len(offers) > 5 else ""
    return f"{NO_NODE_MEETS}: {why}{more}"


def reason_without_nodes(reason: str | None) -> str | None:
    """Why a task waits, without the nodes the reason names and what each of them has.

    The whole reason is for the cluster's admins: which nodes there are, and their hardware, is
    a cluster-wide read; a task's owner learns that it waits, and for what.
    """
    for kind in (NO_NODE_MEETS, NO_FREE_SLOT):
        if reason is not None and reason.startswith(kind):
            return kind
    return reason


def plan(queued: Sequence[QueuedTask], offers: Sequence[NodeOffer]) -> Plan:
    """Place queued tasks, highest priority then oldest first, on nodes that qualify and have
    a free slot; among those, the one with the most free slots (ties: node id)."""
    free = {o.node_id: max(0, o.slots - o.busy) for o in offers}
    assignments: list[Assignment] = []
    waiting: dict[str, str] = {}
    for task in sorted(queued, key=_order):
        able = [o for o in offers if unmet(task.requirements, o, task.task_type) is None]
        if not able:
            waiting[task.task_id] = _no_node_reason(task, offers)
            continue
        open_ = [o for o in able if free[o.node_id] > 0]
        if not open_:
            names = ", ".join(o.node_id for o in able[:5])
            waiting[task.task_id] = f"{NO_FREE_SLOT} on {names}"
            continue
        best = min(open_, key=lambda o: (-free[o.node_id], o.node_id))
        free[best.node_id] -= 1
        assignments.append(Assignment(task.task_id, best.node_id))
    return Plan(assignments, waiting)
