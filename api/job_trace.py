"""`GET /jobs/{id}/trace`: a job's causal chain, from the requests that acted on it.

Every request's events carry its request id as `correlation_id`, and every event that follows
from them (the pipeline's units of work, the node's stage events, webhook deliveries, the
reconciler's repairs) carries it on, with `causation_id` naming the event that caused it (its
global position) or, for a request's own events, the request id. The trace lists, in log order,
every event of any stream that carries one of the job's correlation ids (other jobs that one
request created, such as a batch's, are left out) and the arq job ids each event enqueued.

A client may choose its own request id (`X-Request-ID`), and another account may choose the
same one: the trace reads only the streams of the job's account, so another account's requests
never join it, whoever asks. An admin also sees the cluster's own streams (nodes, config) that
carry the job's correlation ids; a user sees only their account's.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.params import Parameter

from spool.adapters.event_store import EventStore
from spool.adapters.queue import unit_for, webhook_for
from spool.api.auth import Principal
from spool.api.jobs import load_job
from spool.api.services import Services
from spool.domain import job
from spool.domain.events import RecordedEvent


class TraceRequest(msgspec.Struct):
    """One request that acted on the job: the start of a correlation."""

    correlation_id: str
    actor: str | None
    first_event: str
    recorded_at: str


class TraceEvent(msgspec.Struct):
    position: int
    stream_id: str
    version: int
    type: str
    metadata: dict[str, Any]
    recorded_at: str
    dispatched: list[str]
    """The arq job ids this event enqueued (their ids are deterministic)."""


class TracePage(msgspec.Struct):
    job_id: str
    requests: list[TraceRequest]
    events: list[TraceEvent]
    next_after: int | None
    """Pass as `after` for the next page; null on the last."""


def _requests(history: list[RecordedEvent]) -> list[TraceRequest]:
    seen: dict[str, TraceRequest] = {}
    for e in history:
        cid = e.metadata.correlation_id
        if cid is not None and cid not in seen:
            seen[cid] = TraceRequest(
                correlation_id=cid,
                actor=e.metadata.actor,
                first_event=e.type,
                recorded_at=e.recorded_at.isoformat(),
            )
    return list(seen.values())


def _dispatched(state: job.JobState, e: RecordedEvent) -> list[str]:
    if e.stream_id != job.stream_id(state.job_id):
        return []
    units: list[str] = []
    unit = unit_for(state.job_id, e.data)
    if unit is not None:
        units.append(unit.unit_id)
    if state.options.webhook_url is not None:
        delivery = webhook_for(
            state.job_id, e.data, e.version, progress=state.options.enable_progress_webhook
        )
        if delivery is not None:
            units.append(delivery.unit_id)
    return units


@get(
    "/jobs/{job_id:str}/trace",
    tags=["jobs"],
)
async def job_trace(
    services: Services,
    job_id: str,
    principal: Principal,
    after: Annotated[int, Parameter(ge=0)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> TracePage:
    """A job's causal chain: each request that acted on it and every event that followed."""
    state = await load_job(services, job_id, principal)
    store: EventStore = services.store
    own = job.stream_id(state.job_id)
    requests = _requests(await store.read_stream(own))
    found = await store.read_correlated(
        [r.correlation_id for r in requests],
        after=after,
        limit=limit + 1,
        leave_out_prefix="job-",
        keep_stream=own,
        owner=state.account_id,
        unowned_too=principal.admin,
    )
    page = found[:limit]
    return TracePage(
        job_id=state.job_id,
        requests=requests,
        events=[
            TraceEvent(
                position=e.position,
                stream_id=e.stream_id,
                version=e.version,
                type=e.type,
                metadata=msgspec.to_builtins(e.metadata),
                recorded_at=e.recorded_at.isoformat(),
                dispatched=_dispatched(state, e),
            )
            for e in page
        ],
        next_after=page[-1].position if len(found) > limit else None,
    )
