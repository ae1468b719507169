"""The dashboard's own endpoints: the page and its files, nodes, throughput; auth and bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from spool.api.cluster_reads import REFUSED
from spool.domain import account, job, node
from spool.domain.account import hash_key
from spool.domain.events import Metadata, NewEvent
from spool.domain.node_health import UnitFailure, quarantine_reason
from spool.keys import issue
from tests.cluster_api_helpers import FreshApi, append_node, fresh_api, heartbeat, register
from tests.fixtures.request_log import Lines


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


async def test_the_page_and_its_files_are_served_without_a_key(api: FreshApi) -> None:
    page = await api.client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="api-key"' in page.text
    # Only its own scripts and only this origin: a pasted key cannot be sent anywhere else.
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    script = await api.client.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert "sessionStorage" in script.text
    assert script.headers["cache-control"] == "no-cache"  # never an older script after upgrade
    style = await api.client.get("/dashboard/static/dashboard.css")
    assert style.status_code == 200
    missing = await api.client.get("/dashboard/static/nothing.js")
    assert missing.status_code == 404


async def test_nodes_show_heartbeat_age_usage_stage_counts_and_drain(api: FreshApi) -> None:
    await register(api.store, api.runner, "busy-1", ip="10.0.0.7")
    await append_node(api.store, api.runner, "gone-2", heartbeat("gone-2", cpu=95.0))
    await append_node(api.store, api.runner, "gone-2", node.NodeStopped(node_id="gone-2"))
    await append_node(api.store, api.runner, "gone-2", node.NodeDrainRequested(node_id="gone-2"))

    answer = await api.client.get("/dashboard/nodes", headers=api.admin())
    assert answer.status_code == 200
    nodes = {n["node_id"]: n for n in answer.json()["nodes"]}
    assert list(nodes) == ["busy-1", "gone-2"]  # online nodes first
    busy = nodes["busy-1"]
    assert busy["hostname"] == "host-busy-1"
    assert busy["ip"] == "192.168.1.101"  # what its latest heartbeat said
    assert busy["online"] is True
    assert 0 <= busy["heartbeat_age_seconds"] < 30
    assert busy["cpu_percent"] == 25.0
    assert busy["memory_percent"] == 25.0  # 4 of 16 GiB
    assert (busy["downloading"], busy["muxing"], busy["uploading"]) == (1, 0, 0)
    assert busy["running"] == 1
    assert busy["state"] == "active"
    assert nodes["gone-2"]["online"] is False
    assert nodes["gone-2"]["state"] == "draining"
    assert nodes["gone-2"]["cpu_percent"] == 95.0


async def test_nodes_show_a_quarantine_and_a_disk_floor_with_why(api: FreshApi) -> None:
    failures = [UnitFailure(unit="job-1:1:mux:1", reason="Internal error: OSError")]
    quarantined = node.NodeQuarantined(
        node_id="sick-1", reason=quarantine_reason(failures), failures=failures
    )
    await register(api.store, api.runner, "sick-1")
    await append_node(api.store, api.runner, "sick-1", quarantined)
    full = msgspec.structs.replace(heartbeat("full-2"), disk_floor="free disk 1.0 GB is low")
    await register(api.store, api.runner, "full-2")
    await append_node(api.store, api.runner, "full-2", full)

    answer = await api.client.get("/dashboard/nodes", headers=api.admin())
    nodes = {n["node_id"]: n for n in answer.json()["nodes"]}
    assert nodes["sick-1"]["state"] == "quarantined"
    assert nodes["sick-1"]["state_reason"] == (
        "quarantined: 1 unit failed in a row on this node; the last: Internal error: OSError"
    )
    assert nodes["full-2"]["state"] == "disk_floor"
    assert nodes["full-2"]["state_reason"] == "disk floor: free disk 1.0 GB is low"


async def _finished_job(api: FreshApi, *, size: int | None) -> None:
    """A job created and then completed (storing `size` bytes) or, with no size, failed."""
    job_id = str(uuid.uuid4())
    created = job.JobCreated(job_id=job_id, account_id=api.account_id, url="https://x/a.mp4")
    end: job.Event = (
        job.JobCompleted(
            run=1, attempt=1, node_id="n", key=f"{job_id}.mp4", storage="s3", size=size, seconds=1
        )
        if size is not None
        else job.JobFailed(run=1, stage="download", reason="source answered 404")
    )
    meta = Metadata(actor="test")
    done = await api.store.append(
        job.stream_id(job_id), [NewEvent(created, meta), NewEvent(end, meta)], 0
    )
    await api.runner.wait_until("job_minutes", done.checkpoint)


async def test_throughput_counts_finished_jobs_and_bytes_per_minute(api: FreshApi) -> None:
    await _finished_job(api, size=1000)
    await _finished_job(api, size=2500)
    await _finished_job(api, size=None)

    answer = await api.client.get("/dashboard/throughput?minutes=5", headers=api.admin())
    assert answer.status_code == 200
    body = answer.json()
    assert body["minutes"] == 5
    points = body["points"]
    assert len(points) == 5  # every minute of the window, empty ones as zeros
    minutes = [p["minute"] for p in points]
    assert minutes == sorted(minutes) and all(m.endswith(":00Z") for m in minutes)
    assert sum(p["completed"] for p in points) == 2
    assert sum(p["failed"] for p in points) == 1
    assert sum(p["bytes"] for p in points) == 3500
    default = await api.client.get("/dashboard/throughput", headers=api.admin())
    assert len(default.json()["points"]) == 60


async def test_a_bad_throughput_window_is_a_400(api: FreshApi) -> None:
    for minutes in ("0", "1441", "-5", "abc", "1.5", ""):
        answer = await api.client.get(
            f"/dashboard/throughput?minutes={minutes}", headers=api.admin()
        )
        assert answer.status_code == 400, minutes
        assert "minutes" in answer.json()["error"], minutes


async def test_the_dashboard_data_needs_an_admin_key(api: FreshApi) -> None:
    for path in ("/dashboard/nodes", "/dashboard/throughput"):
        missing = await api.client.get(path)
        assert (missing.status_code, missing.json()) == (401, {"error": "Missing x-api-key header"})
        wrong = await api.client.get(path, headers={"x-api-key": "sk_wrong"})
        assert (wrong.status_code, wrong.json()) == (401, {"error": "Invalid API Key"})
        user = await api.client.get(path, headers=api.user())
        assert user.status_code == 403
        assert user.json() == {"error": REFUSED}
        bearer = await api.client.get(path, headers={"Authorization": f"Bearer {api.admin_key}"})
        assert bearer.status_code == 200


async def test_the_dashboard_polls_write_no_request_log_lines(
    api: FreshApi, request_log: Lines
) -> None:
    for path in ("/dashboard/cluster", "/dashboard/nodes", "/dashboard/throughput?minutes=5"):
        assert (await api.client.get(path, headers=api.admin())).status_code == 200
    assert request_log.lines == []
    await api.client.get("/jobs", headers=api.user())  # an ordinary request still is logged
    assert len(request_log.lines) == 1 and '"path":"/jobs"' in request_log.lines[0]


async def test_cluster_stats_refuse_every_caller_but_an_admin_even_with_a_warm_cache(
    api: FreshApi,
) -> None:
    # An admin's poll fills the cached answer; a user's own request makes its key a known one.
    assert (await api.client.get("/dashboard/cluster", headers=api.admin())).status_code == 200
    assert (await api.client.get("/jobs", headers=api.user())).status_code == 200
    missing = await api.client.get("/dashboard/cluster")
    assert (missing.status_code, missing.json()) == (401, {"error": "Missing x-api-key header"})
    wrong = await api.client.get("/dashboard/cluster", headers={"x-api-key": "sk_wrong"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "Invalid API Key"})
    user = await api.client.get("/dashboard/cluster", headers=api.user())
    assert user.status_code == 403
    assert user.json() == {"error": REFUSED}
    bearer = await api.client.get(
        "/dashboard/cluster", headers={"Authorization": f"Bearer {api.admin_key}"}
    )
    assert bearer.status_code == 200


async def test_a_cached_cluster_answer_looks_like_a_fresh_one(api: FreshApi) -> None:
    await register(api.store, api.runner, "n-cached")
    await append_node(api.store, api.runner, "n-cached", heartbeat("n-cached", muxing=2))
    first = await api.client.get("/dashboard/cluster", headers=api.admin())
    again = await api.client.get(
        "/dashboard/cluster", headers={**api.admin(), "x-request-id": "poll-2"}
    )
    for answer in (first, again):
        assert answer.status_code == 200
        assert answer.json() == {"total_downloading": 1, "total_muxing": 2, "total_uploading": 0}
        assert answer.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"] and first.headers["x-request-id"] != "poll-2"
    assert again.headers["x-request-id"] == "poll-2"
    assert again.content == first.content


async def test_a_revoked_admin_key_stops_reading_cluster_stats_once_its_cache_time_is_over(
    api: FreshApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spool.api.auth.KEY_CACHE_SECONDS", 0.2)
    monkeypatch.setattr("spool.api.dashboard.STATS_CACHE_SECONDS", 60.0)  # the answer stays cached
    admin = await issue(api.store, name="leaving", admin=True)
    await api.runner.wait_until("api_keys", admin.at)
    headers = {"x-api-key": admin.key}
    assert (await api.client.get("/dashboard/cluster", headers=headers)).status_code == 200
    key_id = await api.pool.fetchval(
        "SELECT key_id FROM api_keys WHERE key_hash = $1", hash_key(admin.key)
    )
    revoked = await api.store.append(
        account.stream_id(admin.account_id), [NewEvent(account.ApiKeyRevoked(key_id=key_id))], 1
    )
    await api.runner.wait_until("api_keys", revoked.checkpoint)
    async with asyncio.timeout(10):  # once the key's own cache entry has expired
        while (after := await api.client.get("/dashboard/cluster", headers=headers)).is_success:
            await asyncio.sleep(0.05)
    assert (after.status_code, after.json()) == (401, {"error": "Invalid API Key"})
    # The cached answer is still served to a key that is still good.
    assert (await api.client.get("/dashboard/cluster", headers=api.admin())).status_code == 200
