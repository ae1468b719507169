"""The dashboard's subscriptions panel and archive search in a real browser (Debian's chromium).

The cluster, the browser and the page fixtures are tests/test_dashboard_browser.py's (one
cluster for the module); beside them the subscription reactor runs, checking every 0.3 s. Each
test has an account of its own, so its subscriptions and its archive are its alone; the feeds
are loopback RSS files on the media server.
"""

from __future__ import annotations

import dataclasses
import html
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from spool.assembly import SUBSCRIPTIONS
from spool.keys import issue
from tests.fixtures.cluster import TIMINGS
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until
from tests.test_dashboard_browser import (  # noqa: F401 - the fixtures
    WAIT_MS,
    Api,
    artifacts,
    browser,
    connect,
    dash,
    module_bucket,
    module_database,
    page,
)
from tests.test_subscriptions import Feed


@pytest.fixture(scope="module")
async def checking(dash: Api) -> AsyncIterator[Api]:  # noqa: F811
    """The module's cluster with its subscription reactor running (stopped with the cluster)."""
    dash.cluster.start(SUBSCRIPTIONS, timings=dataclasses.replace(TIMINGS, subscriptions_tick=0.3))
    yield dash


class Account:
    """An account of the test's own, with its key, asking the cluster's API."""

    def __init__(self, api: Api, key: str, account_id: str) -> None:
        self.api = api
        self.key = key
        self.account_id = account_id

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        answer = await self.api.cluster.client.get(
            path, params=params, headers={"x-api-key": self.key}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def listed(self, path: str, expect: int, **params: Any) -> list[dict[str, Any]] | None:
        """The list `path` answers (`GET /subscriptions`, `/archive`) once it holds `expect`
        items: its projection follows the log a moment later."""
        body = await self.get(path, **params)
        found: list[dict[str, Any]] = body["subscriptions" if "subscriptions" in body else "items"]
        return found if len(found) == expect else None

    async def empty(self, path: str, **params: Any) -> bool:
        return await self.listed(path, 0, **params) is not None

    async def subscribe(self, url: str, **fields: Any) -> str:
        answer = await self.api.cluster.client.post(
            "/subscriptions",
            json={"url": url, "interval": 3600, **fields},
            headers={"x-api-key": self.key},
        )
        assert answer.status_code == 201, answer.text
        subscription_id: str = answer.json()["subscription_id"]
        return subscription_id


async def account(api: Api) -> Account:
    made = await issue(api.cluster.store, name=f"dash-{uuid.uuid4().hex[:6]}", admin=False)
    await api.cluster.runner.wait_until("api_keys", made.at)
    return Account(api, made.key, made.account_id)


def subscription_row(on: Page, subscription_id: str) -> Any:
    return on.locator(f"#subscriptions-body tr[data-subscription-id='{subscription_id}']")


async def test_a_subscription_added_from_the_page_is_checked_and_opens_its_jobs(
    page: Page,  # noqa: F811
    checking: Api,
    media_dir: Path,
    media_server: MediaServer,
    artifacts: Path,  # noqa: F811
) -> None:
    me = await account(checking)
    feed = Feed(media_dir, media_server)
    feed.publish(1, 2)
    await connect(page, checking, me.key)
    await expect(page.locator("#subscriptions-body")).to_contain_text("No subscriptions yet")

    await page.fill("#subscription-url", feed.url)
    await page.fill("#subscription-interval", "60")
    await page.fill("#subscription-max-items", "5")
    await page.select_option("#subscription-format", "mkv")
    await page.click("#subscribe-form button[type=submit]")
    await expect(page.locator("#subscriptions-message")).to_contain_text("Subscribed")
    [made] = await until(lambda: me.listed("/subscriptions", 1), seconds=20)
    assert (made["url"], made["interval"], made["max_items"]) == (feed.url, 3600, 5)
    assert made["options"]["format"] == "mkv"
    sid = made["subscription_id"]

    # Its first check runs at once: the row says how it ended and counts its new items.
    row = subscription_row(page, sid)
    await expect(row.locator(".url")).to_have_text(feed.url)
    await expect(row.locator(".last-check")).to_contain_text(
        "finished · 2 seen · 2 new", timeout=WAIT_MS
    )
    await expect(row.locator(".subscription-status")).to_have_text("active")
    await expect(row.locator(".items")).to_have_text("2 jobs")
    shown = await me.get(f"/subscriptions/{sid}")
    when = "ms => new Date(ms).toLocaleString([], { hour12: false })"
    next_check = await page.evaluate(when, shown["next_check_at"])
    await expect(row.locator(".next-check")).to_have_text(next_check)

    # Its jobs: the job browser filtered by the subscription, the filter in the URL's hash.
    await row.locator("a.subscription-jobs").click()
    await expect(page.locator("#filter-subscription-id")).to_have_text(sid)
    assert f"subscription_id={sid}" in page.url
    jobs = page.locator("#jobs-body tr[data-job-id]")
    await expect(jobs.locator(".status")).to_have_text(["Completed"] * 2, timeout=WAIT_MS)
    assert sorted(await jobs.locator(".title-text").all_text_contents()) == [
        "Episode 1",
        "Episode 2",
    ]
    listed = await me.get("/jobs", subscription_id=sid)
    assert sorted(await jobs.evaluate_all("rows => rows.map(r => r.dataset.jobId)")) == sorted(
        j["id"] for j in listed["jobs"]
    )

    # Its check history, on demand.
    await row.locator("button.subscription-checks").click()
    checks = page.locator("#checks-body tr[data-check-id]")
    await expect(checks).to_have_count(1)
    await expect(checks.locator(".check-status")).to_have_text("finished")
    await expect(checks.locator(".seen")).to_have_text("2")
    await expect(checks.locator(".new")).to_have_text("2")
    await expect(page.locator("#checks-url")).to_have_text(feed.url)
    await page.screenshot(path=str(artifacts / "dashboard-subscriptions.png"), full_page=True)


async def test_pause_resume_and_delete_a_subscription_from_the_page(
    page: Page,  # noqa: F811
    checking: Api,
    media_dir: Path,
    media_server: MediaServer,
) -> None:
    me = await account(checking)
    feed = Feed(media_dir, media_server)
    feed.publish(1)
    sid = await me.subscribe(feed.url)
    await connect(page, checking, me.key)
    row = subscription_row(page, sid)
    await expect(row.locator(".subscription-status")).to_contain_text("active")

    await row.locator("button.pause").click()
    await expect(page.locator("#subscriptions-message")).to_contain_text(f"{sid}: paused")
    await expect(row.locator(".subscription-status")).to_have_text("paused")
    await expect(row.locator(".next-check")).to_have_text("none while paused")
    shown = await me.get(f"/subscriptions/{sid}")
    assert (shown["status"], shown["next_check_at"]) == ("paused", None)

    await row.locator("button.resume").click()
    await expect(page.locator("#subscriptions-message")).to_contain_text(f"{sid}: resumed")
    await expect(row.locator(".subscription-status")).to_contain_text("active")
    assert (await me.get(f"/subscriptions/{sid}"))["status"] == "active"

    # Delete asks first: declined, nothing happens; confirmed, the subscription is gone.
    await row.locator("button.subscription-delete").click()
    await expect(page.locator("#confirm-text")).to_have_text("Delete this subscription?")
    await expect(page.locator("#confirm-filter")).to_contain_text(feed.url)
    await page.click("#confirm-no")
    await expect(page.locator("#subscriptions-message")).to_have_text("Nothing was done.")
    assert (await me.get(f"/subscriptions/{sid}"))["status"] == "active"
    await row.locator("button.subscription-delete").click()
    await page.click("#confirm-yes")
    await expect(page.locator("#subscriptions-message")).to_contain_text(f"{sid}: deleted")
    await expect(row).to_have_count(0)
    await until(lambda: me.empty("/subscriptions"), seconds=20)


async def test_a_refused_subscription_shows_the_apis_reason_and_makes_nothing(
    page: Page,  # noqa: F811
    checking: Api,
    media_dir: Path,
    media_server: MediaServer,
) -> None:
    me = await account(checking)
    feed = Feed(media_dir, media_server)
    feed.publish(1)
    await connect(page, checking, me.key)
    message = page.locator("#subscriptions-message")
    for url, interval, says in [
        (media_server.url("clip.mp4"), "60", "The URL lists no entries"),  # a single video
        ("ftp://127.0.0.1/feed.xml", "60", "Invalid URL"),
        (feed.url, "1", "interval must be at least 300 seconds"),
    ]:
        await page.fill("#subscription-url", url)
        await page.fill("#subscription-interval", interval)
        await page.click("#subscribe-form button[type=submit]")
        await expect(message).to_contain_text(f"The subscription was not made: {says}")
        await expect(message).to_have_class("muted error-text")
        assert await page.input_value("#subscription-url") == url  # kept, to be corrected
    assert await me.empty("/subscriptions")
    await expect(page.locator("#subscriptions-body")).to_contain_text("No subscriptions yet")


def hostile_feed(media_dir: Path, media_server: MediaServer, title: str) -> tuple[str, Path]:
    """A feed of one entry titled `title` whose enclosure is the clip (a URL of its own): its
    URL and its file."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    path = media_dir / f"{name}.xml"
    path.write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title><item>'
        f"<title>{html.escape(title)}</title><guid>{name}-1</guid>"
        f'<enclosure url="{media_server.url("clip.mp4")}?{name}" type="video/mp4" length="1"/>'
        "</item></channel></rss>"
    )
    return media_server.url(f"{name}.xml"), path


async def test_the_archive_search_finds_an_item_by_title_and_remove_lets_it_be_fetched_again(
    page: Page,  # noqa: F811
    checking: Api,
    media_dir: Path,
    media_server: MediaServer,
) -> None:
    me = await account(checking)
    tag = uuid.uuid4().hex[:8]
    url, _ = hostile_feed(media_dir, media_server, f"Archived episode {tag}")
    await me.subscribe(url)
    [item] = await until(lambda: me.listed("/archive", 1, q=tag), seconds=90)
    await connect(page, checking, me.key)

    await page.fill("#archive-q", f"episode {tag.upper()}")  # any case
    rows = page.locator("#archive-body tr[data-archive-id]")
    await expect(rows).to_have_count(1)
    row = rows.first
    await expect(row.locator(".title")).to_have_text(f"Archived episode {tag}")
    await expect(row.locator(".archive-id")).to_have_text(item["archive_id"])
    await expect(row.locator(".url")).to_have_text(item["url"])
    await expect(row.locator("a.archive-job")).to_have_text(item["job_id"][:8])
    await page.fill("#archive-q", f"nothing-{tag}")
    await expect(page.locator("#archive-body")).to_contain_text("No archived item matches")
    await page.fill("#archive-q", tag)
    await expect(rows).to_have_count(1)

    # Its job, in the job browser: listed, and its timeline open.
    await row.locator("a.archive-job").click()
    await expect(page.locator("#filter-q")).to_have_value(item["url"])
    await expect(page.locator(f"#jobs-body tr[data-job-id='{item['job_id']}']")).to_be_visible()
    await expect(page.locator("#timeline-job")).to_have_text(item["job_id"])

    # Remove asks first; confirmed, the archive no longer holds it.
    await row.locator("button.archive-remove").click()
    await expect(page.locator("#confirm-text")).to_have_text("Remove this item from the archive?")
    await expect(page.locator("#confirm-filter")).to_contain_text(item["archive_id"])
    await page.click("#confirm-yes")
    await expect(page.locator("#archive-message")).to_contain_text("Removed")
    await expect(rows).to_have_count(0)
    await until(lambda: me.empty("/archive", q=tag), seconds=20)
    await expect(page.locator("#archive-body")).to_contain_text("No archived item matches")


async def test_hostile_entry_titles_urls_and_check_errors_show_as_text(
    page: Page,  # noqa: F811
    checking: Api,
    media_dir: Path,
    media_server: MediaServer,
) -> None:
    me = await account(checking)
    cluster = checking.cluster
    # An admin lets this account check every second, so that a check fails within the test.
    allowed = await cluster.client.put(
        f"/admin/accounts/{me.account_id}/quotas",
        json={"min_subscription_interval": 1},
        headers=cluster.headers(cluster.admin_key),
    )
    assert allowed.status_code == 200, allowed.text
    title = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>Episode"
    url, path = hostile_feed(media_dir, media_server, title)
    hostile_url = f"{url}?x=<img/src=x/onerror=window.pwned=3>"
    sid = await me.subscribe(hostile_url, interval=1)
    await until(lambda: me.listed("/archive", 1, q="script"), seconds=90)
    path.unlink()  # the source is gone: the next check records why it could not read it

    async def failed_check() -> str | None:
        last = (await me.get(f"/subscriptions/{sid}"))["last_check"]
        error: str | None = last and last["error"]
        return error

    error = await until(failed_check, seconds=30)
    await connect(page, checking, me.key)

    row = subscription_row(page, sid)
    shown = (await me.get(f"/subscriptions/{sid}"))["url"]
    assert "<img/src=x" in shown  # kept as the user typed it
    await expect(row.locator(".url")).to_have_text(shown)
    await expect(row.locator(".last-check")).to_contain_text("failed")
    await expect(row.locator(".check-error")).not_to_be_empty()
    assert error.startswith((await row.locator(".check-error").text_content() or "x")[:40])
    await row.locator("button.subscription-checks").click()
    await expect(page.locator("#checks-url")).to_have_text(shown)
    await expect(page.locator("#checks-body .check-status").first).to_have_text("failed")
    await page.fill("#archive-q", "<script>")
    await expect(page.locator("#archive-body tr[data-archive-id] .title")).to_have_text(title)
    await row.locator("a.subscription-jobs").click()
    await expect(page.locator("#jobs-body .title-text")).to_have_text(title)
    hostile = "#subscriptions-body img, #archive-body img, #jobs-body img, script:not([src])"
    assert await page.locator(hostile).count() == 0
    assert await page.evaluate("window.pwned") is None
    paused = await cluster.client.post(f"/subscriptions/{sid}/pause", headers={"x-api-key": me.key})
    assert paused.status_code == 200, paused.text  # no more checks a second for the module
