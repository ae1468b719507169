"""Why jobs fail (issue 24, Deliver 4): failure messages normalised into groups, and
`GET /jobs/failures` answering an account's Failed jobs by group, most jobs first."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import EventStore
from spool.adapters.job_store import jobs
from spool.domain import failure_groups, job
from spool.domain.events import Metadata
from spool.reactors.projection import ProjectionRunner


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("HTTP Error 403 for https://a.example/x/123", "HTTP Error 403 for https://cdn.b.org/y/9"),
        ("Could not resolve host: media.example.com", "Could not resolve host: 10.1.2.3:8080"),
        (
            "ERROR: [youtube] dQw4w9WgXcQ: Video unavailable",
            "ERROR: [youtube] aB3dE6gH9jK: Video unavailable",
        ),
        ("No progress for 30 s during upload", "No progress for 12.5 seconds during upload"),
        (
            "Media is 7200 s long; the account allows 3600 s",
            "Media is 90 min long; the account allows 60 min",
        ),
        (
            "job 3f2a1b4c-1111-2222-3333-444455556666 stored 1234567 bytes in 'a.mp4'",
            "job 00000000-aaaa-bbbb-cccc-dddddddddddd stored 12 MB in 'b c.mkv'",
        ),
        (
            "upload part 1 failed: etag 9f8e7d6c5b4a3f2e1d",
            "upload part 1 failed: etag 0a1b2c3d4e5f",
        ),
    ],
)
def test_messages_that_differ_only_in_hosts_ids_and_sizes_share_a_group(
    one: str, other: str
) -> None:
    assert failure_groups.normalise(one) == failure_groups.normalise(other)
    assert failure_groups.group_id("error", one) == failure_groups.group_id("error", other)


def test_a_different_status_or_error_type_is_a_different_group() -> None:
    forbidden = "HTTP Error 403 for https://a.example/x/123"
    missing = "HTTP Error 404 for https://a.example/x/123"
    assert failure_groups.group_id("error", forbidden) != failure_groups.group_id("error", missing)
    assert failure_groups.group_id("error", forbidden) != failure_groups.group_id(
        "warning", forbidden
    )
    assert failure_groups.normalise(forbidden) == "HTTP Error 403 for <url>"


def test_the_group_id_is_short_stable_and_url_safe() -> None:
    gid = failure_groups.group_id("error", "HTTP Error 403 for https://a.example/x/123")
    assert gid == failure_groups.group_id("error", "HTTP Error 403 for https://z.example/9")
    assert len(gid) == 12 and all(c in "0123456789abcdef" for c in gid)


async def _create(client: httpx.AsyncClient, key: str) -> str:
    answer = await client.post("/jobs", json={"url": "http://media.test/a.mp4"}, headers=_auth(key))
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def _failed_job(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    key: str,
    reason: str,
    error_type: job.ErrorType = "error",
) -> str:
    """A job of `key`'s account whose download failed for good with `reason`."""
    job_id = await _create(client, key)

    def fail(state: job.JobState) -> list[job.Event]:
        started = job.start_stage(state, "download", 1, 1, "node-test")
        after = job.evolve(state, started[0], state.updated_at, state.version + 1)
        return started + job.fail_stage(
            after,
            "download",
            1,
            1,
            node_id="node-test",
            reason=reason,
            error_type=error_type,
            retryable=False,
        )

    done = await jobs(store).execute(job_id, fail, Metadata(actor="test"))
    assert done.appended is not None
    await runner.wait_until("jobs", done.appended.checkpoint)
    return job_id


async def _failures(
    client: httpx.AsyncClient, key: str, **params: str | int
) -> list[dict[str, object]]:
    answer = await client.get("/jobs/failures", params=params, headers=_auth(key))
    assert answer.status_code == 200, answer.text
    groups: list[dict[str, object]] = answer.json()["groups"]
    return groups


async def test_failed_jobs_are_grouped_by_normalised_message_most_jobs_first(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, api_key: str
) -> None:
    before = int(time.time() * 1000)
    forbidden = [
        await _failed_job(client, store, runner, api_key, f"HTTP Error 403 for {url}")
        for url in ("https://a.example/x/123", "https://b.example/y/456", "https://c.org/77")
    ]
    gone = await _failed_job(
        client, store, runner, api_key, "Video unavailable: dQw4w9WgXcQ", "warning"
    )

    groups = await _failures(client, api_key)

    assert [(g["error_type"], g["message"], g["count"]) for g in groups] == [
        ("error", "HTTP Error 403 for <url>", 3),
        ("warning", "Video unavailable: <id>", 1),
    ]
    first = groups[0]
    assert sorted(first["job_ids"]) == sorted(forbidden)  # type: ignore[arg-type]
    assert first["job_ids"][0] == forbidden[-1]  # type: ignore[index]  # the latest first
    assert first["group_id"] == failure_groups.group_id("error", "HTTP Error 403 for https://x")
    assert before <= first["first_failed_at"] <= first["last_failed_at"]  # type: ignore[operator]
    assert groups[1]["job_ids"] == [gone]


async def test_a_group_shows_at_most_five_job_ids_and_the_groups_are_bounded(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, api_key: str
) -> None:
    for n in range(6):
        await _failed_job(client, store, runner, api_key, f"HTTP Error 500 for http://h{n}.test/")
    await _failed_job(client, store, runner, api_key, "Unsupported URL: http://x.test/a")

    groups = await _failures(client, api_key)
    assert [(g["count"], len(g["job_ids"])) for g in groups] == [(6, 5), (1, 1)]  # type: ignore[arg-type]
    assert len(await _failures(client, api_key, limit=1)) == 1


async def test_a_retried_job_leaves_its_group(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, api_key: str
) -> None:
    kept = await _failed_job(client, store, runner, api_key, "HTTP Error 403 for http://a.test/1")
    retried = await _failed_job(client, store, runner, api_key, "HTTP Error 403 for http://b/2")

    answer = await client.post(f"/jobs/{retried}/retry", headers=_auth(api_key))
    assert answer.status_code == 200, answer.text
    await runner.settle()

    groups = await _failures(client, api_key)
    assert [(g["count"], g["job_ids"]) for g in groups] == [(1, [kept])]


async def test_since_counts_only_jobs_that_failed_since(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, api_key: str
) -> None:
    await _failed_job(client, store, runner, api_key, "HTTP Error 403 for http://a.test/1")
    later = int(time.time() * 1000) + 60_000

    assert len(await _failures(client, api_key, since="2020-01-01T00:00:00Z")) == 1
    assert await _failures(client, api_key, since=later) == []

    bad = await client.get("/jobs/failures?since=yesterday", headers=_auth(api_key))
    assert bad.status_code == 400
    assert "since" in bad.json()["error"]


async def test_another_accounts_failures_are_not_shown_but_an_admin_may_see_all(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    api_key: str,
    other_api_key: str,
    admin_key: str,
) -> None:
    theirs = await _failed_job(
        client, store, runner, other_api_key, "Disk quota reached on node n-17 for a.mp4"
    )

    assert await _failures(client, api_key) == []
    refused = await client.get("/jobs/failures?all_accounts=true", headers=_auth(api_key))
    assert refused.status_code == 403
    every = await _failures(client, admin_key, all_accounts="true", limit=200)
    assert any(theirs in g["job_ids"] for g in every)  # type: ignore[operator]


async def test_a_groups_failed_jobs_are_what_the_failure_group_filter_finds(
    client: httpx.AsyncClient,
    store: EventStore,
    runner: ProjectionRunner,
    api_key: str,
) -> None:
    failed = [
        await _failed_job(client, store, runner, api_key, f"HTTP Error 410 for http://h{n}.test/")
        for n in range(3)
    ]
    await _failed_job(client, store, runner, api_key, "another reason")
    group = (await _failures(client, api_key))[0]
    listed = await client.get(
        "/jobs", params={"failure_group": str(group["group_id"])}, headers=_auth(api_key)
    )
    assert listed.status_code == 200, listed.text
    assert sorted(j["id"] for j in listed.json()["jobs"]) == sorted(failed)
    # The same filter is what a bulk retry of the group takes (POST /jobs/actions).
    dry = await client.post(
        "/jobs/actions",
        json={"action": "retry", "filter": {"failure_group": group["group_id"]}, "dry_run": True},
        headers=_auth(api_key),
    )
    assert dry.status_code == 202, dry.text
    assert dry.json()["matched"] == 3


async def test_migration_0023_gives_jobs_that_failed_before_it_their_group(
    server_url: str,
) -> None:
    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    try:
        await migrate(url, "0021_live_progress")
        pool = await create_pool(url, max_size=2)
        try:
            insert = (
                "INSERT INTO jobs (job_id, account_id, url, status, step, created_at, updated_at, "
                "version, state) VALUES ($1, 'a', 'https://x.test/a', $2, 'Finished', now(), "
                "now(), 3, $3::jsonb)"
            )
            failed = {"error": "HTTP Error 403 for https://x.test/a", "error_type": "error"}
            await pool.execute(insert, "failed", "Failed", json.dumps(failed).encode())
            await pool.execute(insert, "completed", "Completed", b"{}")

            await migrate(url)

            groups = dict(await pool.fetch("SELECT job_id, failure_group FROM jobs"))
            assert groups == {
                "failed": failure_groups.group_id("error", "HTTP Error 403 for https://y.test/b"),
                "completed": None,
            }
        finally:
            await pool.close()
    finally:
        await drop_database(server_url, name)
