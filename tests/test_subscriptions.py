"""Subscriptions (issue 25): a loopback RSS feed the test changes between checks, checked by
the subscription reactor on a clock the test moves; new entries become jobs exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from spool.adapters.subscription_store import claim_check
from spool.application.subscriptions import record_check
from spool.domain import subscription
from spool.domain.events import Metadata
from spool.keys import issue
from spool.reactors.subscriptions import SubscriptionChecks
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """The reactors' clock: now, until the test moves it on."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Feed:
    """An RSS feed on the loopback media server whose items the test adds between checks;
    item `n` is published on day `n` and its enclosure is the test clip."""

    def __init__(self, media_dir: Path, media_server: MediaServer) -> None:
        self.name = f"feed-{uuid.uuid4().hex[:8]}"
        self.path = media_dir / f"{self.name}.xml"
        self.url = media_server.url(f"{self.name}.xml")
        self.clip = media_server.url("clip.mp4")
        self.items: list[int] = []

    def publish(self, *numbers: int) -> None:
        self.items.extend(numbers)
        items = "".join(
            f"<item><title>Episode {n}</title><guid>{self.name}-{n}</guid>"
            f"<pubDate>{format_datetime(DAY0 + timedelta(days=n))}</pubDate>"
            f'<enclosure url="{self.clip}?ep={n}" type="video/mp4" length="1"/></item>'
            for n in reversed(self.items)  # newest first, as feeds list
        )
        self.path.write_text(
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>{self.name}</title>'
            f"{items}</channel></rss>"
        )


@pytest.fixture
async def quiet(start_cluster: StartCluster) -> AsyncIterator[Cluster]:
    """A cluster without a node (the jobs wait) whose accounts may check every 10 s."""
    async with start_cluster(with_node=False, subscription_min_interval=10) as c:
        yield c


@pytest.fixture
def feed(media_dir: Path, media_server: MediaServer) -> Feed:
    return Feed(media_dir, media_server)


def checks_of(cluster: Cluster, clock: Clock, name: str = "a") -> SubscriptionChecks:
    return SubscriptionChecks(cluster.store, cluster.settings, clock=clock, name=name)


async def subscribe(cluster: Cluster, url: str, **fields: Any) -> str:
    answer = await cluster.client.post(
        "/subscriptions", json={"url": url, "interval": 60, **fields}, headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    subscription_id: str = answer.json()["subscription_id"]
    return subscription_id


async def titles_created(cluster: Cluster, subscription_id: str) -> list[str]:
    """The titles of the jobs the subscription created, from the log itself (oldest first)."""
    rows = await cluster.pool.fetch(
        "SELECT data->>'title' FROM events WHERE type = 'JobCreated'"
        " AND data->>'subscription_id' = $1 ORDER BY position",
        subscription_id,
    )
    return [r[0] for r in rows]


async def checks_started(cluster: Cluster, subscription_id: str) -> int:
    count: int = await cluster.pool.fetchval(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND type = 'CheckStarted'",
        subscription.stream_id(subscription_id),
    )
    return count


async def checked(checks: SubscriptionChecks) -> int:
    """One pass that checked something (the projection may need a moment to show the
    subscription due)."""
    return await until(checks.pass_once, seconds=20)


async def test_new_entries_become_jobs_of_the_subscription_titled_from_the_entry(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1, 2)
    sid = await subscribe(quiet, feed.url, max_items=5, format="mkv", labels={"show": "x"})
    clock = Clock()
    checks = checks_of(quiet, clock)

    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2"]

    feed.publish(3)
    clock.advance(60)
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2", "Episode 3"]

    listed = await until(
        lambda: _jobs_of(quiet, sid, expect=3), seconds=20
    )  # GET /jobs?subscription_id= reads the projection
    assert {j["title"] for j in listed} == {"Episode 1", "Episode 2", "Episode 3"}
    for j in listed:
        assert j["subscription_id"] == sid
        assert j["format"] == "mkv" and j["labels"] == {"show": "x"}
        assert j["url"].startswith(feed.clip)

    history = await until(lambda: _checks(quiet, sid, expect=2), seconds=20)
    latest, first = history
    assert (latest["status"], latest["seen"], latest["new"]) == ("finished", 3, 1)
    assert (first["seen"], first["new"], len(first["job_ids"])) == (2, 2, 2)
    shown = (await quiet.client.get(f"/subscriptions/{sid}", headers=quiet.headers())).json()
    assert (shown["checks"], shown["items"], shown["last_check"]["new"]) == (2, 3, 1)


async def _jobs_of(cluster: Cluster, sid: str, expect: int) -> list[dict[str, Any]] | None:
    answer = await cluster.client.get(
        "/jobs", params={"subscription_id": sid}, headers=cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    jobs: list[dict[str, Any]] = answer.json()["jobs"]
    return jobs if len(jobs) == expect else None


async def _checks(cluster: Cluster, sid: str, expect: int) -> list[dict[str, Any]] | None:
    answer = await cluster.client.get(f"/subscriptions/{sid}/checks", headers=cluster.headers())
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["checks"]
    done = [c for c in found if c["status"] == "finished"]
    return found if len(done) == expect else None


async def test_two_reactors_checking_at_once_create_each_entry_once(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1, 2, 3)
    sid = await subscribe(quiet, feed.url, max_items=10)
    clock = Clock()
    one, other = checks_of(quiet, clock, "one"), checks_of(quiet, clock, "other")

    async def both() -> int:
        return sum(await asyncio.gather(one.pass_once(), other.pass_once()))

    assert await until(both, seconds=20) == 1  # one claimed the check; the other lost the race
    feed.publish(4)
    clock.advance(60)
    assert await until(both, seconds=20) == 1
    clock.advance(60)
    assert await until(both, seconds=20) == 1

    titles = await titles_created(quiet, sid)
    assert sorted(titles) == [f"Episode {n}" for n in (1, 2, 3, 4)]
    assert await checks_started(quiet, sid) == 3


async def test_a_check_whose_process_died_is_taken_over_and_its_late_result_lands_nowhere(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1, 2)
    sid = await subscribe(quiet, feed.url, max_items=10)
    clock = Clock()
    meta = Metadata(actor="test")
    dead_check = str(uuid.uuid4())
    timeout = quiet.settings.subscription_check_timeout

    # A process claims the check and dies before it records anything.
    claimed = await claim_check(
        quiet.store,
        sid,
        quiet.account_id,
        lambda s: subscription.start_check(s, clock(), dead_check, "dead", timeout),
        meta,
        limit=quiet.settings.subscription_checks,
        since=clock() - timedelta(seconds=timeout),
    )
    assert claimed is not None and claimed.running is not None

    # Restarted, Spool leaves a claim alone until it times out, then takes it over.
    restarted = checks_of(quiet, clock, "restarted")
    assert await restarted.pass_once() == 0
    clock.advance(timeout + 1)
    assert await checked(restarted) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2"]

    # The dead process comes back with its listing: nothing of it lands.
    late = [
        subscription.Seen(subscription.item_job_id(sid, f"late-{n}"), f"Late {n}", feed.clip, None)
        for n in range(2)
    ]
    outcome = await record_check(quiet.store, sid, dead_check, late, clock(), meta)
    assert outcome.state is None and outcome.job_ids == []
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2"]

    # A new process after another restart sees the same entries: no job twice.
    clock.advance(60)
    assert await checked(checks_of(quiet, clock, "again")) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2"]
    history = await until(lambda: _checks(quiet, sid, expect=2), seconds=20)
    assert [c["status"] for c in history][-1] == "abandoned"


async def test_checks_missed_while_spool_was_down_run_once(quiet: Cluster, feed: Feed) -> None:
    feed.publish(1)
    sid = await subscribe(quiet, feed.url)
    clock = Clock()
    assert await checked(checks_of(quiet, clock)) == 1

    clock.advance(60 * 10 + 5)  # ten intervals pass with Spool down
    back = checks_of(quiet, clock, "back")
    assert await checked(back) == 1
    assert await back.pass_once() == 0  # the next is an interval after this one
    assert await checks_started(quiet, sid) == 2
    clock.advance(60)
    assert await checked(back) == 1


async def test_a_paused_subscription_is_not_checked_until_resumed(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1)
    sid = await subscribe(quiet, feed.url)
    clock = Clock()
    checks = checks_of(quiet, clock)
    assert await checked(checks) == 1

    paused = await quiet.client.post(f"/subscriptions/{sid}/pause", headers=quiet.headers())
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert paused.json()["next_check_at"] is None
    feed.publish(2)
    clock.advance(600)
    assert await checks.pass_once() == 0
    assert await checks_started(quiet, sid) == 1

    resumed = await quiet.client.post(f"/subscriptions/{sid}/resume", headers=quiet.headers())
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 1", "Episode 2"]


async def test_the_first_check_takes_the_newest_max_items_and_leaves_the_rest(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1, 2, 3, 4, 5)
    sid = await subscribe(quiet, feed.url, max_items=2)
    clock = Clock()
    checks = checks_of(quiet, clock)
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 4", "Episode 5"]

    feed.publish(6)
    clock.advance(60)
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 4", "Episode 5", "Episode 6"]


async def test_since_leaves_older_entries_and_max_items_spreads_the_rest_over_checks(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1, 2, 3, 4, 5)
    since = (DAY0 + timedelta(days=3)).isoformat()
    sid = await subscribe(quiet, feed.url, max_items=2, since=since)
    clock = Clock()
    checks = checks_of(quiet, clock)
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 4", "Episode 5"]
    clock.advance(60)
    assert await checked(checks) == 1
    assert sorted(await titles_created(quiet, sid)) == ["Episode 3", "Episode 4", "Episode 5"]
    clock.advance(60)
    assert await checked(checks) == 1  # nothing more: 1 and 2 are older than `since`
    assert len(await titles_created(quiet, sid)) == 3


async def test_another_account_cannot_read_change_or_delete_my_subscription(
    quiet: Cluster, feed: Feed
) -> None:
    feed.publish(1)
    sid = await subscribe(quiet, feed.url)
    other = await issue(quiet.store, name="other", admin=False)
    await quiet.runner.wait_until("api_keys", other.at)
    theirs = {"x-api-key": other.key}
    for method, path, body in [
        ("GET", f"/subscriptions/{sid}", None),
        ("PATCH", f"/subscriptions/{sid}", {"interval": 600}),
        ("DELETE", f"/subscriptions/{sid}", None),
        ("POST", f"/subscriptions/{sid}/pause", None),
        ("POST", f"/subscriptions/{sid}/resume", None),
        ("GET", f"/subscriptions/{sid}/checks", None),
    ]:
        answer = await quiet.client.request(method, path, json=body, headers=theirs)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json() == {"error": "Subscription not found"}
    listed = await quiet.client.get("/subscriptions", headers=theirs)
    assert listed.status_code == 200 and listed.json()["subscriptions"] == []

    mine = await quiet.client.get(f"/subscriptions/{sid}", headers=quiet.headers())
    assert mine.status_code == 200 and mine.json()["interval"] == 60
    assert mine.json()["status"] == "active"


async def test_my_subscriptions_are_listed_changed_and_deleted(quiet: Cluster, feed: Feed) -> None:
    feed.publish(1)
    first = await subscribe(quiet, feed.url)
    second = await subscribe(quiet, feed.url, jitter=5)
    page = await until(lambda: _listed(quiet, 2, limit=1), seconds=20)
    assert [s["subscription_id"] for s in page["subscriptions"]] == [second]
    rest = await quiet.client.get(
        "/subscriptions", params={"cursor": page["next_cursor"]}, headers=quiet.headers()
    )
    assert [s["subscription_id"] for s in rest.json()["subscriptions"]] == [first]

    changed = await quiet.client.patch(
        f"/subscriptions/{first}",
        json={"interval": 120, "max_items": 3, "since": "2026-02-01", "labels": {"a": "b"}},
        headers=quiet.headers(),
    )
    assert changed.status_code == 200, changed.text
    shown = changed.json()
    assert (shown["interval"], shown["max_items"], shown["labels"]) == (120, 3, {"a": "b"})
    assert shown["since"] == int(datetime(2026, 2, 1, tzinfo=UTC).timestamp() * 1000)
    cleared = await quiet.client.patch(
        f"/subscriptions/{first}", json={"since": None}, headers=quiet.headers()
    )
    assert cleared.json()["since"] is None and cleared.json()["interval"] == 120

    gone = await quiet.client.delete(f"/subscriptions/{first}", headers=quiet.headers())
    assert gone.status_code == 200
    again = await quiet.client.get(f"/subscriptions/{first}", headers=quiet.headers())
    assert again.status_code == 404
    await until(lambda: _listed(quiet, 1), seconds=20)


async def _listed(cluster: Cluster, expect: int, limit: int = 50) -> dict[str, Any] | None:
    answer = await cluster.client.get(
        "/subscriptions", params={"limit": limit}, headers=cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    count = len(page["subscriptions"]) + (1 if page["next_cursor"] else 0)
    return page if count == expect else None


async def test_bad_subscriptions_are_refused_with_a_clear_error(
    start_cluster: StartCluster, feed: Feed, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, max_subscriptions=1) as cluster:
        feed.publish(1)
        refusals = [
            ({"url": feed.url, "interval": 60}, "interval must be at least 300 seconds"),
            ({"url": "ftp://example.com/feed", "interval": 600}, "Invalid URL"),
            ({"url": feed.url, "interval": 600, "fromat": "mkv"}, "unknown field `fromat`"),
            ({"url": feed.url, "interval": "600"}, "(field: interval)"),
            ({"url": feed.url, "interval": 600, "max_items": 0}, "max_items must be from 1"),
            ({"url": feed.url, "interval": 600, "jitter": 400}, "jitter"),
            ({"url": feed.url, "interval": 600, "since": "someday"}, "since"),
            ({"url": media_server.url("clip.mp4"), "interval": 600}, "lists no entries"),
            ({"url": media_server.url("missing.xml"), "interval": 600}, ""),
        ]
        for body, says in refusals:
            answer = await cluster.client.post(
                "/subscriptions", json=body, headers=cluster.headers()
            )
            assert answer.status_code == 400, (body, answer.text)
            assert says in answer.json()["error"], (body, answer.text)

        # An admin lets this account check more often.
        allowed = await cluster.client.put(
            f"/admin/accounts/{cluster.account_id}/quotas",
            json={"min_subscription_interval": 60},
            headers=cluster.headers(cluster.admin_key),
        )
        assert allowed.status_code == 200, allowed.text
        sid = await subscribe(cluster, feed.url)
        too_often = await cluster.client.patch(
            f"/subscriptions/{sid}", json={"interval": 30}, headers=cluster.headers()
        )
        assert too_often.status_code == 400
        assert "at least 60 seconds" in too_often.json()["error"]

        # One subscription is this cluster's bound per account.
        over = await cluster.client.post(
            "/subscriptions", json={"url": feed.url, "interval": 600}, headers=cluster.headers()
        )
        assert over.status_code == 403, over.text
        assert over.json()["quota"] == "max_subscriptions"
        listed = (await cluster.client.get("/subscriptions", headers=cluster.headers())).json()
        assert len(listed["subscriptions"]) <= 1
