"""Bulk actions by query (`POST /jobs/actions`): ask for an operation over the jobs a
`JobQuery` matches, and carry it on, job after job, where it stopped.

Each job goes through the same command as its single-job endpoint (`ACTIONS`), as the job's own
account, so quotas, ownership and refusals are the same. A job whose state refuses the action
(`InvalidTransition`: a retry of a completed job) is skipped with the reason; any other refusal
(a quota, a storage) is a failure of that job, not of the operation.

Acting on no job twice: the operation records each job's outcome at the index it holds, at the
stream's version (a second runner's record clashes), and every event an action appends on a
job names the operation's stream as its cause, so a runner that resumes after a crash between
the action and its record finds the action in the job's history and records it as done.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from spool.adapters.account_policy_store import QuotaExceeded
from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.job_store import load_job
from spool.adapters.operation_store import job_ids_of, operations
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import operations as operation_rows
from spool.adapters.repository import Loaded, record_many
from spool.application import jobs
from spool.domain import job, operation
from spool.domain.errors import Conflict, DomainError, InvalidCommand, InvalidTransition, NotFound
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.job_query import JobQuery


@dataclass(frozen=True)
class ActionServices:
    """What the job commands of an operation need."""

    store: EventStore
    storages: AccountStorages | None = None


JobCommand = Callable[[ActionServices, str, str, Metadata], Awaitable[object]]
"""One job's command: (services, the job's account, job id, metadata)."""


async def _delete_file(s: ActionServices, account_id: str, job_id: str, meta: Metadata) -> object:
    if s.storages is None:
        raise InvalidCommand("delete_file needs the accounts' storages")
    return await jobs.delete_job_file(s.store, s.storages, account_id, job_id, meta)


ACTIONS: dict[str, JobCommand] = {
    "cancel": lambda s, account_id, job_id, meta: jobs.cancel_job(
        s.store, account_id, job_id, meta
    ),
    "retry": lambda s, account_id, job_id, meta: jobs.retry_job(s.store, account_id, job_id, meta),
    "delete_file": _delete_file,
    "pause": lambda s, account_id, job_id, meta: jobs.pause_job(s.store, account_id, job_id, meta),
    "resume": lambda s, account_id, job_id, meta: jobs.resume_job(
        s.store, account_id, job_id, meta
    ),
}
"""The action of each name, as its single-job endpoint runs it."""


class Asked(msgspec.Struct):
    """What `POST /jobs/actions` answers."""

    operation_id: str
    action: str
    dry_run: bool
    matched: int
    status: operation.OperationStatus


async def request_operation(
    store: EventStore,
    *,
    account_id: str,
    accounts: list[str] | None,
    action: operation.Action,
    query: JobQuery,
    dry_run: bool,
    meta: Metadata,
) -> Asked:
    """Record an operation over the jobs of `accounts` (None: every account's) that `query`
    matches now; a dry run only counts them. Refused: more than `MAX_JOBS` jobs, or
    `MAX_RUNNING` operations of the account still running."""
    if not dry_run and await operation_rows.running_of(store.pool, account_id) >= (
        operation.MAX_RUNNING
    ):
        raise Conflict(
            f"{operation.MAX_RUNNING} operations of this account are still running; "
            "wait for one to finish"
        )
    found = await job_rows.matching(store.pool, accounts, query, limit=operation.MAX_JOBS)
    if not dry_run and found.total > operation.MAX_JOBS:
        raise InvalidCommand(
            f"The filter matches {found.total} jobs; one operation acts on at most "
            f"{operation.MAX_JOBS}: narrow the filter"
        )
    operation_id = str(uuid.uuid4())
    events = operation.request(
        operation_id=operation_id,
        account_id=account_id,
        accounts=accounts,
        action=action,
        filter=query,
        dry_run=dry_run,
        matched=found.total,
        job_ids=found.job_ids,
    )
    stream = operation.stream_id(operation_id)
    await record_many(store, [StreamAppend(stream, [NewEvent(e, meta) for e in events], 0)])
    finished = any(isinstance(e, operation.OperationFinished) for e in events)
    return Asked(
        operation_id=operation_id,
        action=action,
        dry_run=dry_run,
        matched=found.total,
        status="finished" if finished else "running",
    )


async def visible_operation(
    store: EventStore, account_id: str, operation_id: str, *, admin: bool = False
) -> operation.OperationState:
    """An operation the caller asked for (an admin: any); NotFound for anyone else's."""
    try:
        uuid.UUID(operation_id)
    except ValueError:
        raise NotFound("Operation not found") from None
    state = await operations(store).load(operation_id)
    if state is None or (state.account_id != account_id and not admin):
        raise NotFound("Operation not found")
    return state


def caused_by(operation_id: str, meta: Metadata) -> Metadata:
    """The metadata of the job events an operation's action appends: the requester as actor,
    the operation's stream as cause."""
    return msgspec.structs.replace(meta, causation_id=operation.stream_id(operation_id))


async def _acted_before(store: EventStore, job_id: str, cause: str) -> bool:
    events = await store.read_stream(job.stream_id(job_id))
    return any(e.metadata.causation_id == cause for e in events)


async def _act(
    services: ActionServices, state: operation.OperationState, job_id: str, meta: Metadata
) -> tuple[operation.Outcome, str | None]:
    """Take the operation's action on one job: what came of it and why."""
    store = services.store
    found = await load_job(store, job_id)
    if found is None or (state.accounts is not None and found.account_id not in state.accounts):
        return "skipped", "Job not found"
    try:
        await ACTIONS[state.action](services, found.account_id, job_id, meta)
    except InvalidTransition as exc:
        return "skipped", str(exc)
    except (DomainError, QuotaExceeded) as exc:
        return "failed", str(exc)
    return "done", None


def _handle(
    state: operation.OperationState,
    *,
    index: int,
    job_id: str,
    outcome: operation.Outcome,
    reason: str | None,
) -> list[Event]:
    return operation.handle(state, index, job_id, outcome, reason)


async def advance(
    services: ActionServices, operation_id: str, *, budget: int | None = None
) -> operation.OperationState | None:
    """Carry an operation on from its next job, up to `budget` jobs (None: to its end); the
    operation as it then stands. Stops (to be resumed) when another runner moved it on."""
    store = services.store
    repository = operations(store)
    loaded = await repository.read(operation_id)
    state = loaded.state
    if state is None or state.status == "finished":
        return state
    job_ids = await job_ids_of(store, operation_id)
    [requested] = await store.read_stream(operation.stream_id(operation_id), 1, limit=1)
    meta = caused_by(operation_id, requested.metadata)
    cause = operation.stream_id(operation_id)
    version = loaded.version
    first = True
    outcome: operation.Outcome
    reason: str | None
    while state.status == "running" and (budget is None or budget > 0):
        index = state.next
        job_id = job_ids[index]
        if first and await _acted_before(store, job_id, cause):
            # A runner acted on this job and stopped before recording it.
            outcome, reason = "done", None
        else:
            outcome, reason = await _act(services, state, job_id, meta)
            if outcome != "done" and await _acted_before(store, job_id, cause):
                # Refused because another runner of this operation has just acted on it.
                outcome, reason = "done", None
        first = False
        record = functools.partial(
            _handle, index=index, job_id=job_id, outcome=outcome, reason=reason
        )
        try:
            done = await repository.execute(
                operation_id, record, meta, known=Loaded(state, version)
            )
        except DomainError:
            return state  # another runner moved it on: the next pass reads it again
        assert done.state is not None and done.appended is not None
        state, version = done.state, done.state.version
        budget = None if budget is None else budget - 1
    return state
