"""The job and batch commands of `spool.application`, against a real event store.

No HTTP here: each test calls one command the way a handler does and reads the log after it.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import pytest

from spool.adapters.account_policy_store import QuotaExceeded, record
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import load_job
from spool.adapters.playlists import Entry, Playlist
from spool.application import batches, jobs
from spool.application.idempotency import Idempotent
from spool.domain import account_policy, idempotency, job
from spool.domain.errors import IdempotencyKeyReused, InvalidCommand, InvalidTransition, NotFound
from spool.domain.events import Metadata

META = Metadata(actor="test")


def _account() -> str:
    return uuid.uuid4().hex


def _new(url: str = "https://media.example/clip.mp4") -> jobs.NewJob:
    return jobs.NewJob(url=url, options=job.JobOptions())


def _idem(account_id: str, body: bytes, key: str = "key-1") -> Idempotent:
    return Idempotent(
        account_id=account_id,
        key=key,
        stream_id=idempotency.stream_id(account_id, key),
        method="POST",
        path="/jobs",
        fingerprint=idempotency.fingerprint("POST", "/jobs", body),
    )


async def _jobs_created(pool: asyncpg.Pool, account_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'JobCreated' AND data->>'account_id' = $1",
        account_id,
    )
    return count


async def _quotas(store: EventStore, account_id: str, **quotas: int) -> None:
    events = account_policy.set_quotas(account_id, account_policy.Quotas(**quotas))
    await record(store, account_id, events, META)


async def test_creating_a_job_over_the_quota_appends_nothing(store: EventStore) -> None:
    account_id = _account()
    await _quotas(store, account_id, max_jobs_per_day=1)
    await jobs.create_job(store, account_id, _new(), None, META)

    with pytest.raises(QuotaExceeded):
        await jobs.create_job(store, account_id, _new(), None, META)
    assert await _jobs_created(store.pool, account_id) == 1


async def test_a_bulk_over_the_quota_creates_none_of_its_jobs(store: EventStore) -> None:
    account_id = _account()
    await _quotas(store, account_id, max_jobs_per_day=2)

    three = [_new(f"https://media.example/{i}.mp4") for i in range(3)]
    with pytest.raises(QuotaExceeded):
        await batches.create_bulk(store, account_id, three, paused=False, idem=None, meta=META)
    assert await _jobs_created(store.pool, account_id) == 0


async def test_a_repeated_creating_request_gets_the_first_answer_and_creates_nothing_more(
    store: EventStore,
) -> None:
    account_id = _account()
    idem = _idem(account_id, b'{"url": "https://media.example/clip.mp4"}')

    first = await jobs.create_job(store, account_id, _new(), idem, META)
    again = await jobs.create_job(store, account_id, _new(), idem, META)

    assert first.earlier is None
    assert again.earlier is not None
    assert msgspec.json.decode(again.earlier.answer, type=jobs.JobCreatedAnswer) == first.answer
    assert await _jobs_created(store.pool, account_id) == 1


async def test_an_idempotency_key_used_for_another_request_is_refused(store: EventStore) -> None:
    account_id = _account()
    await jobs.create_job(store, account_id, _new(), _idem(account_id, b"one"), META)

    with pytest.raises(IdempotencyKeyReused):
        await jobs.create_job(store, account_id, _new(), _idem(account_id, b"two"), META)
    assert await _jobs_created(store.pool, account_id) == 1


async def test_another_accounts_job_is_not_found_and_stays_as_it_was(store: EventStore) -> None:
    owner, stranger = _account(), _account()
    made = await jobs.create_job(store, owner, _new(), None, META)

    with pytest.raises(NotFound):
        await jobs.cancel_job(store, stranger, made.answer.job_id, META)
    with pytest.raises(NotFound):
        await jobs.cancel_job(store, stranger, "not-a-job-id", META)
    state = await load_job(store, made.answer.job_id)
    assert state is not None and state.status == "Pending"


async def test_cancelling_a_cancelled_job_is_refused_and_appends_nothing(
    store: EventStore,
) -> None:
    account_id = _account()
    job_id = (await jobs.create_job(store, account_id, _new(), None, META)).answer.job_id
    cancelled = await jobs.cancel_job(store, account_id, job_id, META)
    assert cancelled.status == "Cancelled"

    with pytest.raises(InvalidTransition):
        await jobs.cancel_job(store, account_id, job_id, META)
    after = await load_job(store, job_id)
    assert after is not None and after.version == cancelled.version


async def test_retrying_past_max_running_jobs_leaves_the_job_cancelled(store: EventStore) -> None:
    account_id = _account()
    stopped = (await jobs.create_job(store, account_id, _new(), None, META)).answer.job_id
    await jobs.cancel_job(store, account_id, stopped, META)
    await jobs.create_job(store, account_id, _new(), None, META)  # running (pending)
    await _quotas(store, account_id, max_running_jobs=1)

    with pytest.raises(QuotaExceeded):
        await jobs.retry_job(store, account_id, stopped, META)
    state = await load_job(store, stopped)
    assert state is not None and state.status == "Cancelled"


async def test_a_retried_job_is_pending_again(store: EventStore) -> None:
    account_id = _account()
    job_id = (await jobs.create_job(store, account_id, _new(), None, META)).answer.job_id
    await jobs.cancel_job(store, account_id, job_id, META)

    assert (await jobs.retry_job(store, account_id, job_id, META)).status == "Pending"


async def test_a_playlist_with_no_entries_creates_nothing(store: EventStore) -> None:
    account_id = _account()
    empty = Playlist(title="Nothing yet", entries=[])

    with pytest.raises(InvalidCommand, match="no entries"):
        await jobs.create_playlist(
            store, account_id, _new(), empty, paused=False, idem=None, meta=META
        )
    assert await _jobs_created(store.pool, account_id) == 0


async def test_a_playlists_episodes_are_named_by_their_titles_not_the_shared_filename(
    store: EventStore,
) -> None:
    account_id = _account()
    named = jobs.NewJob(url="https://feed.example/rss", options=job.JobOptions(filename="show"))
    playlist = Playlist(
        title="A show",
        entries=[
            Entry("https://feed.example/1.mp3", "One"),
            Entry("https://feed.example/2.mp3", "Two"),
        ],
    )

    made = await jobs.create_playlist(
        store, account_id, named, playlist, paused=True, idem=None, meta=META
    )

    assert [e.title for e in made.answer.episode_jobs] == ["One", "Two"]
    for episode in made.answer.episode_jobs:
        state = await load_job(store, episode.job_id)
        assert state is not None
        assert state.options.filename is None and state.held and state.title == episode.title


async def test_starting_a_paused_batch_releases_every_held_job(store: EventStore) -> None:
    account_id = _account()
    two = [_new(f"https://media.example/{i}.mp4") for i in range(2)]
    made = await batches.create_bulk(store, account_id, two, paused=True, idem=None, meta=META)

    started = await batches.start_batch(store, account_id, made.answer.batch_id, META)

    assert started == batches.BatchChanged(made.answer.batch_id, 2)
    for job_id in made.answer.job_ids:
        state = await load_job(store, job_id)
        assert state is not None and not state.held
    with pytest.raises(InvalidTransition):
        await batches.start_batch(store, account_id, made.answer.batch_id, META)


async def test_renaming_reports_each_job_it_could_not_rename_and_renames_the_rest(
    store: EventStore,
) -> None:
    account_id = _account()
    two = [_new(f"https://media.example/{i}.mp4") for i in range(2)]
    made = await batches.create_bulk(store, account_id, two, paused=True, idem=None, meta=META)
    first, second = made.answer.job_ids
    stranger = str(uuid.uuid4())

    answer = await batches.rename_jobs(
        store,
        account_id,
        made.answer.batch_id,
        [
            batches.JobRename(first, "intro"),
            batches.JobRename(second, "../x", refused="filename is not allowed"),
            batches.JobRename(stranger, "whatever"),
        ],
        META,
    )

    assert answer.updated == 1
    assert [(e.job_id, e.error) for e in answer.errors] == [
        (second, "filename is not allowed"),
        (stranger, "Job is not in this batch"),
    ]
    renamed = await load_job(store, first)
    assert renamed is not None and renamed.options.filename == "intro"


async def test_cancelling_a_batch_cancels_its_unfinished_jobs_once(store: EventStore) -> None:
    account_id = _account()
    two = [_new(f"https://media.example/{i}.mp4") for i in range(2)]
    made = await batches.create_bulk(store, account_id, two, paused=False, idem=None, meta=META)
    await jobs.cancel_job(store, account_id, made.answer.job_ids[0], META)

    cancelled = await batches.cancel_batch(store, account_id, made.answer.batch_id, META)

    assert cancelled.jobs == 1
    with pytest.raises(InvalidTransition):
        await batches.cancel_batch(store, account_id, made.answer.batch_id, META)


async def test_another_accounts_batch_is_not_found(store: EventStore) -> None:
    made = await batches.create_bulk(store, _account(), [_new()], paused=True, idem=None, meta=META)

    with pytest.raises(NotFound):
        await batches.start_batch(store, _account(), made.answer.batch_id, META)
