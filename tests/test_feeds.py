"""Podcast feeds of a batch: read by a podcast app's parser with the token in the URL, each
enclosure downloading the stored file over loopback; rotation, revocation, and a refusal
that looks the same whatever was wrong; the token in no event and no request log line.

Real parts: the test cluster (PostgreSQL, Redis, moto S3 or a local folder, a node running
FFmpeg and yt-dlp on the loopback media server), and the API served by uvicorn on a loopback
port, which the feed's and the files' links name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx
import msgspec
import pytest

from spool.adapters.read_models import all_projections
from spool.api.app import create_app
from spool.assembly import SUBSCRIPTIONS
from spool.domain import feed
from spool.embedded import free_port
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import TIMINGS, Cluster, StartCluster
from tests.fixtures.loopback import serve_on_loopback
from tests.fixtures.media import MediaServer
from tests.fixtures.request_log import Lines
from tests.fixtures.waiting import until


def _show(media_dir: Path, media_server: MediaServer, urls: list[str]) -> str:
    """An RSS feed whose entries are `urls`, titled `Episode <n>`; returns its URL."""
    name = f"show-{uuid.uuid4().hex[:8]}"
    items = "".join(
        f"<item><title>Episode {n}</title><guid>{name}-{n}</guid>"
        f'<enclosure url="{url}" type="video/mp4" length="1"/></item>'
        for n, url in enumerate(urls, start=1)
    )
    (media_dir / f"{name}.xml").write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>Show {name}</title>'
        f"{items}</channel></rss>"
    )
    return media_server.url(f"{name}.xml")


@contextlib.asynccontextmanager
async def _served(cluster: Cluster, port: int) -> AsyncIterator[httpx.AsyncClient]:
    """The cluster's API served by uvicorn on `port` of 127.0.0.1 (its public URL), and a
    client of it."""
    app = create_app(
        pool=cluster.pool, store=cluster.store, settings=cluster.settings, storage=cluster.storage
    )
    async with (
        serve_on_loopback(app, port=port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        yield client


async def _paused_batch(cluster: Cluster, media_server: MediaServer, key: str | None = None) -> str:
    """A batch of one held job (it downloads nothing): a feed with no episode yet."""
    answer = await cluster.client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": media_server.url("clip.mp4")}], "paused": True},
        headers=cluster.headers(key),
    )
    assert answer.status_code == 201, answer.text
    batch_id: str = answer.json()["batch_id"]
    return batch_id


async def _open(client: httpx.AsyncClient, headers: dict[str, str], batch_id: str) -> str:
    """`POST /batch/{id}/feed`: the feed's URL (with its token)."""
    answer = await client.post(f"/batch/{batch_id}/feed", headers=headers)
    assert answer.status_code == 201, answer.text
    url: str = answer.json()["feed_url"]
    return url


def _local(url: str) -> str:
    """A URL's path and query, for the in-process client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


@pytest.mark.parametrize("storage", ["s3", "local"])
async def test_a_batch_feed_lists_its_completed_jobs_and_each_enclosure_downloads_the_file(
    start_cluster: StartCluster,
    media_server: MediaServer,
    media_dir: Path,
    tmp_path: Path,
    storage: str,
) -> None:
    port = free_port()
    # S3 links are moto's presigned URLs; a local folder's are Spool's signed `/files` links.
    local = {"storage_url": f"file://{tmp_path / 'files'}"} if storage == "local" else {}
    async with (
        start_cluster(public_url=f"http://127.0.0.1:{port}", **local) as cluster,
        _served(cluster, port) as client,
    ):
        entries = [media_server.url(f"clip.mp4?ep={n}") for n in (1, 2)]
        source = _show(media_dir, media_server, [*entries, media_server.status_url(404)])
        created = await client.post("/jobs", json={"url": source}, headers=cluster.headers())
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        job_ids = [e["job_id"] for e in created.json()["episode_jobs"]]
        done = [await cluster.wait(j, "Completed", "Failed", seconds=90) for j in job_ids]
        assert [d["status"] for d in done] == ["Completed", "Completed", "Failed"]
        await cluster.runner.settle("jobs")

        feed_url = await _open(client, cluster.headers(), batch_id)
        assert feed_url.startswith(f"http://127.0.0.1:{port}/batch/{batch_id}/feed.xml?token=")
        answer = await client.get(feed_url)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/rss+xml")
        parsed = feedparser.parse(answer.content)
        assert not parsed.bozo, parsed.bozo_exception
        assert parsed.version == "rss20"
        assert parsed.feed["itunes_block"]  # kept out of podcast directories

        # One entry per completed job (the failed one is not there), the latest finished first.
        completed = sorted(done[:2], key=lambda d: d["finished_at"], reverse=True)
        assert [e["id"] for e in parsed.entries] == [d["id"] for d in completed]
        assert [e["title"] for e in parsed.entries] == [d["title"] for d in completed]
        assert all(e["title"] for e in parsed.entries)
        for entry, job in zip(parsed.entries, completed, strict=True):
            [enclosure] = entry["enclosures"]
            assert enclosure["type"] == "video/mp4"
            assert enclosure["href"].startswith(f"http://127.0.0.1:{port}/batch/{batch_id}/feed/")
            # A podcast app follows the redirect with no key and gets the stored file whole:
            # the same bytes as the job API's own link to it.
            async with httpx.AsyncClient(follow_redirects=True, timeout=30) as app:
                got = await app.get(enclosure["href"])
                assert got.status_code == 200, got.text
                stored = await app.get(job["s3_url"])
            assert got.content == stored.content
            assert len(got.content) == int(enclosure["length"]) > 0
            assert entry["published_parsed"] is not None


async def test_a_rotated_token_stops_at_once_and_the_new_one_works(
    cluster: Cluster, media_server: MediaServer
) -> None:
    batch_id = await _paused_batch(cluster, media_server)
    first = _local(await _open(cluster.client, cluster.headers(), batch_id))
    assert (await cluster.client.get(first)).status_code == 200

    second = _local(await _open(cluster.client, cluster.headers(), batch_id))
    assert second != first
    old = await cluster.client.get(first)
    assert (old.status_code, old.json()) == (404, {"error": "Feed not found"})
    new = await cluster.client.get(second)
    assert new.status_code == 200
    assert feedparser.parse(new.content).entries == []  # nothing completed yet

    closed = await cluster.client.delete(f"/batch/{batch_id}/feed", headers=cluster.headers())
    assert closed.status_code == 204
    assert (await cluster.client.get(second)).status_code == 404
    again = await cluster.client.delete(f"/batch/{batch_id}/feed", headers=cluster.headers())
    assert again.status_code == 404


async def test_another_account_a_wrong_token_and_a_missing_feed_answer_alike(
    cluster: Cluster, media_server: MediaServer
) -> None:
    mine = await _paused_batch(cluster, media_server)
    url = urlsplit(await _open(cluster.client, cluster.headers(), mine))
    token = url.query.removeprefix("token=")
    other = await issue(cluster.store, name="other", admin=False)
    await ProjectionRunner(cluster.store, all_projections()).wait_until("api_keys", other.at)
    theirs = await _paused_batch(cluster, media_server, other.key)
    their_token = urlsplit(await _open(cluster.client, {"x-api-key": other.key}, theirs)).query
    never_opened = await _paused_batch(cluster, media_server)

    # Another account cannot open, rotate or close my batch's feed: it is not there for them.
    for method in ("POST", "DELETE"):
        answer = await cluster.client.request(
            method, f"/batch/{mine}/feed", headers={"x-api-key": other.key}
        )
        assert (answer.status_code, answer.json()) == (404, {"error": "Batch not found"})

    refused = [
        f"/batch/{mine}/feed.xml?token=feed_{'x' * 43}",  # a wrong token
        f"/batch/{mine}/feed.xml?{their_token}",  # another feed's token
        f"/batch/{mine}/feed.xml",  # no token
        f"/batch/{theirs}/feed.xml?token={token}",  # another account's batch
        f"/batch/{never_opened}/feed.xml?token={token}",  # a batch without a feed
        f"/batch/{uuid.uuid4()}/feed.xml?token={token}",  # no such batch
        f"/batch/not-a-batch/feed.xml?token={token}",
        f"/batch/{mine}/feed/{uuid.uuid4()}.mp4?token=feed_{'x' * 43}",
        f"/batch/{theirs}/feed/{uuid.uuid4()}.mp4?token={token}",
    ]
    answers = [await cluster.client.get(path) for path in refused]
    assert [(a.status_code, a.json()) for a in answers] == [
        (404, {"error": "Feed not found"})
    ] * len(refused)
    assert (await cluster.client.get(f"/batch/{mine}/feed.xml?{url.query}")).status_code == 200


async def test_the_token_is_in_no_event_and_no_request_log_line(
    cluster: Cluster, media_server: MediaServer, request_log: Lines
) -> None:
    batch_id = await _paused_batch(cluster, media_server)
    first = await _open(cluster.client, cluster.headers(), batch_id)
    rotated = await _open(cluster.client, cluster.headers(), batch_id)
    for url in (first, rotated):
        await cluster.client.get(_local(url))
        await cluster.client.head(_local(url).replace("feed.xml", f"feed/{uuid.uuid4()}.mp4"))
    tokens = [urlsplit(u).query.removeprefix("token=") for u in (first, rotated)]
    assert all(t.startswith(feed.TOKEN_PREFIX) for t in tokens)

    logged = "\n".join(request_log.lines)
    assert f"/batch/{batch_id}/feed.xml" in logged
    for token in tokens:
        assert token not in logged
        assert token[len(feed.TOKEN_PREFIX) :] not in logged
        found = await cluster.pool.fetchval(
            "SELECT count(*) FROM events WHERE strpos(data::text, $1) > 0"
            " OR strpos(metadata::text, $1) > 0",
            token[len(feed.TOKEN_PREFIX) :],
        )
        assert found == 0
    # What the events hold instead: the digests of the two tokens, in the feed's stream.
    stream = feed.stream_id(feed.FeedScope("batch", batch_id).feed_id)
    recorded = await cluster.store.read_stream(stream)
    held: list[dict[str, Any]] = [msgspec.to_builtins(e.data) for e in recorded]
    assert [h["token_hash"] for h in held] == [feed.hash_token(t) for t in tokens]


async def test_a_subscription_feed_lists_what_its_checks_fetched_and_the_enclosures_download(
    start_cluster: StartCluster, media_server: MediaServer, media_dir: Path
) -> None:
    port = free_port()
    async with (
        start_cluster(public_url=f"http://127.0.0.1:{port}") as cluster,
        _served(cluster, port) as client,
    ):
        source = _show(
            media_dir, media_server, [media_server.url(f"clip.mp4?s={n}") for n in (1, 2)]
        )
        made = await client.post(
            "/subscriptions",
            json={"url": source, "interval": 3600, "max_items": 5},
            headers=cluster.headers(),
        )
        assert made.status_code == 201, made.text
        sid = made.json()["subscription_id"]
        cluster.start(SUBSCRIPTIONS, timings=dataclasses.replace(TIMINGS, subscriptions_tick=0.3))

        async def fetched() -> list[dict[str, Any]] | None:
            listed = await client.get(
                "/jobs", params={"subscription_id": sid}, headers=cluster.headers()
            )
            jobs: list[dict[str, Any]] = listed.json()["jobs"]
            done = len(jobs) == 2 and all(j["status"] == "Completed" for j in jobs)
            return jobs if done else None

        jobs = await until(fetched, seconds=90)
        answer = await client.post(f"/subscriptions/{sid}/feed", headers=cluster.headers())
        assert answer.status_code == 201, answer.text
        assert answer.json()["subscription_id"] == sid and "batch_id" not in answer.json()
        feed_url = answer.json()["feed_url"]
        assert feed_url.startswith(f"http://127.0.0.1:{port}/subscriptions/{sid}/feed.xml?token=")
        parsed = feedparser.parse((await client.get(feed_url)).content)
        assert not parsed.bozo, parsed.bozo_exception
        assert parsed.feed["title"] == "Spool subscription to 127.0.0.1"
        assert sorted(e["id"] for e in parsed.entries) == sorted(j["id"] for j in jobs)
        async with httpx.AsyncClient(follow_redirects=True, timeout=30) as app:
            for entry in parsed.entries:
                [enclosure] = entry["enclosures"]
                got = await app.get(enclosure["href"])
                job = await cluster.job(entry["id"])
                assert got.status_code == 200
                assert got.content == (await app.get(job["s3_url"])).content
        # A batch's feed URL shape with the subscription's id opens nothing.
        token = feed_url.split("token=", 1)[1]
        wrong = await client.get(f"/batch/{sid}/feed.xml?token={token}")
        assert wrong.status_code == 404
