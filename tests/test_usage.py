"""`GET /usage` and the `usage` projection, over jobs a real cluster ran to the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from spool.adapters.read_models.usage import UsageProjection
from spool.api.app import create_app
from spool.api.usage import UsageController
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer

ZERO_STATUSES = {
    "Pending": 0,
    "Processing": 0,
    "Completed": 0,
    "Failed": 0,
    "Cancelled": 0,
    "Skipped": 0,
}


def api_client(c: Cluster) -> httpx.AsyncClient:
    """The cluster's API with the usage surface on it (registered here until app.py does)."""
    app = create_app(pool=c.pool, store=c.store, settings=c.settings, storage=c.storage)
    if not any(route.path == "/usage" for route in app.routes):
        app.register(UsageController)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://spool.test", timeout=30
    )


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cluster) as client:
        yield client


async def _usage_until(
    client: httpx.AsyncClient,
    key: str,
    until: Callable[[dict[str, Any]], bool],
    seconds: float = 30,
) -> dict[str, Any]:
    """GET /usage until `until` holds: the projection trails the log by a moment."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await client.get("/usage", headers={"x-api-key": key})
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            if until(body):
                return body
        assert time.monotonic() < deadline, f"usage never matched: {answer.text}"
        await asyncio.sleep(0.1)


async def _new_key(cluster: Cluster, client: httpx.AsyncClient, name: str) -> str:
    key = (await issue(cluster.store, name=name, admin=False)).key
    await _usage_until(client, key, lambda _: True)  # the api_keys projection has it
    return key


async def _downloaded_bytes(cluster: Cluster, job_id: str) -> int:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    return sum(
        e["data"]["bytes"] for e in answer.json()["events"] if e["type"] == "DownloadCompleted"
    )


async def test_usage_adds_up_jobs_bytes_and_storage_per_user(
    cluster: Cluster, api: httpx.AsyncClient, media_server: MediaServer
) -> None:
    kept = await cluster.create(media_server.url("clip.mp4"), filename="kept")
    deleted = await cluster.create(media_server.url("dash/manifest.mpd"), filename="deleted")
    failed = await cluster.create(media_server.url("missing.mp4"))
    done = {j: await cluster.wait(j, "Completed", "Failed", seconds=90) for j in (kept, deleted)}
    assert all(d["status"] == "Completed" for d in done.values()), done
    assert (await cluster.wait(failed, "Failed", "Completed"))["status"] == "Failed"
    gone = await cluster.client.delete(f"/jobs/{deleted}/file", headers=cluster.headers())
    assert gone.status_code == 200, gone.text
    sizes = {j: d["file_size"] for j, d in done.items()}
    downloaded = sum([await _downloaded_bytes(cluster, j) for j in (kept, deleted)])
    # Someone else's work must not show up in our figures.
    other = await _new_key(cluster, api, "other")
    theirs = await cluster.client.post(
        "/jobs", json={"url": media_server.url("clip.mp4")}, headers={"x-api-key": other}
    )
    assert theirs.status_code == 201

    body = await _usage_until(api, cluster.key, lambda b: b["all_time"]["bytes_deleted"] > 0)

    uploaded = sizes[kept] + sizes[deleted]
    expected = {
        "jobs_created": 3,
        "jobs_completed": 2,
        "jobs_failed": 1,
        "jobs_cancelled": 0,
        "jobs_by_status": {**ZERO_STATUSES, "Completed": 2, "Failed": 1},
        "bytes_downloaded": downloaded,
        "bytes_uploaded": uploaded,
        "bytes_deleted": sizes[deleted],
        "storage_bytes": sizes[kept],
        "storage_bytes_change": sizes[kept],
    }
    assert downloaded > 0 and sizes[kept] > 0 and sizes[deleted] > 0
    assert body["all_time"] == expected
    assert body["this_month"] == expected  # every job of this test ran this month
    assert body["month"] == datetime.now(UTC).strftime("%Y-%m")

    # Two projections (usage_daily, jobs) feed the answer, each trailing the log on its own.
    mine = await _usage_until(
        api,
        other,
        lambda b: (
            b["all_time"]["jobs_created"] == 1
            and sum(b["all_time"]["jobs_by_status"].values()) == 1
        ),
    )
    assert mine["all_time"]["bytes_uploaded"] in (0, sizes[kept])  # theirs may be done by now
    assert mine["all_time"]["jobs_failed"] == 0
    assert sum(mine["all_time"]["jobs_by_status"].values()) == 1


async def test_a_user_without_jobs_gets_zeros(cluster: Cluster, api: httpx.AsyncClient) -> None:
    key = await _new_key(cluster, api, "idle")

    body = await _usage_until(api, key, lambda _: True)

    zero = {
        "jobs_created": 0,
        "jobs_completed": 0,
        "jobs_failed": 0,
        "jobs_cancelled": 0,
        "jobs_by_status": ZERO_STATUSES,
        "bytes_downloaded": 0,
        "bytes_uploaded": 0,
        "bytes_deleted": 0,
        "storage_bytes": 0,
        "storage_bytes_change": 0,
    }
    unlimited = {"limit": None, "used": 0}
    assert body == {
        "month": datetime.now(UTC).strftime("%Y-%m"),
        "all_time": zero,
        "this_month": zero,
        "quotas": {
            "max_running_jobs": unlimited,
            "max_jobs_per_day": unlimited,
            "max_storage_bytes": unlimited,
            "max_media_seconds": unlimited,
        },
        "hls_cache_bytes": 0,
    }


async def test_usage_needs_a_key(api: httpx.AsyncClient) -> None:
    answer = await api.get("/usage", headers={"x-api-key": "sk_nope"})

    assert answer.status_code == 401
    assert answer.json() == {"error": "Invalid API Key"}


async def test_a_rebuild_gives_the_same_figures_and_a_cancel_counts(
    cluster: Cluster, api: httpx.AsyncClient, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.slow_url("clip.mp4", interval=0.5))
    cancelled = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    assert cancelled.status_code == 200, cancelled.text
    # Counters come from the usage projection, jobs_by_status from the jobs one: wait for both.
    before = await _usage_until(
        api,
        cluster.key,
        lambda b: (
            b["all_time"]["jobs_cancelled"] == 1
            and b["all_time"]["jobs_by_status"]["Cancelled"] == 1
        ),
    )

    runner = ProjectionRunner(cluster.store, [UsageProjection()])
    await runner.rebuild("usage")

    after = await _usage_until(api, cluster.key, lambda _: True)
    assert after == before
    assert after["all_time"]["jobs_created"] == 1
