"""The dashboard page in a real browser: Debian's chromium driven by Playwright.

One cluster (API over a loopback port, worker node, S3) and one browser serve the whole module;
each test opens its own browser context, so session storage starts empty. The screenshot of the
populated page is written to `$SPOOL_TEST_ARTIFACTS/dashboard.png`, or without that variable to
`<pytest basetemp>/artifacts/dashboard.png`; beside it, the page refusing a bad key
(`dashboard-bad-key.png`) and while the API is down (`dashboard-server-down.png`).
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from spool.adapters.database import create_database, drop_database
from spool.api.app import create_app
from spool.domain import failure_groups
from tests.fixtures.browser import chromium
from tests.fixtures.cluster import Cluster, running_cluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.media import MediaServer
from tests.fixtures.s3 import S3Server
from tests.fixtures.waiting import until
from tests.test_job_query import fail

WAIT_MS = 30_000
POLL_MS = 1_000
"""How often the page polls while its tab is visible (TICK_MS in api/static/dashboard.js)."""
"""The longest a test waits for the page to show a job's progress (a whole run fits in it)."""

# What the page shows after one poll or one click: generous, for a CI machine under load.
expect.set_options(timeout=10_000)


class Api:
    """The cluster's API served on one loopback port, which a test can stop and start again."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port: int | None = None
        self._serving: AbstractAsyncContextManager[int] | None = None

    async def start(self) -> None:
        """Start a new API process's worth: a fresh app over the cluster, on the same port."""
        c = self.cluster
        app = create_app(pool=c.pool, store=c.store, settings=c.settings, storage=c.storage)
        self._serving = serve_on_loopback(app, port=self.port)
        self.port = await self._serving.__aenter__()

    async def stop(self) -> None:
        assert self._serving is not None
        serving, self._serving = self._serving, None
        await serving.__aexit__(None, None, None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard"


@pytest.fixture(scope="module")
async def module_database(server_url: str, migrated_template: str) -> AsyncIterator[str]:
    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, template=migrated_template)
    yield url
    await drop_database(server_url, name)


@pytest.fixture(scope="module")
def module_bucket(s3_server: S3Server) -> Iterator[str]:
    name = f"spool-dash-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    yield name


@pytest.fixture(scope="module")
async def dash(
    module_database: str,
    redis_url: str,
    s3_server: S3Server,
    module_bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Api]:
    """A running cluster whose API listens on a loopback port."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        env.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        storage_url = (
            f"s3://{module_bucket}/media?endpoint={s3_server.endpoint_url}"
            f"&region={s3_server.region}"
        )
        async with running_cluster(
            database_url=module_database,
            redis_url=redis_url,
            storage_url=storage_url,
            bucket=module_bucket,
            s3=s3_server,
            data_dir=tmp_path_factory.mktemp("dashboard") / "data",
        ) as cluster:
            api = Api(cluster)
            await api.start()
            try:
                yield api
            finally:
                if api._serving is not None:
                    await api.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium (never a downloaded one), one for the module."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser, dash: Api) -> AsyncIterator[Page]:
    """A fresh browser context's page; afterwards, no request URL it made carried a key."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1100})
    opened = await context.new_page()
    urls: list[str] = []
    opened.on("request", lambda r: urls.append(r.url))
    yield opened
    await context.close()
    keys = [dash.cluster.key, dash.cluster.admin_key, BAD_KEY]
    assert not [u for u in urls if any(k in u for k in keys)], "a key went into a URL"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("SPOOL_TEST_ARTIFACTS")
    folder = Path(given) if given else tmp_path_factory.getbasetemp() / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


BAD_KEY = "sk_this_key_was_never_issued"


async def connect(page: Page, api: Api, key: str) -> None:
    """Open the dashboard and paste `key`, as an operator would."""
    await page.goto(api.url)
    await page.fill("#api-key", key)
    await page.click("#key-form button[type=submit]")


async def as_admin(api: Api, path: str) -> dict[str, Any]:
    """GET `path` with the admin key (the page's jobs are the admin account's)."""
    cluster = api.cluster
    answer = await cluster.client.get(path, headers=cluster.headers(cluster.admin_key))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_bad_key_shows_the_error_and_asks_again(
    page: Page, dash: Api, artifacts: Path
) -> None:
    await connect(page, dash, BAD_KEY)
    await expect(page.locator("#banner")).to_contain_text("Invalid API Key")
    await page.screenshot(path=str(artifacts / "dashboard-bad-key.png"))
    await expect(page.locator("#banner")).to_contain_text("refused")
    await expect(page.locator("#key-form")).to_be_visible()
    await expect(page.locator("#board")).to_be_hidden()
    await expect(page.locator("#welcome")).to_contain_text("Paste an API key")
    assert await page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    assert BAD_KEY not in page.url


async def test_a_user_key_sees_its_own_jobs_and_a_note_instead_of_cluster_panels(
    page: Page, dash: Api
) -> None:
    await connect(page, dash, dash.cluster.key)
    await expect(page.locator("#session-kind")).to_have_text("connected · user key")
    await expect(page.locator("#viewers-note")).to_contain_text("needs an admin key")
    await expect(page.locator("#cluster-note")).to_contain_text("not an admin key")
    await expect(page.locator("#jobs-body")).to_contain_text("No jobs yet")
    # Bad input: the API's 400 reason shows, and nothing is created.
    await page.fill("#job-url", "http://127.0.0.1:9/clip.mp4")
    await page.fill("#job-folder", "../escape")
    await page.click("#submit-form button[type=submit]")
    await expect(page.locator("#jobs-message")).to_contain_text(
        re.compile(r"The job was not created: .*[Ff]older")
    )
    await expect(page.locator("#jobs-body")).to_contain_text("No jobs yet")
    # The key stays in this tab's session storage, and a reload reconnects with it.
    assert (
        await page.evaluate("sessionStorage.getItem('spool.dashboard.apiKey')") == dash.cluster.key
    )
    await page.reload()
    await expect(page.locator("#session-kind")).to_have_text("connected · user key")
    await page.click("#forget-key")
    await expect(page.locator("#key-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_counters_and_the_node_change_while_a_job_runs(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    cluster = dash.cluster
    assert cluster.node is not None
    await connect(page, dash, cluster.admin_key)
    node_row = page.locator(f"#nodes-body tr[data-node-id='{cluster.settings.node_id}']")
    await expect(node_row).to_contain_text("s ago")
    await expect(node_row.locator(".meter em").first).to_contain_text("%")
    await expect(page.locator("#downloading")).to_have_text("0")

    # A download that holds until it is cancelled: however slow the machine, a poll sees it.
    url, _ = media_server.held_url("clip.mp4")
    job_id = await cluster.create(url)
    await expect(page.locator("#downloading")).to_have_text("1", timeout=WAIT_MS)
    await expect(node_row.locator(".stage-counts")).to_have_text("1 / 0 / 0", timeout=WAIT_MS)
    cancelled = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    assert cancelled.status_code == 200
    await expect(page.locator("#downloading")).to_have_text("0", timeout=WAIT_MS)
    await expect(node_row.locator(".stage-counts")).to_have_text("0 / 0 / 0", timeout=WAIT_MS)


async def test_a_job_submitted_from_the_page_completes_with_its_timeline_and_chart(
    page: Page, dash: Api, media_server: MediaServer, artifacts: Path
) -> None:
    await connect(page, dash, dash.cluster.admin_key)
    await page.fill("#job-url", media_server.url("clip.mp4"))
    await page.select_option("#job-format", "mkv")
    await page.fill("#job-folder", "dashboard")
    await page.click("#submit-form button[type=submit]")
    await expect(page.locator("#jobs-message")).to_contain_text("Created job")
    job_id = (await page.locator("#jobs-message").text_content() or "").split()[-1].rstrip(".")
    row = page.locator(f"#jobs-body tr[data-job-id='{job_id}']")
    await expect(row.locator(".status")).to_have_text("Completed", timeout=WAIT_MS)
    await expect(row.locator(".progress")).to_contain_text("upload 100%")
    done = await as_admin(dash, f"/jobs/{job_id}")
    assert done["folder"] == "dashboard"
    # Play and Download open the job's own link (presigned here), which any client can fetch.
    for name in ("Play", "Download"):
        link = row.get_by_role("link", name=name)
        await expect(link).to_be_visible()
        href = await link.get_attribute("href") or ""
        assert href.split("?")[0] == done["s3_url"].split("?")[0]
        fetched = await page.request.get(href)
        assert fetched.status == 200
        assert len(await fetched.body()) == done["file_size"]

    await row.click()
    timeline = page.locator("#timeline-list")
    await expect(timeline.locator("li").first).to_contain_text("JobCreated")
    await expect(timeline.locator("li[data-type='JobCompleted']")).to_have_count(1)
    await expect(page.locator("#throughput-totals")).to_contain_text("1 completed", timeout=WAIT_MS)
    assert await page.locator("#jobs-chart rect.completed").count() >= 1
    assert await page.locator("#bytes-chart rect.bytes").count() >= 1

    shot = artifacts / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_cancel_and_retry_from_the_page(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    await connect(page, dash, dash.cluster.admin_key)
    # The download holds until the cancel has landed, however slow the machine.
    url, release = media_server.held_url("clip.mp4")
    await page.fill("#job-url", url)
    await page.click("#submit-form button[type=submit]")
    await expect(page.locator("#jobs-message")).to_contain_text("Created job")
    job_id = (await page.locator("#jobs-message").text_content() or "").split()[-1].rstrip(".")
    row = page.locator(f"#jobs-body tr[data-job-id='{job_id}']")

    await row.locator("button.cancel").click()
    await expect(row.locator(".status")).to_have_text("Cancelled", timeout=WAIT_MS)
    await expect(row.locator("button.cancel")).to_be_hidden()
    release.set()
    await row.locator("button.retry").click()
    await expect(page.locator("#jobs-message")).to_contain_text("retried")
    await expect(row.locator(".status")).to_have_text("Completed", timeout=WAIT_MS)
    events = (await as_admin(dash, f"/jobs/{job_id}/events?limit=1000"))["events"]
    assert [e["type"] for e in events].count("JobCompleted") == 1
    assert "JobCancelled" in [e["type"] for e in events]


async def test_pause_and_resume_from_the_page(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    await connect(page, dash, dash.cluster.admin_key)
    # The download holds until the pause has landed: the mux after it must not start.
    url, release = media_server.held_url("clip.mp4")
    await page.fill("#job-url", url)
    await page.click("#submit-form button[type=submit]")
    await expect(page.locator("#jobs-message")).to_contain_text("Created job")
    job_id = (await page.locator("#jobs-message").text_content() or "").split()[-1].rstrip(".")
    row = page.locator(f"#jobs-body tr[data-job-id='{job_id}']")

    await row.locator("button.pause").click()
    await expect(page.locator("#jobs-message")).to_contain_text("paused")
    await expect(row.locator(".status")).to_contain_text("paused (job)", timeout=WAIT_MS)
    await expect(row.locator("button.pause")).to_be_hidden()
    release.set()

    async def download_done() -> bool:
        events = (await as_admin(dash, f"/jobs/{job_id}/events?limit=1000"))["events"]
        return "DownloadCompleted" in [e["type"] for e in events]

    await until(download_done, seconds=60)
    await expect(row.locator(".status")).to_contain_text("paused (job)")
    await row.locator("button.resume").click()
    await expect(page.locator("#jobs-message")).to_contain_text("resumed")
    await expect(row.locator(".status")).to_have_text("Completed", timeout=WAIT_MS)
    events = (await as_admin(dash, f"/jobs/{job_id}/events?limit=1000"))["events"]
    assert [e["type"] for e in events].count("JobCompleted") == 1
    assert "JobPaused" in [e["type"] for e in events] and "JobResumed" in [
        e["type"] for e in events
    ]


async def test_the_viewer_list_filters_and_pages(page: Page, dash: Api) -> None:
    now = int(time.time() * 1000)
    stream = f"dash-{uuid.uuid4().hex[:6]}"
    events = [
        {
            "type": "connect",
            "harnessType": "RTMP_VIEWER",
            "state": "PLAYING",
            "streamKey": stream,
            "remoteAddress": f"127.0.0.{n + 10}",
            "startTime": now - n * 1000,
        }
        for n in range(11)
    ]
    events.append(
        {"type": "connect", "harnessType": "TRANSCODER", "state": "RUNNING", "streamKey": stream}
    )
    bearer = {"Authorization": f"Bearer {dash.cluster.admin_key}"}
    answer = await dash.cluster.client.post(
        "/api/cluster/viewers/events", json={"events": events}, headers=bearer
    )
    assert answer.status_code == 200, answer.text

    await connect(page, dash, dash.cluster.admin_key)
    await page.fill("#viewer-search", stream)
    await expect(page.locator("#viewer-page")).to_have_text(
        "page 1 of 2 · 12 viewers", timeout=WAIT_MS
    )
    await expect(page.locator("#viewers-body tr")).to_have_count(10)
    await page.click("#viewer-next")
    await expect(page.locator("#viewer-page")).to_have_text("page 2 of 2 · 12 viewers")
    await expect(page.locator("#viewers-body tr")).to_have_count(2)
    await page.select_option("#viewer-system", "false")  # back to page 1, system clients hidden
    await expect(page.locator("#viewer-page")).to_have_text("page 1 of 2 · 11 viewers")
    await page.select_option("#viewer-system", "")
    await page.select_option("#viewer-harness", "TRANSCODER")
    await expect(page.locator("#viewer-page")).to_have_text("page 1 of 1 · 1 viewer")
    await expect(page.locator("#viewers-body")).to_contain_text("RUNNING")


async def test_a_hidden_tab_stops_polling_and_resumes_when_shown(page: Page, dash: Api) -> None:
    # The page counts its own polls as it makes them, and its timers run on a clock the test
    # moves: three polling periods pass at once, with no poll left unseen in flight.
    await page.add_init_script(
        """(() => {
            window.clusterPolls = 0;
            const fetchNow = window.fetch;
            window.fetch = (path, ...rest) => {
                if (String(path).endsWith("/dashboard/cluster")) window.clusterPolls += 1;
                return fetchNow(path, ...rest);
            };
        })()"""
    )
    await page.clock.install()
    await connect(page, dash, dash.cluster.admin_key)
    await expect(page.locator("#downloading")).to_have_text("0")
    await page.evaluate(
        """() => {
            Object.defineProperty(document, 'hidden', {value: true, configurable: true});
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    await _until_no_poll_in_flight(page)
    before = await page.evaluate("window.clusterPolls")
    await page.clock.run_for(3 * POLL_MS)
    assert await page.evaluate("window.clusterPolls") == before, "a hidden tab kept polling"
    async with page.expect_request(lambda r: r.url.endswith("/dashboard/cluster")):
        await page.evaluate(
            """() => {
                Object.defineProperty(document, 'hidden', {value: false, configurable: true});
                document.dispatchEvent(new Event('visibilitychange'));
            }"""
        )


async def _until_no_poll_in_flight(page: Page) -> None:
    """Wait until the page's last poll has been answered: a poll still in flight would make
    the timer's next ticks skip theirs, and a page that never stopped would go unnoticed."""
    async with asyncio.timeout(WAIT_MS / 1000):
        while await page.evaluate("state.busy"):
            await asyncio.sleep(0.05)


async def test_the_page_recovers_by_itself_when_the_api_comes_back(
    page: Page, dash: Api, artifacts: Path
) -> None:
    await connect(page, dash, dash.cluster.admin_key)
    await expect(page.locator("#downloading")).to_have_text("0")
    await dash.stop()
    try:
        await expect(page.locator("#banner")).to_contain_text(
            "Cannot reach the Spool API", timeout=WAIT_MS
        )
        await expect(page.locator("#board")).to_have_class(re.compile("stale"))
        await page.screenshot(path=str(artifacts / "dashboard-server-down.png"))
    finally:
        await dash.start()
    await expect(page.locator("#banner")).to_be_hidden(timeout=WAIT_MS)
    await expect(page.locator("#board")).not_to_have_class(re.compile("stale"))
    await expect(page.locator("#session-kind")).to_have_text("connected · admin key")
    updated = await page.locator("#updated").text_content()
    await expect(page.locator("#updated")).not_to_have_text(updated or "", timeout=WAIT_MS)


# -- the job browser (issue 24, Deliver 6): filters, search, paging, failure groups, bulk ------


async def waiting_jobs(api: Api, media_server: MediaServer, *labelled: dict[str, str]) -> list[str]:
    """Jobs of the admin account (the page's), one per labels given, in a paused batch: they
    stay Pending and no node takes them. Each is named `<first label value>-<index>`."""
    cluster = api.cluster
    items = [
        {
            "url": media_server.url("clip.mp4"),
            "labels": labels,
            "filename": f"{next(iter(labels.values()))}-{i}",
        }
        for i, labels in enumerate(labelled)
    ]
    answer = await cluster.client.post(
        "/jobs/bulk",
        json={"jobs": items, "paused": True},
        headers=cluster.headers(cluster.admin_key),
    )
    assert answer.status_code == 201, answer.text
    made: list[str] = answer.json()["job_ids"]
    return made


async def failed_jobs(
    api: Api, media_server: MediaServer, reason: str, *labelled: dict[str, str]
) -> list[str]:
    """Waiting jobs whose download then failed for good with `reason`, as a node records it."""
    made = await waiting_jobs(api, media_server, *labelled)
    for job_id in made:
        await fail(api.cluster.store, job_id, reason)
    return made


def job_rows(page: Page) -> Any:
    return page.locator("#jobs-body tr[data-job-id]")


async def shown_ids(page: Page) -> list[str]:
    return [await tr.get_attribute("data-job-id") or "" for tr in await job_rows(page).all()]


async def test_filters_and_search_narrow_the_job_list_and_paging_walks_it(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    tag = f"browse{uuid.uuid4().hex[:8]}"
    made = await waiting_jobs(dash, media_server, *[{"set": tag} for _ in range(7)])
    failed = made[:2]
    for job_id in failed:
        await fail(dash.cluster.store, job_id, f"HTTP Error 410 for https://{tag}.example/a")

    await connect(page, dash, dash.cluster.admin_key)
    await page.select_option("#jobs-limit", "5")
    await page.fill("#filter-label", f"set={tag}")
    # The filters go into the URL's hash as they apply: a shared or reloaded view opens them.
    await expect(page).to_have_url(re.compile(f"label=set%3D{tag}&limit=5$"))
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs", timeout=WAIT_MS)
    first = await shown_ids(page)
    await page.click("#jobs-next")
    await expect(page.locator("#jobs-page")).to_have_text("page 2 · 2 jobs")
    await expect(page.locator("#jobs-next")).to_be_disabled()
    second = await shown_ids(page)
    assert sorted(first + second) == sorted(made)  # newest first, each job once
    await page.click("#jobs-prev")
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs")
    assert await shown_ids(page) == first

    await page.reload()
    await expect(page.locator("#filter-label")).to_have_value(f"set={tag}")
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs", timeout=WAIT_MS)

    await page.check("#filter-status input[value=Failed]")
    await expect(job_rows(page)).to_have_count(2)
    assert sorted(await shown_ids(page)) == sorted(failed)
    await expect(job_rows(page).first.locator(".reason")).to_have_text(
        f"HTTP Error 410 for https://{tag}.example/a"
    )
    await page.check("#filter-status input[value=Pending]")  # several statuses: any of them
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs")
    await page.uncheck("#filter-status input[value=Pending]")
    await page.select_option("#filter-error-type", "warning")  # they failed as errors
    await expect(page.locator("#jobs-body")).to_contain_text("No job matches these filters.")
    await page.select_option("#filter-error-type", "")
    await page.uncheck("#filter-status input[value=Failed]")
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs")
    await page.fill("#filter-host", "elsewhere.example")
    await expect(page.locator("#jobs-body")).to_contain_text("No job matches these filters.")
    await page.fill("#filter-host", "127.0.0.1")
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs")
    await page.fill("#filter-created-after", "2099-01-01T00:00")
    await expect(page.locator("#jobs-body")).to_contain_text("No job matches these filters.")
    await page.fill("#filter-created-after", "")
    await page.fill("#filter-created-before", "2099-01-01T00:00")
    await expect(page.locator("#jobs-page")).to_have_text("page 1 · 5 jobs")
    await page.fill("#filter-q", f"{tag}-4")  # the file name of one job
    await expect(job_rows(page)).to_have_count(1)
    assert await shown_ids(page) == [made[4]]
    await expect(job_rows(page).locator(".title")).to_contain_text(f"set={tag}")
    await page.click("#filter-clear")
    await expect(page.locator("#filter-label")).to_have_value("")
    await expect(page).not_to_have_url(re.compile("label="))


async def test_a_failure_group_filters_the_list_and_retry_all_reruns_each_job_once(
    page: Page, dash: Api, media_server: MediaServer, artifacts: Path
) -> None:
    tag = f"group{uuid.uuid4().hex[:8]}"
    reason = f"HTTP Error 418 for https://{tag}.example/clip"
    group = failure_groups.group_id("error", reason)
    made = await failed_jobs(dash, media_server, reason, *[{"grp": tag} for _ in range(3)])

    await connect(page, dash, dash.cluster.admin_key)
    row = page.locator(f"#failures-body tr[data-group-id='{group}']")
    await expect(row.locator(".count")).to_have_text("3", timeout=WAIT_MS)
    await expect(row.locator(".message")).to_have_text("HTTP Error 418 for <url>")
    await row.locator(".message").click()
    await expect(page.locator("#filter-group-id")).to_have_text(group)
    await expect(job_rows(page)).to_have_count(3)
    assert sorted(await shown_ids(page)) == sorted(made)
    await expect(page).to_have_url(re.compile(f"failure_group={group}"))

    await row.get_by_role("button", name="Retry all").click()
    await expect(page.locator("#confirm-text")).to_have_text("Retry 3 jobs?")
    await expect(page.locator("#confirm-filter")).to_have_text(
        f"Jobs matching failure group {group}."
    )
    await page.screenshot(path=str(artifacts / "dashboard-confirm.png"))
    await page.click("#confirm-yes")
    operation = page.locator("#operation")
    await expect(operation).to_contain_text(
        "3 matched · 3 done · 0 skipped · 0 failed", timeout=WAIT_MS
    )
    await expect(operation).to_contain_text("finished")
    for job_id in made:
        events = (await as_admin(dash, f"/jobs/{job_id}/events?limit=1000"))["events"]
        assert [e["type"] for e in events].count("JobRetried") == 1
    # Retried, the jobs left the group: the list (still filtered by it) empties.
    await expect(page.locator("#jobs-body")).to_contain_text("No job matches", timeout=WAIT_MS)


async def test_a_bulk_cancel_by_label_asks_with_the_count_and_cancels_exactly_those_jobs(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    tag = f"cancel{uuid.uuid4().hex[:8]}"
    other = f"keep{uuid.uuid4().hex[:8]}"
    made = await waiting_jobs(
        dash, media_server, *[{"batch": tag} for _ in range(3)], *[{"batch": other}] * 2
    )
    chosen, kept = made[:3], made[3:]
    [done] = await failed_jobs(dash, media_server, "HTTP Error 404 for x", {"batch": tag})

    await connect(page, dash, dash.cluster.admin_key)
    await page.fill("#filter-label", f"batch={tag}")
    await expect(job_rows(page)).to_have_count(4, timeout=WAIT_MS)
    # Every action asks first with the count of the jobs it would touch.
    await page.select_option("#bulk-action", "pause")
    await page.click("#bulk-apply")
    await expect(page.locator("#confirm-text")).to_have_text("Pause 4 jobs?")
    await page.click("#confirm-no")
    await expect(page.locator("#bulk-message")).to_have_text("Nothing was done.")

    await page.select_option("#bulk-action", "cancel")
    await page.click("#bulk-apply")
    await expect(page.locator("#confirm-text")).to_have_text("Cancel 4 jobs?")
    await expect(page.locator("#confirm-filter")).to_have_text(f"Jobs matching label batch={tag}.")
    await page.click("#confirm-no")  # declined: nothing happens
    await expect(page.locator("#bulk-message")).to_have_text("Nothing was done.")
    await page.click("#bulk-apply")
    await expect(page.locator("#confirm-text")).to_have_text("Cancel 4 jobs?")
    await page.click("#confirm-yes")
    await expect(page.locator("#operation")).to_contain_text(
        "4 matched · 3 done · 1 skipped · 0 failed — finished", timeout=WAIT_MS
    )
    # The job that had failed already is skipped, with the API's reason.
    await expect(page.locator(f"#operation-problems li[data-job-id='{done}']")).to_contain_text(
        "skipped — "
    )
    for job_id in chosen:
        assert (await as_admin(dash, f"/jobs/{job_id}"))["status"] == "Cancelled"
    for job_id in kept:
        assert (await as_admin(dash, f"/jobs/{job_id}"))["status"] == "Pending"
    assert (await as_admin(dash, f"/jobs/{done}"))["status"] == "Failed"
    await expect(job_rows(page).locator(".status")).to_have_text(["Failed"] + ["Cancelled"] * 3)


async def test_hostile_titles_labels_and_errors_show_as_text(
    page: Page, dash: Api, media_server: MediaServer, media_dir: Path
) -> None:
    tag = f"hostile{uuid.uuid4().hex[:8]}"
    title = "<img src=x onerror=window.pwned=4>Episode"
    # A feed whose entry brings its own title: its job waits, titled so, in a paused batch.
    (media_dir / f"{tag}.xml").write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{tag}</title><item>'
        f"<title>{html.escape(title)}</title><guid>{tag}-1</guid>"
        f'<enclosure url="{media_server.url("clip.mp4")}" type="video/mp4" length="1"/>'
        "</item></channel></rss>"
    )
    cluster = dash.cluster
    feed = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url(f"{tag}.xml"), "paused": True, "labels": {"find": tag}},
        headers=cluster.headers(cluster.admin_key),
    )
    assert feed.status_code == 201, feed.text
    [titled] = [e["job_id"] for e in feed.json()["episode_jobs"]]
    label = "<img src=x onerror=window.pwned=1>"
    reason = "<script>window.pwned=2</script><img src=x onerror=window.pwned=3> refused"
    [failed] = await failed_jobs(dash, media_server, reason, {"find": tag, "note": label})

    await connect(page, dash, cluster.admin_key)
    await page.fill("#filter-label", f"find={tag}")
    row = page.locator(f"#jobs-body tr[data-job-id='{failed}']")
    await expect(row.locator(".labels")).to_contain_text(f"note={label}", timeout=WAIT_MS)
    await expect(row.locator(".reason")).to_have_attribute("title", reason)
    await expect(page.locator(f"#jobs-body tr[data-job-id='{titled}'] .title-text")).to_have_text(
        title
    )
    await expect(page.locator("#failures-body")).to_contain_text("<script>", timeout=WAIT_MS)
    assert await page.locator("#jobs-body img, #failures-body img, script:not([src])").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_an_admin_pauses_and_resumes_the_clusters_intake_from_the_page(
    page: Page, dash: Api
) -> None:
    await connect(page, dash, dash.cluster.admin_key)
    await expect(page.locator("#intake-state")).to_contain_text("Intake open", timeout=WAIT_MS)
    await page.click("#intake-toggle")
    await expect(page.locator("#intake-state")).to_contain_text("Intake paused")
    assert (await as_admin(dash, "/api/v1/config/intake"))["data"] == {"paused": True}
    await expect(page.locator("#intake-toggle")).to_have_text("Resume intake")
    await page.click("#intake-toggle")
    await expect(page.locator("#intake-state")).to_contain_text("Intake open")
    assert (await as_admin(dash, "/api/v1/config/intake"))["data"] == {"paused": False}


async def test_a_user_key_sees_no_intake_control(page: Page, dash: Api) -> None:
    await connect(page, dash, dash.cluster.key)
    await expect(page.locator("#cluster-note")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#intake")).to_be_hidden()


# -- a batch's and an account's pause (issue 24, Deliver 2: each level shown on the page) ------


async def _admin_post(api: Api, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster = api.cluster
    answer = await cluster.client.post(path, json=body, headers=cluster.headers(cluster.admin_key))
    assert answer.status_code in (200, 201), answer.text
    found: dict[str, Any] = answer.json()
    return found


async def _admin_job_ends(api: Api, job_id: str) -> dict[str, Any]:
    """The admin's job once it completed or failed."""

    async def ended() -> dict[str, Any] | None:
        shown = await as_admin(api, f"/jobs/{job_id}")
        return shown if shown["status"] in ("Completed", "Failed") else None

    return await until(ended, seconds=WAIT_MS / 1000)


async def test_pausing_a_batch_from_the_page_holds_its_waiting_job_until_it_is_resumed(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    cluster = dash.cluster
    # The cluster's intake is paused while the batch starts, so its job waits in line, untaken.
    await _admin_post(dash, "/api/v1/config/intake/pause")
    await cluster.runner.settle("pauses")  # the line reads pauses from there
    try:
        made = await _admin_post(
            dash, "/jobs/bulk", {"jobs": [{"url": media_server.url("clip.mp4"), "filename": "b0"}]}
        )
        batch_id, [job_id] = made["batch_id"], made["job_ids"]
        await connect(page, dash, cluster.admin_key)
        row = page.locator(f"#jobs-body tr[data-job-id='{job_id}']")
        await expect(row.locator(".status")).to_contain_text("paused (cluster)", timeout=WAIT_MS)
        await row.locator("button.batch-link").click()
        await expect(page.locator("#batch-id")).to_have_text(batch_id)
        await expect(page.locator("#batch-state")).to_contain_text("running · 1 job (1 Pending)")
        await page.click("#batch-toggle")
        await expect(page.locator("#batch-state")).to_contain_text("paused: its jobs")
        await expect(page.locator("#batch-toggle")).to_have_text("Resume batch")
        assert (await as_admin(dash, f"/batch/{batch_id}"))["paused"] is True
    finally:
        await _admin_post(dash, "/api/v1/config/intake/resume")

    # The intake is open again: a job outside the batch runs to its end, the batch's stays.
    other = (await _admin_post(dash, "/jobs", {"url": media_server.url("clip.mp4")}))["job_id"]
    assert (await _admin_job_ends(dash, other))["status"] == "Completed"
    await expect(row.locator(".status")).to_have_text("Pending · paused (batch)", timeout=WAIT_MS)
    shown = await as_admin(dash, f"/jobs/{job_id}")
    assert (shown["status"], shown["paused_by"]) == ("Pending", "batch")

    await page.click("#batch-toggle")
    await expect(page.locator("#batch-toggle")).to_have_text("Pause batch")
    await expect(row.locator(".status")).to_have_text("Completed", timeout=WAIT_MS)
    await expect(page.locator("#batch-state")).to_contain_text("completed · 1 job (1 Completed)")
    events = (await as_admin(dash, f"/jobs/{job_id}/events?limit=1000"))["events"]
    assert [e["type"] for e in events].count("JobCompleted") == 1


async def test_an_admin_pauses_and_resumes_an_account_from_the_page(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    cluster = dash.cluster
    user = cluster.account_id
    await connect(page, dash, cluster.admin_key)
    row = page.locator(f"#accounts-body tr[data-account-id='{user}']")
    await expect(row.locator(".account-state")).to_have_text("active", timeout=WAIT_MS)
    await expect(
        page.locator(f"#accounts-body tr[data-account-id='{cluster.admin_account_id}']")
    ).to_contain_text("(admin)")
    await row.get_by_role("button", name="Pause account").click()
    try:
        await expect(row.locator(".account-state")).to_contain_text("paused: its jobs")
        assert (await as_admin(dash, f"/admin/accounts/{user}"))["paused"] is True
        # The account's own view says what holds its new job (once the pause is in force).
        await cluster.runner.settle("pauses")
        job_id = await cluster.create(media_server.url("clip.mp4"))
        assert (await cluster.job(job_id))["paused_by"] == "account"
        await row.get_by_role("button", name="Resume account").click()
        await expect(row.locator(".account-state")).to_have_text("active")
    finally:
        await _admin_post(dash, f"/admin/accounts/{user}/resume")
    assert (await as_admin(dash, f"/admin/accounts/{user}"))["paused"] is False
    assert (await cluster.wait(job_id, "Completed", "Failed"))["status"] == "Completed"


async def test_a_user_key_sees_no_account_control(page: Page, dash: Api) -> None:
    await connect(page, dash, dash.cluster.key)
    await expect(page.locator("#cluster-note")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#accounts")).to_be_hidden()
    assert await page.locator("button.account-toggle").count() == 0


async def test_a_bulk_delete_file_asks_with_the_count_and_deletes_exactly_those_files(
    page: Page, dash: Api, media_server: MediaServer
) -> None:
    cluster = dash.cluster
    tag = f"gone{uuid.uuid4().hex[:8]}"
    made = []
    for i, value in enumerate((tag, tag, f"keep{tag}")):
        body = {
            "url": media_server.url("clip.mp4"),
            "labels": {"clean": value},
            "filename": f"{tag}-{i}",
        }
        made.append((await _admin_post(dash, "/jobs", body))["job_id"])
    done = [await _admin_job_ends(dash, job_id) for job_id in made]
    assert [d["status"] for d in done] == ["Completed"] * 3
    chosen, kept = made[:2], made[2]
    stored = {job_id: d["storage_key"] for job_id, d in zip(made, done, strict=True)}

    await connect(page, dash, cluster.admin_key)
    await page.fill("#filter-label", f"clean={tag}")
    await expect(job_rows(page)).to_have_count(2, timeout=WAIT_MS)
    await expect(job_rows(page).get_by_role("link", name="Download")).to_have_count(2)
    await page.select_option("#bulk-action", "delete_file")
    await page.click("#bulk-apply")
    await expect(page.locator("#confirm-text")).to_have_text("Delete the file of 2 jobs?")
    await page.click("#confirm-yes")
    await expect(page.locator("#operation")).to_contain_text(
        "2 matched · 2 done · 0 skipped · 0 failed — finished", timeout=WAIT_MS
    )
    # The rows lose their links; the files are gone from storage; the third job keeps its own.
    await expect(job_rows(page).get_by_role("link", name="Download")).to_have_count(0)
    in_bucket = cluster.objects()
    for job_id in chosen:
        assert (await as_admin(dash, f"/jobs/{job_id}"))["file_deleted"] is True
        assert not [k for k in in_bucket if k.endswith(stored[job_id])]
    assert (await as_admin(dash, f"/jobs/{kept}"))["file_deleted"] is False
    assert [k for k in in_bucket if k.endswith(stored[kept])]
