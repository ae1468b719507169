"""Job commands: create one job (or a playlist's batch), cancel, retry, delete a job's file.

Each takes the account it acts for, what it needs (the event store, storages) and the metadata
its events carry; it returns what it made or raises a `DomainError` that each surface renders
in its own shape (`api/errors.py`, `refusal`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import asyncpg
import msgspec

from spool.adapters.account_policy_store import change_admitted
from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.job_store import jobs
from spool.adapters.owned_objects import delete_all_owned
from spool.adapters.playlists import Playlist
from spool.adapters.storage import StorageError
from spool.application.idempotency import Idempotent, append_once
from spool.application.ownership import decide_owned, load_owned
from spool.domain import batch, job
from spool.domain.errors import Conflict, InvalidCommand, StorageRefused
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.idempotency import RequestRecorded
from spool.domain.source_data import made_safe
from spool.domain.storage_config import StorageConfigured

A = TypeVar("A", bound=msgspec.Struct)


class NewJob(msgspec.Struct, frozen=True):
    """One job about to be created: its (validated) URL and options."""

    url: str
    options: job.JobOptions
    title: str | None = None
    storage: StorageConfigured | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class JobCreatedAnswer(msgspec.Struct):
    job_id: str


class Episode(msgspec.Struct):
    job_id: str
    title: str | None
    url: str


class BatchCreatedAnswer(msgspec.Struct):
    """What `POST /jobs` answers for a playlist or feed URL."""

    batch_id: str
    total_episodes: int
    episode_jobs: list[Episode]


class Created(NamedTuple, Generic[A]):
    """What a creating command made, or the record of the copy of its request that won."""

    answer: A
    earlier: RequestRecorded | None


class BatchPlan(NamedTuple):
    """A new batch's id, its jobs' ids, and the appends that create them."""

    batch_id: str
    job_ids: list[str]
    appends: list[StreamAppend]


def plan_jobs(
    meta: Metadata,
    account_id: str,
    new_jobs: list[NewJob],
    job_ids: list[str],
    *,
    batch_id: str | None = None,
    held: bool = False,
    subscription_id: str | None = None,
) -> list[StreamAppend]:
    """The appends that create `new_jobs` as `job_ids`, each a new stream (at version 0): what
    a batch and a subscription's check append with their own event, in one transaction."""
    return [
        StreamAppend(
            job.stream_id(job_id),
            [
                NewEvent(e, meta)
                for e in job.create(
                    job_id=job_id,
                    account_id=account_id,
                    url=new.url,
                    options=new.options,
                    batch_id=batch_id,
                    held=held,
                    title=new.title,
                    storage=new.storage,
                    labels=new.labels,
                    subscription_id=subscription_id,
                )
            ],
            0,
        )
        for job_id, new in zip(job_ids, new_jobs, strict=True)
    ]


def entry_jobs(source: NewJob, entries: list[tuple[str, str | None]]) -> list[NewJob]:
    """The jobs of a feed's or playlist's entries (URL, title), each with `source`'s options
    and storage but a name of its own (its title), not one shared `filename` that every
    episode would overwrite."""
    options = msgspec.structs.replace(source.options, filename=None)
    return [
        NewJob(url=url, options=options, title=title, storage=source.storage, labels=source.labels)
        for url, title in entries
    ]


def plan_batch(
    meta: Metadata,
    account_id: str,
    new_jobs: list[NewJob],
    *,
    kind: batch.BatchKind,
    paused: bool,
    source_url: str | None = None,
    title: str | None = None,
) -> BatchPlan:
    """A batch and all its jobs, to be appended in one transaction: all of them, or none."""
    batch_id = str(uuid.uuid4())
    job_ids = [str(uuid.uuid4()) for _ in new_jobs]
    appends = plan_jobs(meta, account_id, new_jobs, job_ids, batch_id=batch_id, held=paused)
    created = batch.BatchCreated(
        batch_id=batch_id,
        account_id=account_id,
        kind=kind,
        job_ids=job_ids,
        paused=paused,
        source_url=source_url,
        title=title,
    )
    appends.append(StreamAppend(batch.stream_id(batch_id), [NewEvent(created, meta)], 0))
    return BatchPlan(batch_id, job_ids, appends)


async def create_job(
    store: EventStore, account_id: str, new: NewJob, idem: Idempotent | None, meta: Metadata
) -> Created[JobCreatedAnswer]:
    """One job, if it fits the account's quotas (QuotaExceeded else, and nothing appended)."""
    job_id = str(uuid.uuid4())
    events = job.create(
        job_id=job_id,
        account_id=account_id,
        url=new.url,
        options=new.options,
        storage=new.storage,
        labels=new.labels,
    )
    appends = [StreamAppend(job.stream_id(job_id), [NewEvent(e, meta) for e in events], 0)]
    answer = JobCreatedAnswer(job_id=job_id)
    earlier = await append_once(store, appends, answer, idem, meta, quota_account=account_id)
    return Created(answer, earlier)


async def create_playlist(
    store: EventStore,
    account_id: str,
    source: NewJob,
    playlist: Playlist,
    *,
    paused: bool,
    idem: Idempotent | None,
    meta: Metadata,
) -> Created[BatchCreatedAnswer]:
    """A batch of a playlist's or feed's entries, each a job with `source`'s options."""
    if not playlist.entries:
        raise InvalidCommand("The playlist or feed has no entries")
    # Titles and URLs are the source's: made safe to record, as a node makes a download's.
    playlist = made_safe(playlist)
    new_jobs = entry_jobs(source, [(e.url, e.title) for e in playlist.entries])
    plan = plan_batch(
        meta,
        account_id,
        new_jobs,
        kind="playlist",
        paused=paused,
        source_url=source.url,
        title=playlist.title,
    )
    answer = BatchCreatedAnswer(
        batch_id=plan.batch_id,
        total_episodes=len(plan.job_ids),
        episode_jobs=[
            Episode(job_id=j, title=e.title, url=e.url)
            for j, e in zip(plan.job_ids, playlist.entries, strict=True)
        ],
    )
    earlier = await append_once(store, plan.appends, answer, idem, meta, quota_account=account_id)
    return Created(answer, earlier)


async def owned_job(store: EventStore, account_id: str, raw_id: str) -> job.JobState:
    """A job of the account's, exact to its last event; NotFound for anyone else's."""
    return await load_owned(jobs(store), account_id, raw_id, "Job")


async def decide(
    store: EventStore,
    account_id: str,
    job_id: str,
    decision: Callable[[job.JobState], list[Event]],
    meta: Metadata,
    *,
    conn: asyncpg.Connection | None = None,
) -> job.JobState:
    """Run a command on one of the account's jobs; InvalidTransition when it does not apply."""
    return await decide_owned(jobs(store), account_id, job_id, "Job", decision, meta, conn=conn)


async def cancel_job(
    store: EventStore, account_id: str, job_id: str, meta: Metadata
) -> job.JobState:
    """Cancel a Pending or Processing job; its running stage is aborted by its node."""
    return await decide(store, account_id, job_id, job.cancel, meta)


async def retry_job(
    store: EventStore,
    account_id: str,
    job_id: str,
    meta: Metadata,
    from_stage: job.Stage = "download",
) -> job.JobState:
    """Start a Failed or Cancelled job again (from download, or from the mux or upload of the
    files its last run left on its node), if one more running job fits the quotas."""
    owned = await owned_job(store, account_id, job_id)
    job.retry(owned, from_stage)  # a job that cannot be retried is refused whatever the quota

    def decision(state: job.JobState) -> list[Event]:
        return job.retry(state, from_stage)

    async def retry(conn: asyncpg.Connection | None) -> job.JobState:
        return await decide(store, account_id, job_id, decision, meta, conn=conn)

    return await change_admitted(store, account_id, retry)


async def delete_job_file(
    store: EventStore,
    storages: AccountStorages,
    account_id: str,
    job_id: str,
    meta: Metadata,
    reason: str | None = None,
) -> job.JobState:
    """Delete the files a completed job wrote, if they are still the ones it wrote; `reason`
    (recorded with `FileDeleted`) says why when it is not the user's own request. A file
    deleted already is refused (InvalidTransition) by the job's state, so however many callers
    race, `FileDeleted` is appended once."""
    state = await owned_job(store, account_id, job_id)
    job.delete_file(state)  # refused before any storage is touched
    storage = await storages.for_job(state.account_id, state.storage_override)
    try:
        # Only what this job wrote, as it wrote it: an object replaced since (by another
        # job, or behind Spool's back) or gone is not this job's to delete.
        changed, deleted = await delete_all_owned(
            storage, job.recorded_objects(state), state.job_id
        )
    except StorageError as exc:
        raise StorageRefused(f"Storage refused the delete: {exc}") from None
    if changed:
        removed = f"only {', '.join(deleted)} was deleted" if deleted else "nothing was deleted"
        raise Conflict(
            f"The file at {changed[0]} is no longer the one this job wrote "
            f"(replaced or removed); {removed}"
        )
    return await decide(store, account_id, job_id, lambda s: job.delete_file(s, reason), meta)


async def label_job(
    store: EventStore,
    account_id: str,
    job_id: str,
    changes: dict[str, str | None],
    meta: Metadata,
) -> job.JobState:
    """Set (a string) or remove (None) some of a job's labels, keeping the others."""
    return await decide(store, account_id, job_id, lambda s: job.label(s, changes), meta)


async def pause_job(
    store: EventStore, account_id: str, job_id: str, meta: Metadata
) -> job.JobState:
    """Pause one of the account's jobs: its running stage finishes, the next does not start."""
    return await decide(store, account_id, job_id, job.pause, meta)


async def resume_job(
    store: EventStore, account_id: str, job_id: str, meta: Metadata
) -> job.JobState:
    """Resume one of the account's paused jobs; the pipeline dispatches what is due."""
    return await decide(store, account_id, job_id, job.resume, meta)
