"""Bulk jobs, feeds as batches, paused batches: rename, start, cancel; all jobs or none."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer
from tests.fixtures.s3 import S3Server


def _feed(media_dir: Path, media_server: MediaServer, name: str, episodes: int) -> str:
    """An RSS podcast feed whose enclosures are the test clip; returns its URL."""
    items = "".join(
        f"<item><title>Episode {i}</title><guid>{name}-{i}</guid>"
        f'<enclosure url="{media_server.url("clip.mp4")}?ep={i}" type="video/mp4" '
        f'length="1"/></item>'
        for i in range(1, episodes + 1)
    )
    (media_dir / f"{name}.xml").write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>Show {name}</title>'
        f"{items}</channel></rss>"
    )
    return media_server.url(f"{name}.xml")


async def test_a_paused_feed_waits_is_renamed_started_and_lands_named_as_renamed(
    cluster: Cluster, media_server: MediaServer, media_dir: Path, s3_server: S3Server
) -> None:
    # The user keeps their media in an S3 bucket of their own.
    bucket = f"user-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    configured = await cluster.client.post(
        "/user/s3",
        headers=cluster.headers(),
        json={
            "endpoint": s3_server.endpoint_url,
            "bucket": bucket,
            "region": "us-east-1",
            "access_key": "AKIAFEEDUSER0000WXYZ",
            "secret_key": "feed-user-secret",
        },
    )
    assert configured.status_code == 201, configured.text
    wrong = await cluster.client.post(
        "/user/s3",
        headers=cluster.headers(),
        json={
            "endpoint": s3_server.endpoint_url,
            "bucket": "no-such-bucket-at-all",
            "access_key": "AKIAFEEDUSER0000WXYZ",
            "secret_key": "feed-user-secret",
        },
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"].startswith("Storage check failed: NoSuchBucket")
    await ProjectionRunner(cluster.store, all_projections()).settle("storage_configs")

    feed = _feed(media_dir, media_server, "show20", 20)
    answer = await cluster.client.post(
        "/jobs", json={"url": feed, "paused": True, "folder": "show"}, headers=cluster.headers()
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["total_episodes"] == 20
    episodes = created["episode_jobs"]
    assert [e["title"] for e in episodes] == [f"Episode {i}" for i in range(1, 21)]
    batch_id = created["batch_id"]

    await asyncio.sleep(1.5)  # a paused batch downloads nothing
    view = (await cluster.client.get(f"/batch/{batch_id}", headers=cluster.headers())).json()
    assert (view["status"], view["total_jobs"], view["counts"]) == ("paused", 20, {"Pending": 20})
    histories = [await cluster.event_types(e["job_id"]) for e in episodes[:3]]
    assert all("StageStarted" not in h for h in histories)

    renames = [
        {"job_id": e["job_id"], "filename": f"renamed {n}"}
        for n, e in enumerate(episodes[:3], start=1)
    ]
    renamed = await cluster.client.patch(
        f"/batch/{batch_id}/jobs", json={"renames": renames}, headers=cluster.headers()
    )
    assert renamed.json() == {"updated": 3, "errors": []}

    started = await cluster.client.post(f"/batch/{batch_id}/start", headers=cluster.headers())
    assert started.json() == {"batch_id": batch_id, "started_jobs": 20, "status": "processing"}

    for e in episodes:
        done = await cluster.wait(e["job_id"], "Completed", "Failed", seconds=120)
        assert done["status"] == "Completed", done
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    keys = sorted(o["Key"] for o in listing.get("Contents", []))
    assert len(keys) == 20
    assert {"show/renamed 1.mp4", "show/renamed 2.mp4", "show/renamed 3.mp4"} <= set(keys)
    assert any(k.startswith("show/Episode 20 [") for k in keys)
    assert cluster.objects() == []  # nothing in the cluster's default storage

    # /usage adds up: 20 jobs completed, and the bytes are the files' sizes.
    await ProjectionRunner(cluster.store, all_projections()).settle("usage")
    usage = (await cluster.client.get("/usage", headers=cluster.headers())).json()
    sizes = sum(o["Size"] for o in listing["Contents"])
    assert usage["all_time"]["jobs_completed"] == 20
    assert usage["all_time"]["bytes_uploaded"] == sizes
    assert usage["all_time"]["storage_bytes"] == sizes
    final = (await cluster.client.get(f"/batch/{batch_id}", headers=cluster.headers())).json()
    assert (final["status"], final["progress"], final["counts"]) == (
        "completed",
        100.0,
        {"Completed": 20},
    )


async def test_a_started_batch_can_be_neither_renamed_nor_started_again(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    feed = _feed(media_dir, media_server, "show2", 2)
    created = (
        await cluster.client.post(
            "/jobs", json={"url": feed, "paused": True}, headers=cluster.headers()
        )
    ).json()
    batch_id = created["batch_id"]
    await cluster.client.post(f"/batch/{batch_id}/start", headers=cluster.headers())

    job_id = created["episode_jobs"][0]["job_id"]
    rename = await cluster.client.patch(
        f"/batch/{batch_id}/jobs",
        json={"renames": [{"job_id": job_id, "filename": "x"}]},
        headers=cluster.headers(),
    )
    assert rename.status_code == 400
    assert rename.json() == {"error": "Batch is not paused. Only paused batches can be renamed."}
    again = await cluster.client.post(f"/batch/{batch_id}/start", headers=cluster.headers())
    assert again.status_code == 400
    assert again.json() == {"error": "Batch is processing. Only paused batches can be started."}


async def test_a_feed_not_paused_starts_at_once(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    feed = _feed(media_dir, media_server, "live3", 3)
    created = (
        await cluster.client.post("/jobs", json={"url": feed}, headers=cluster.headers())
    ).json()
    for e in created["episode_jobs"]:
        assert (await cluster.wait(e["job_id"], "Completed", "Failed", seconds=60))[
            "status"
        ] == "Completed"


async def test_cancelling_a_batch_cancels_its_unfinished_jobs(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    feed = _feed(media_dir, media_server, "cancel4", 4)
    created = (
        await cluster.client.post(
            "/jobs", json={"url": feed, "paused": True}, headers=cluster.headers()
        )
    ).json()
    batch_id = created["batch_id"]
    answer = await cluster.client.delete(f"/batch/{batch_id}", headers=cluster.headers())
    assert answer.json() == {"batch_id": batch_id, "cancelled_jobs": 4, "status": "cancelled"}
    view = (await cluster.client.get(f"/batch/{batch_id}", headers=cluster.headers())).json()
    assert (view["status"], view["counts"]) == ("cancelled", {"Cancelled": 4})
    start = await cluster.client.post(f"/batch/{batch_id}/start", headers=cluster.headers())
    assert start.status_code == 400


async def test_another_users_batch_answers_404_everywhere(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    from spool.keys import issue

    feed = _feed(media_dir, media_server, "mine2", 2)
    created = (
        await cluster.client.post(
            "/jobs", json={"url": feed, "paused": True}, headers=cluster.headers()
        )
    ).json()
    batch_id = created["batch_id"]
    other = await issue(cluster.store, name="other", admin=False)
    await ProjectionRunner(cluster.store, all_projections()).wait_until("api_keys", other.at)
    theirs = {"x-api-key": other.key}
    job_id = created["episode_jobs"][0]["job_id"]
    for method, path, body in [
        ("GET", f"/batch/{batch_id}", None),
        ("PATCH", f"/batch/{batch_id}/jobs", {"renames": [{"job_id": job_id, "filename": "x"}]}),
        ("POST", f"/batch/{batch_id}/start", None),
        ("DELETE", f"/batch/{batch_id}", None),
        ("DELETE", f"/jobs/{job_id}", None),
    ]:
        answer = await cluster.client.request(method, path, json=body, headers=theirs)
        assert answer.status_code == 404, (method, path, answer.text)
    view = (await cluster.client.get(f"/batch/{batch_id}", headers=cluster.headers())).json()
    assert view["status"] == "paused"


async def test_bulk_creates_every_job_and_they_complete(
    cluster: Cluster, media_server: MediaServer
) -> None:
    body = {
        "jobs": [{"url": media_server.url("clip.mp4"), "filename": f"bulk {i}"} for i in range(3)],
        "folder": "bulk",
        "format": "mkv",
    }
    answer = await cluster.client.post("/jobs/bulk", json=body, headers=cluster.headers())
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["total_jobs"] == 3 and len(created["job_ids"]) == 3
    for job_id in created["job_ids"]:
        assert (await cluster.wait(job_id, "Completed", "Failed", seconds=60))[
            "status"
        ] == "Completed"
    assert sorted(cluster.objects()) == [cluster.in_bucket(f"bulk/bulk {i}.mkv") for i in range(3)]


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        (
            [{"url": "http://media.test/a.mp4"}, {"url": "ftp://x/y"}],
            "jobs[1]: Invalid URL: expected an http(s) URL",
        ),
        (
            [{"url": "http://media.test/a.mp4", "filename": "../x"}],
            "jobs[0]: Invalid filename: '/' is not allowed "
            '(a name must not contain any of \\ / : * ? " < > |)',
        ),
        (
            [{"url": "http://media.test/a.mp4"}, {"url": "http://127.0.0.1/x.mp4"}],
            "jobs[1]: URL refused: 127.0.0.1 is a loopback address",
        ),
        (
            [{"url": "http://media.test/a.mp4", "format": "mkv"}],
            "jobs[0]: only url, filename and labels may be set per item (got format)",
        ),
        ([], "`jobs` must be a non-empty list"),
        ([{"url": "http://media.test/a.mp4"}] * 101, "Too many jobs (max 100 per request)"),
    ],
)
async def test_one_bad_bulk_item_rejects_the_whole_request(
    client: httpx.AsyncClient,
    api_key: str,
    store: EventStore,
    jobs: list[dict[str, str]],
    message: str,
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post("/jobs/bulk", json={"jobs": jobs}, headers={"x-api-key": api_key})
    assert answer.status_code == 400
    assert answer.json() == {"error": message}
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before


async def test_a_bulk_request_with_an_unknown_shared_option_is_refused_naming_it(
    client: httpx.AsyncClient, api_key: str, store: EventStore
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": "http://media.test/a.mp4"}], "fromat": "mkv"},
        headers={"x-api-key": api_key},
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "Object contains unknown field `fromat`"}
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before


async def test_paused_is_refused_for_a_single_media_url(
    cluster: Cluster, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url("clip.mp4"), "paused": True},
        headers=cluster.headers(),
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "paused is only for playlist or feed URLs"}
