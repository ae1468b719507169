"""Batches: jobs created together (bulk, or the entries of a playlist or feed), maybe paused."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import InvalidTransition
from domain.events import Event, event

BatchKind = Literal["bulk", "playlist"]
BatchStatus = Literal["paused", "processing", "cancelled"]


@event
class BatchCreated(Event, frozen=True, kw_only=True):
    batch_id: str
    account_id: str
    kind: BatchKind
    job_ids: list[str]
    paused: bool = False
    source_url: str | None = None
    title: str | None = None


@event
class BatchStarted(Event, frozen=True, kw_only=True):
    started_jobs: int


@event
class BatchCancelled(Event, frozen=True, kw_only=True):
    cancelled_jobs: int


EVENT_TYPES: frozenset[str] = frozenset({"BatchCreated", "BatchStarted", "BatchCancelled"})


class BatchState(msgspec.Struct, kw_only=True):
    batch_id: str
    account_id: str
    kind: BatchKind
    job_ids: list[str]
    status: BatchStatus
    source_url: str | None = None
    title: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    version: int = 0


def stream_id(batch_id: str) -> str:
    """The event stream that holds one batch."""
    return f"batch-{batch_id}"


def start(state: BatchState, held_jobs: int) -> list[Event]:
    """Start a paused batch; its held jobs are released by the caller."""
    if state.status != "paused":
        raise InvalidTransition(f"Batch is {state.status}. Only paused batches can be started.")
    return [BatchStarted(started_jobs=held_jobs)]


def require_paused_for_rename(state: BatchState) -> None:
    """Renames are only for a batch that has not started."""
    if state.status != "paused":
        raise InvalidTransition("Batch is not paused. Only paused batches can be renamed.")


def cancel(state: BatchState, cancelled_jobs: int) -> list[Event]:
    if state.status == "cancelled":
        raise InvalidTransition("Batch is already cancelled")
    return [BatchCancelled(cancelled_jobs=cancelled_jobs)]


def evolve(state: BatchState | None, ev: Event, at: datetime, version: int) -> BatchState:
    """Apply one recorded event to a batch's state."""
    if isinstance(ev, BatchCreated):
        return BatchState(
            batch_id=ev.batch_id,
            account_id=ev.account_id,
            kind=ev.kind,
            job_ids=ev.job_ids,
            status="paused" if ev.paused else "processing",
            source_url=ev.source_url,
            title=ev.title,
            created_at=at,
            started_at=None if ev.paused else at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before BatchCreated")
    state.version = version
    if isinstance(ev, BatchStarted):
        state.status, state.started_at = "processing", at
    elif isinstance(ev, BatchCancelled):
        state.status = "cancelled"
    return state


def fold(events: list[tuple[Event, datetime, int]]) -> BatchState | None:
    state: BatchState | None = None
    for ev, at, version in events:
        state = evolve(state, ev, at, version)
    return state
