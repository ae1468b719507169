"""Retention per subscription (issue 25, point 4): a loopback RSS feed the test adds to between
checks, a real node that downloads each item and uploads it to moto's S3, and the retention
pass on a clock the test moves; the files past a subscription's retention leave the bucket,
their jobs stay Completed and say why their file went."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spool.keys import issue
from spool.reactors.subscription_retention import SubscriptionRetention
from spool.reactors.subscriptions import SubscriptionChecks
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until
from tests.test_subscriptions import Clock, Feed, checks_of, subscribe


@pytest.fixture
async def busy(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A cluster with a node whose accounts may check every 10 s."""
    async with start_cluster(subscription_min_interval=10) as c:
        yield c


@pytest.fixture
def feed(media_dir: Path, media_server: MediaServer) -> Feed:
    return Feed(media_dir, media_server)


def retention_of(cluster: Cluster, clock: Clock) -> SubscriptionRetention:
    return SubscriptionRetention(cluster.store, cluster.settings, cluster.storage, clock=clock)


async def _items(
    cluster: Cluster,
    checks: SubscriptionChecks,
    clock: Clock,
    feed: Feed,
    sid: str,
    numbers: range,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Publish each episode (unless it is already), check the feed and wait for its job to
    complete, one after another (so they finish in episode order); the completed jobs, oldest
    first."""
    done: list[dict[str, Any]] = []
    for n in numbers:
        if n not in feed.items:
            feed.publish(n)
        clock.advance(60)
        job_id = await until(
            functools.partial(_checked_into, cluster, checks, sid, f"Episode {n}", headers),
            seconds=20,
        )
        done.append(await _completed(cluster, job_id, headers))
    return done


async def _checked_into(
    cluster: Cluster,
    checks: SubscriptionChecks,
    sid: str,
    title: str,
    headers: dict[str, str] | None,
) -> str | None:
    """A pass of the checks, then the job of the subscription titled `title`, if there is one
    (the subscription's row may need a moment to show it due)."""
    await checks.pass_once()
    return await _job_titled(cluster, sid, title, headers)


async def _job_titled(
    cluster: Cluster, sid: str, title: str, headers: dict[str, str] | None
) -> str | None:
    answer = await cluster.client.get(
        "/jobs", params={"subscription_id": sid}, headers=headers or cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    return next((j["id"] for j in answer.json()["jobs"] if j["title"] == title), None)


async def _completed(
    cluster: Cluster, job_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        answer = await cluster.client.get(f"/jobs/{job_id}", headers=headers or cluster.headers())
        body: dict[str, Any] = answer.json()
        assert body["status"] not in ("Failed", "Cancelled"), body
        return body if body["status"] == "Completed" else None

    return await until(done, seconds=60)


def _stored(cluster: Cluster, job: dict[str, Any]) -> bool:
    return f"media/{job['storage_key']}" in cluster.objects()


async def _file_deletions(
    cluster: Cluster, job_id: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=headers or cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["events"] if e["type"] == "FileDeleted"]


async def _deleted(expected: int, *retentions: SubscriptionRetention) -> int:
    """Passes of each of `retentions` at once until they deleted `expected` files in all (the
    jobs' rows may need a moment to show the last item completed); how many they deleted."""
    total = 0

    async def passes() -> int | None:
        nonlocal total
        total += sum(await asyncio.gather(*(r.pass_once() for r in retentions)))
        return total if total >= expected else None

    return await until(passes, seconds=20)


async def test_keep_last_deletes_the_oldest_files_from_storage_and_their_jobs_say_so(
    busy: Cluster, feed: Feed
) -> None:
    clock = Clock()
    checks = checks_of(busy, clock)
    feed.publish(1)
    sid = await subscribe(busy, feed.url, max_items=10, retention={"keep_last": 2})
    shown = (await busy.client.get(f"/subscriptions/{sid}", headers=busy.headers())).json()
    assert shown["retention"] == {"keep_last": 2, "keep_days": None}
    jobs = await _items(busy, checks, clock, feed, sid, range(1, 5))
    assert all(_stored(busy, j) for j in jobs)

    # Two reactor processes at once: each file is deleted, and recorded deleted, once.
    one, other = retention_of(busy, clock), retention_of(busy, clock)
    assert await _deleted(2, one, other) == 2

    oldest, newest = jobs[:2], jobs[2:]
    for job in oldest:
        assert not _stored(busy, job)
        shown = await busy.job(job["id"])
        assert (shown["status"], shown["file_deleted"]) == ("Completed", True)
        [deletion] = await _file_deletions(busy, job["id"])
        assert deletion["data"]["reason"] == f"retention of subscription {sid}"
        assert deletion["metadata"]["actor"] == "retention"
        assert deletion["metadata"]["causation_id"] == f"subscription-{sid}"
        assert "JobCompleted" in await busy.event_types(job["id"])  # its history stays whole
    for job in newest:
        assert _stored(busy, job)
        assert (await busy.job(job["id"]))["file_deleted"] is False
    assert await one.pass_once() == 0  # nothing more past keep_last

    # Lowered, keep_last applies at the next pass: only the newest stays.
    lowered = await busy.client.patch(
        f"/subscriptions/{sid}", json={"retention": {"keep_last": 1}}, headers=busy.headers()
    )
    assert lowered.status_code == 200, lowered.text
    assert lowered.json()["retention"] == {"keep_last": 1, "keep_days": None}
    assert await _deleted(1, one) == 1
    assert not _stored(busy, newest[0]) and _stored(busy, newest[1])
    assert (await busy.job(newest[0]["id"]))["file_deleted"] is True

    # Without a retention, every file stays.
    cleared = await busy.client.patch(
        f"/subscriptions/{sid}", json={"retention": None}, headers=busy.headers()
    )
    assert cleared.status_code == 200 and cleared.json()["retention"] is None
    assert await one.pass_once() == 0
    assert _stored(busy, newest[1])


async def test_keep_days_deletes_the_files_of_items_that_finished_longer_ago(
    busy: Cluster, feed: Feed
) -> None:
    clock = Clock()
    checks = checks_of(busy, clock)
    feed.publish(1)
    sid = await subscribe(busy, feed.url, max_items=10, retention={"keep_days": 1})
    older, newer = await _items(busy, checks, clock, feed, sid, range(1, 3))
    assert older["finished_at"] < newer["finished_at"]

    # A day after the older one finished, but not yet a day after the newer one.
    midway = (older["finished_at"] + newer["finished_at"]) / 2 / 1000
    clock.now = datetime.fromtimestamp(midway, UTC) + timedelta(days=1)
    retention = retention_of(busy, clock)
    assert await _deleted(1, retention) == 1
    assert not _stored(busy, older) and _stored(busy, newer)
    [deletion] = await _file_deletions(busy, older["id"])
    assert deletion["data"]["reason"] == f"retention of subscription {sid}"

    clock.advance(86400)  # now the newer one's day has passed too
    assert await _deleted(1, retention) == 1
    assert not _stored(busy, newer)
    assert (await busy.job(newer["id"]))["status"] == "Completed"


async def test_retention_never_touches_another_accounts_subscriptions_or_jobs(
    busy: Cluster, feed: Feed, media_dir: Path, media_server: MediaServer
) -> None:
    clock = Clock()
    checks = checks_of(busy, clock)
    other = await issue(busy.store, name="other", admin=False)
    await busy.runner.wait_until("api_keys", other.at)
    theirs = {"x-api-key": other.key}
    their_feed = Feed(media_dir, media_server)
    their_feed.publish(1)
    answer = await busy.client.post(
        "/subscriptions",
        json={"url": their_feed.url, "interval": 60, "retention": {"keep_last": 5}},
        headers=theirs,
    )
    assert answer.status_code == 201, answer.text
    their_sid = answer.json()["subscription_id"]
    feed.publish(1)
    mine = await subscribe(busy, feed.url, max_items=10, retention={"keep_last": 1})

    my_jobs = await _items(busy, checks, clock, feed, mine, range(1, 4))  # checks theirs too
    their_id = await until(lambda: _job_titled(busy, their_sid, "Episode 1", theirs), seconds=20)
    their_job = await _completed(busy, their_id, theirs)

    # My subscription may not be changed by them, and theirs not by me.
    refused = await busy.client.patch(
        f"/subscriptions/{mine}", json={"retention": {"keep_last": 1}}, headers=theirs
    )
    assert refused.status_code == 404
    refused = await busy.client.patch(
        f"/subscriptions/{their_sid}", json={"retention": {"keep_last": 1}}, headers=busy.headers()
    )
    assert refused.status_code == 404

    retention = retention_of(busy, clock)
    assert await _deleted(2, retention) == 2
    assert [_stored(busy, j) for j in my_jobs] == [False, False, True]
    assert _stored(busy, their_job)
    assert await _file_deletions(busy, their_id, theirs) == []
    shown = await busy.client.get(f"/jobs/{their_id}", headers=theirs)
    assert shown.json()["file_deleted"] is False


async def test_a_bad_retention_is_refused_with_a_clear_error_and_changes_nothing(
    start_cluster: StartCluster, feed: Feed
) -> None:
    async with start_cluster(with_node=False, subscription_min_interval=10) as cluster:
        feed.publish(1)
        refusals = [
            ({"keep_last": 0}, "retention.keep_last must be from 1 to 1000"),
            ({"keep_last": 1001}, "retention.keep_last must be from 1 to 1000"),
            ({"keep_days": 0}, "retention.keep_days must be from 1 to 3650"),
            ({}, "retention must give keep_last, keep_days or both"),
            ({"keep_lats": 2}, "unknown field `keep_lats`"),
            ({"keep_last": "2"}, "keep_last"),
            (3, "retention"),
        ]
        for retention, says in refusals:
            answer = await cluster.client.post(
                "/subscriptions",
                json={"url": feed.url, "interval": 60, "retention": retention},
                headers=cluster.headers(),
            )
            assert answer.status_code == 400, (retention, answer.text)
            assert says in answer.json()["error"], (retention, answer.text)
        listed = (await cluster.client.get("/subscriptions", headers=cluster.headers())).json()
        assert listed["subscriptions"] == []

        sid = await subscribe(cluster, feed.url, retention={"keep_last": 3, "keep_days": 30})
        for retention, says in refusals:
            answer = await cluster.client.patch(
                f"/subscriptions/{sid}", json={"retention": retention}, headers=cluster.headers()
            )
            assert answer.status_code == 400, (retention, answer.text)
            assert says in answer.json()["error"], (retention, answer.text)
        shown = (
            await cluster.client.get(f"/subscriptions/{sid}", headers=cluster.headers())
        ).json()
        assert shown["retention"] == {"keep_last": 3, "keep_days": 30}
