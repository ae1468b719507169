"""What an admin allows each account, over the real API and database: grants of code-running
tasks (`/api/v1/tasks`), quotas on jobs (`/jobs`, `/jobs/bulk`), `/admin/accounts`, `/usage`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.domain.account import hash_key
from spool.keys import IssuedKey, issue
from spool.reactors.projection import ProjectionRunner
from tests.conftest import api_client
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_clip
from tests.media_helpers import finished_job

TASKS = "/api/v1/tasks"
CODE_TYPES = ("command", "python_eval", "http_request")
PAYLOADS: dict[str, dict[str, Any]] = {
    "command": {"command": ["env"]},
    "python_eval": {"expression": "1 + 1"},
    "http_request": {"url": "http://127.0.0.1:9/"},
}


def h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture
async def account(store: EventStore, runner: ProjectionRunner) -> IssuedKey:
    """A fresh plain account, its key usable at once."""
    issued = await issue(store, name=f"tenant-{uuid.uuid4().hex[:6]}", admin=False)
    await runner.wait_until("api_keys", issued.at)
    return issued


async def _tasks_of(client: httpx.AsyncClient, key: str, runner: ProjectionRunner) -> int:
    await runner.settle("tasks")
    listing = await client.get(TASKS, headers=h(key))
    total: int = listing.json()["pagination"]["total_items"]
    return total


async def _jobs_created(store: EventStore, account_id: str) -> int:
    """JobCreated events of the account in the log itself (no projection in between)."""
    count: int = await store.pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'JobCreated' AND data->>'account_id' = $1",
        account_id,
    )
    return count


async def _set_quotas(
    client: httpx.AsyncClient, admin_key: str, account_id: str, **quotas: int
) -> None:
    answer = await client.put(
        f"/admin/accounts/{account_id}/quotas", json=quotas, headers=h(admin_key)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["quotas"] == {
        "max_running_jobs": None,
        "max_jobs_per_day": None,
        "max_storage_bytes": None,
        "max_media_seconds": None,
        "min_subscription_interval": None,
        **quotas,
    }


async def _grant(
    client: httpx.AsyncClient, admin_key: str, account_id: str, **grant: Any
) -> dict[str, Any]:
    answer = await client.put(
        f"/admin/accounts/{account_id}/grants", json=grant, headers=h(admin_key)
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


# -- grants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_type", CODE_TYPES)
async def test_a_plain_user_is_refused_each_code_running_task_type(
    client: httpx.AsyncClient, account: IssuedKey, runner: ProjectionRunner, task_type: str
) -> None:
    answer = await client.post(
        TASKS,
        json={"task_type": task_type, "payload": PAYLOADS[task_type]},
        headers=h(account.key),
    )
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["status"] == "error" and body["error_code"] == "UNAUTHORIZED"
    assert task_type in body["message"] and "grant" in body["message"]
    assert body["error_details"] == {"field": "task_type", "reason": "not_allowed"}
    assert await _tasks_of(client, account.key, runner) == 0  # nothing was created


async def test_an_admin_key_may_submit_code_running_tasks(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    for task_type in CODE_TYPES:
        answer = await client.post(
            TASKS,
            json={"task_type": task_type, "payload": PAYLOADS[task_type]},
            headers=h(admin_key),
        )
        assert answer.status_code == 201, answer.text


async def test_a_grant_allows_only_its_task_types_and_variables_until_revoked(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey, runner: ProjectionRunner
) -> None:
    granted = await _grant(
        client, admin_key, account.account_id, task_types=["command"], env=["TENANT_TOKEN"]
    )
    assert granted["grant"] == {"task_types": ["command"], "env": ["TENANT_TOKEN"]}

    ok = await client.post(
        TASKS,
        json={"task_type": "command", "payload": {"command": "env", "env": ["TENANT_TOKEN"]}},
        headers=h(account.key),
    )
    assert ok.status_code == 201, ok.text
    other_type = await client.post(
        TASKS,
        json={"task_type": "python_eval", "payload": PAYLOADS["python_eval"]},
        headers=h(account.key),
    )
    assert other_type.status_code == 403 and "python_eval" in other_type.json()["message"]
    secret = await client.post(
        TASKS,
        json={"task_type": "command", "payload": {"command": "env", "env": ["SPOOL_SECRET_KEY"]}},
        headers=h(account.key),
    )
    assert secret.status_code == 403
    assert "SPOOL_SECRET_KEY" in secret.json()["message"]
    assert secret.json()["error_details"]["field"] == "payload.env"
    not_a_name = await client.post(
        TASKS,
        json={"task_type": "command", "payload": {"command": "env", "env": ["A=B"]}},
        headers=h(account.key),
    )
    assert not_a_name.status_code == 400
    assert not_a_name.json()["error_details"]["field"] == "payload.env"

    revoked = await client.delete(
        f"/admin/accounts/{account.account_id}/grants", headers=h(admin_key)
    )
    assert revoked.status_code == 200 and revoked.json()["grant"] is None
    again = await client.post(
        TASKS, json={"task_type": "command", "payload": {"command": "env"}}, headers=h(account.key)
    )
    assert again.status_code == 403
    assert await _tasks_of(client, account.key, runner) == 1  # only the allowed one


async def test_urgent_priority_needs_an_admin_key(
    client: httpx.AsyncClient, account: IssuedKey, admin_key: str, runner: ProjectionRunner
) -> None:
    refused = await client.post(
        TASKS, json={"task_type": "echo", "priority": "urgent"}, headers=h(account.key)
    )
    assert refused.status_code == 403
    assert refused.json()["error_details"] == {"field": "priority", "reason": "not_allowed"}
    assert "urgent" in refused.json()["message"]
    high = await client.post(
        TASKS, json={"task_type": "echo", "priority": "high"}, headers=h(account.key)
    )
    assert high.status_code == 201
    by_admin = await client.post(
        TASKS, json={"task_type": "echo", "priority": "urgent"}, headers=h(admin_key)
    )
    assert by_admin.status_code == 201
    assert await _tasks_of(client, account.key, runner) == 1


# -- the admin API ---------------------------------------------------------------------------


async def test_only_an_admin_key_reads_or_changes_accounts(
    client: httpx.AsyncClient, account: IssuedKey
) -> None:
    path = f"/admin/accounts/{account.account_id}"
    for method, url, body in (
        ("GET", "/admin/accounts", None),
        ("PUT", f"{path}/quotas", {"max_running_jobs": 1000}),
        ("PUT", f"{path}/grants", {}),
        ("DELETE", f"{path}/grants", None),
    ):
        answer = await client.request(method, url, json=body, headers=h(account.key))
        assert answer.status_code == 403, (method, url, answer.text)
        assert "admin" in answer.json()["error"]
    listing = await client.get(f"/admin/accounts/{account.account_id}", headers=h(account.key))
    assert listing.status_code == 403


async def test_an_unknown_account_is_a_404_and_bad_values_a_400_naming_the_field(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey, store: EventStore
) -> None:
    nobody = f"/admin/accounts/{uuid.uuid4().hex}"
    for method, url, body in (
        ("GET", nobody, None),
        ("PUT", f"{nobody}/quotas", {"max_running_jobs": 1}),
        ("PUT", f"{nobody}/grants", {}),
        ("DELETE", f"{nobody}/grants", None),
    ):
        answer = await client.request(method, url, json=body, headers=h(admin_key))
        assert answer.status_code == 404, (method, url, answer.text)
        assert "not found" in answer.json()["error"]

    before = await store.stream_version(f"account-{account.account_id}")
    path = f"/admin/accounts/{account.account_id}"
    for url, body, field in (
        (f"{path}/quotas", {"max_running_jobs": -1}, "max_running_jobs"),
        (f"{path}/quotas", {"max_jobs_per_day": "ten"}, "max_jobs_per_day"),
        (f"{path}/quotas", {"max_storage_bytes": 1.5}, "max_storage_bytes"),
        (f"{path}/quotas", {"max_jobs": 3}, "max_jobs"),
        (f"{path}/grants", {"task_types": ["echo"]}, "task_types"),
        (f"{path}/grants", {"env": ["NOT-A-NAME"]}, "env"),
    ):
        answer = await client.put(url, json=body, headers=h(admin_key))
        assert answer.status_code == 400, (body, answer.text)
        assert field in answer.json()["error"], answer.text
    # Nothing was recorded for the refused changes.
    assert await store.stream_version(f"account-{account.account_id}") == before


async def test_the_account_list_shows_keys_grants_and_quotas_but_no_secret(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey
) -> None:
    await _grant(client, admin_key, account.account_id, env=["LANGUAGE"])
    await _set_quotas(client, admin_key, account.account_id, max_jobs_per_day=7)
    answer = await client.get("/admin/accounts", headers=h(admin_key))
    assert answer.status_code == 200
    mine = [a for a in answer.json()["accounts"] if a["account_id"] == account.account_id]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["grant"] == {"task_types": list(CODE_TYPES), "env": ["LANGUAGE"]}
    assert entry["quotas"]["max_jobs_per_day"] == 7
    assert [k["name"] for k in entry["keys"]] and not entry["keys"][0]["admin"]
    assert account.key not in answer.text and account.key[-12:] not in answer.text


# -- quotas ----------------------------------------------------------------------------------


async def _create(client: httpx.AsyncClient, key: str, n: int = 0) -> httpx.Response:
    return await client.post("/jobs", json={"url": f"http://media.test/q{n}.mp4"}, headers=h(key))


async def test_past_the_running_jobs_quota_a_job_is_refused_with_429_and_nothing_is_created(
    client: httpx.AsyncClient,
    admin_key: str,
    account: IssuedKey,
    store: EventStore,
    runner: ProjectionRunner,
) -> None:
    await _set_quotas(client, admin_key, account.account_id, max_running_jobs=2)
    first = await _create(client, account.key, 1)
    assert (await _create(client, account.key, 2)).status_code == 201
    refused = await _create(client, account.key, 3)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
    body = refused.json()
    assert body["quota"] == "max_running_jobs" and body["limit"] == 2 and body["used"] == 2
    assert "max_running_jobs" in body["error"] and "2" in body["error"]
    assert await _jobs_created(store, account.account_id) == 2

    # A finished job frees its place.
    cancelled = await client.delete(f"/jobs/{first.json()['job_id']}", headers=h(account.key))
    assert cancelled.status_code == 200
    await runner.settle("jobs")
    assert (await _create(client, account.key, 4)).status_code == 201


async def test_retrying_a_finished_job_counts_against_the_running_quota(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey, runner: ProjectionRunner
) -> None:
    await _set_quotas(client, admin_key, account.account_id, max_running_jobs=1)
    first = (await _create(client, account.key, 1)).json()["job_id"]
    assert (await client.delete(f"/jobs/{first}", headers=h(account.key))).status_code == 200
    await runner.settle("jobs")
    second = (await _create(client, account.key, 2)).json()["job_id"]
    # Racing retries of the cancelled job never set two jobs running.
    retries = await asyncio.gather(
        *(client.post(f"/jobs/{first}/retry", headers=h(account.key)) for _ in range(3))
    )
    assert {r.status_code for r in retries} == {429}, [r.text for r in retries]
    assert retries[0].json()["quota"] == "max_running_jobs"
    state = await client.get(f"/jobs/{first}", headers=h(account.key))
    assert state.json()["status"] == "Cancelled"

    assert (await client.delete(f"/jobs/{second}", headers=h(account.key))).status_code == 200
    await runner.settle("jobs")
    answers = await asyncio.gather(
        *(client.post(f"/jobs/{j}/retry", headers=h(account.key)) for j in (first, second))
    )
    assert sorted(a.status_code for a in answers) == [200, 429]
    # A job that cannot be retried says so, whatever the quota.
    running = next(j for j, a in zip((first, second), answers, strict=True) if a.status_code == 200)
    again = await client.post(f"/jobs/{running}/retry", headers=h(account.key))
    assert again.status_code == 400


async def test_a_bulk_request_past_the_daily_quota_is_refused_whole(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey, store: EventStore
) -> None:
    await _set_quotas(client, admin_key, account.account_id, max_jobs_per_day=3)
    four = {"jobs": [{"url": f"http://media.test/b{i}.mp4"} for i in range(4)]}
    refused = await client.post("/jobs/bulk", json=four, headers=h(account.key))
    assert refused.status_code == 429, refused.text
    assert refused.json()["quota"] == "max_jobs_per_day"
    # The wait is until the next UTC midnight.
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    wait = int(refused.headers["retry-after"])
    assert abs(wait - (midnight - now).total_seconds()) < 120
    assert await _jobs_created(store, account.account_id) == 0

    three = {"jobs": four["jobs"][:3]}
    assert (await client.post("/jobs/bulk", json=three, headers=h(account.key))).status_code == 201
    assert (await _create(client, account.key)).status_code == 429
    assert await _jobs_created(store, account.account_id) == 3


@contextlib.asynccontextmanager
async def _other_apis(database_url: str, n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`n` more APIs over the same database, each with a pool of its own (as other processes
    would have): each API lets one request of an account at a time take a connection, so only
    the database lock orders requests across them."""
    settings = Settings(database_url=database_url, secret_key="test-secret-key", rate_limit=100_000)
    pools = [await create_pool(database_url, min_size=1, max_size=3) for _ in range(n)]
    clients = [
        api_client(
            create_app(
                pool=p, store=EventStore(p), settings=settings, storage=LocalStorage(Path("/x"))
            )
        )
        for p in pools
    ]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()
        for p in pools:
            await p.close()


async def test_concurrent_requests_never_pass_the_quota_together(
    database_url: str,
    client: httpx.AsyncClient,
    admin_key: str,
    account: IssuedKey,
    store: EventStore,
    runner: ProjectionRunner,
) -> None:
    await _set_quotas(client, admin_key, account.account_id, max_running_jobs=3)
    async with _other_apis(database_url, 5) as others:
        apis = [client, *others]
        answers = await asyncio.gather(
            *(_create(apis[i % len(apis)], account.key, i) for i in range(12))
        )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 3 + [429] * 9, [a.text for a in answers]
    assert await _jobs_created(store, account.account_id) == 3

    # Bulk requests racing each other: each all or nothing, never past the quota together.
    other = await issue(store, name="racer", admin=False)
    await runner.wait_until("api_keys", other.at)
    await _set_quotas(client, admin_key, other.account_id, max_jobs_per_day=5)
    two = {"jobs": [{"url": f"http://media.test/r{i}.mp4"} for i in range(2)]}
    results = await asyncio.gather(
        *(client.post("/jobs/bulk", json=two, headers=h(other.key)) for _ in range(6))
    )
    assert sorted(r.status_code for r in results) == [201] * 2 + [429] * 4
    assert await _jobs_created(store, other.account_id) == 4


async def test_past_the_storage_quota_a_job_is_refused_with_403(
    client: httpx.AsyncClient,
    admin_key: str,
    account: IssuedKey,
    store: EventStore,
    runner: ProjectionRunner,
    tmp_path: Path,
) -> None:
    media = make_clip(tmp_path / "held.mp4", 1.0)
    storage = LocalStorage(tmp_path / "storage")
    await finished_job(store, storage, account.account_id, media, duration=1.0)
    await runner.settle("usage")
    held = media.stat().st_size
    await _set_quotas(client, admin_key, account.account_id, max_storage_bytes=held)
    refused = await _create(client, account.key)
    assert refused.status_code == 403, refused.text
    assert "retry-after" not in refused.headers
    body = refused.json()
    assert (body["quota"], body["limit"], body["used"]) == ("max_storage_bytes", held, held)
    assert await _jobs_created(store, account.account_id) == 1  # only the finished one

    await _set_quotas(client, admin_key, account.account_id, max_storage_bytes=held + 1)
    assert (await _create(client, account.key)).status_code == 201


async def test_usage_shows_each_quota_beside_its_use(
    client: httpx.AsyncClient, admin_key: str, account: IssuedKey
) -> None:
    await _set_quotas(
        client, admin_key, account.account_id, max_running_jobs=5, max_media_seconds=600
    )
    assert (await _create(client, account.key)).status_code == 201
    usage = await client.get("/usage", headers=h(account.key))
    assert usage.status_code == 200
    assert usage.json()["quotas"] == {
        "max_running_jobs": {"limit": 5, "used": 1},
        "max_jobs_per_day": {"limit": None, "used": 1},
        "max_storage_bytes": {"limit": None, "used": 0},
        "max_media_seconds": {"limit": 600, "used": 0},
    }


async def test_no_quota_set_leaves_jobs_unlimited(
    client: httpx.AsyncClient, account: IssuedKey, store: EventStore
) -> None:
    answers = await asyncio.gather(*(_create(client, account.key, i) for i in range(8)))
    assert {a.status_code for a in answers} == {201}
    assert await _jobs_created(store, account.account_id) == 8


# -- the longest media, on a real cluster ----------------------------------------------------


async def test_media_longer_than_the_quota_fails_its_job_at_once_naming_the_quota(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    account_id = await cluster.pool.fetchval(
        "SELECT account_id FROM api_keys WHERE key_hash = $1", hash_key(cluster.key)
    )
    await _set_quotas(cluster.client, cluster.admin_key, account_id, max_media_seconds=60)
    # A page that declares a ten-minute video whose file would take minutes to fetch: only a
    # refusal before the download fails it within the wait below.
    page = media_dir / f"talk-{uuid.uuid4().hex[:8]}.html"
    ld = {
        "@context": "https://schema.org",
        "@type": "VideoObject",
        "name": "A long talk",
        "uploadDate": "2024-01-01",
        "duration": "PT10M",
        "contentUrl": media_server.slow_url("clip.mp4", chunk=1024, interval=2.0),
    }
    page.write_text(
        "<!DOCTYPE html><html><head><title>A long talk</title>"
        f'<script type="application/ld+json">{json.dumps(ld)}</script></head><body></body></html>'
    )
    declared = await cluster.create(media_server.url(page.name))
    failed = await cluster.wait(declared, "Completed", "Failed", seconds=30)
    assert failed["status"] == "Failed", failed
    assert "max_media_seconds (60 s)" in failed["error"] and "600 s" in failed["error"]
    assert failed["download_retries"] == 1  # the one attempt: nothing retried
    events = await cluster.event_types(declared)
    assert events.count("StageFailed") == 1 and "DownloadCompleted" not in events

    # A source that does not tell its length is measured once fetched: the same refusal.
    await _set_quotas(cluster.client, cluster.admin_key, account_id, max_media_seconds=1)
    untold = await cluster.create(media_server.url("clip.mp4"))  # 2 s long
    failed = await cluster.wait(untold, "Completed", "Failed")
    assert failed["status"] == "Failed" and "max_media_seconds (1 s)" in failed["error"]
    assert failed["download_retries"] == 1  # the one attempt: nothing retried
    assert "DownloadCompleted" not in await cluster.event_types(untold)

    await _set_quotas(cluster.client, cluster.admin_key, account_id, max_media_seconds=5)
    within = await cluster.create(media_server.url("clip.mp4"))
    assert (await cluster.wait(within, "Completed", "Failed"))["status"] == "Completed"
