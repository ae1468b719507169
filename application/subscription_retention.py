"""Retention of a subscription's items (domain/subscription.py `Retention`): the files of the
items past it are deleted through the one delete of a job's file (application/jobs.py
`delete_job_file`, as `DELETE /jobs/{id}/file` and the bulk `delete_file` run it), so each job
records `FileDeleted` with the reason "retention of subscription <id>", caused by the
subscription's stream. The job stays Completed, its history whole.

Safe in several processes at once: the job's state refuses a second `FileDeleted`, so a file
two passes reach together is recorded deleted once (the later one is refused and moves on).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import NamedTuple

from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import load_job
from spool.adapters.read_models import jobs as job_rows
from spool.application.jobs import delete_job_file
from spool.domain import subscription
from spool.domain.errors import DomainError, InvalidTransition, NotFound
from spool.domain.events import Metadata

log = logging.getLogger("spool.subscriptions")

ACTOR = "retention"
"""The actor of the `FileDeleted` events retention appends."""


def reason_of(subscription_id: str) -> str:
    """Why retention deleted a file, as the job's `FileDeleted` says it."""
    return f"retention of subscription {subscription_id}"


class Retained(NamedTuple):
    """What one pass of a subscription's retention did."""

    deleted: list[str]
    """Jobs whose file it deleted."""
    left: list[str]
    """Jobs whose file the storage would not let go (replaced or removed behind Spool's back,
    or the storage refused): tried again at the next pass."""


async def apply_retention(
    store: EventStore,
    storages: AccountStorages,
    state: subscription.SubscriptionState,
    now: datetime,
    *,
    limit: int,
) -> Retained:
    """Delete the files of up to `limit` of the subscription's items past its retention at
    `now`, oldest first. Nothing while its retention is None, once it is deleted, or while the
    jobs read model has not caught up with every item (the places items are judged by must be
    the log's: the next pass judges them)."""
    retention = state.retention
    if retention is None or state.deleted:
        return Retained([], [])
    past = await job_rows.past_retention(
        store.pool,
        state.account_id,
        state.subscription_id,
        keep_last=retention.keep_last,
        cutoff=retention.cutoff(now),
        limit=limit,
    )
    if not past.settled:
        return Retained([], [])
    meta = Metadata(actor=ACTOR, causation_id=subscription.stream_id(state.subscription_id))
    reason = reason_of(state.subscription_id)
    deleted: list[str] = []
    left: list[str] = []
    for job_id in past.job_ids:
        try:
            await delete_job_file(store, storages, state.account_id, job_id, meta, reason)
        except (InvalidTransition, NotFound):
            continue  # deleted meanwhile (by another pass, or by hand): not this pass's to record
        except DomainError as exc:
            if await _deleted_meanwhile(store, job_id):
                continue  # another pass deleted it between this one's read and its delete
            # By ids only: the error names the storage key, which may hold a title.
            log.warning(
                "retention of subscription %s left job %s's file: %s",
                state.subscription_id,
                job_id,
                type(exc).__name__,
            )
            left.append(job_id)
            continue
        deleted.append(job_id)
    return Retained(deleted, left)


async def _deleted_meanwhile(store: EventStore, job_id: str) -> bool:
    state = await load_job(store, job_id)
    return state is not None and state.file_deleted
