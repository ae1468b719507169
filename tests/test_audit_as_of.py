"""Audit: a job's event history, and jobs, batches and tasks read `as_of` an earlier point."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from spool.adapters.event_store import EventStore
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer

LINKS = ("s3_url", "subtitle_url", "thumbnail_url")


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _events(client: httpx.AsyncClient, key: str, job_id: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/jobs/{job_id}/events", params={"limit": 1000}, headers=_auth(key))
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def _first(events: list[dict[str, Any]], type_: str, **data: Any) -> dict[str, Any]:
    return next(
        e for e in events if e["type"] == type_ and all(e["data"][k] == v for k, v in data.items())
    )


async def test_a_job_reads_as_it_stood_at_each_step_by_position_and_by_time(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="audited")
    now = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
    assert now["status"] == "Completed", now
    events = await _events(cluster.client, cluster.key, job_id)
    steps = [
        (_first(events, "JobCreated"), "Pending", "Queued"),
        (_first(events, "StageStarted", stage="download"), "Processing", "Downloading"),
        (_first(events, "StageStarted", stage="mux"), "Processing", "Muxing"),
        (_first(events, "StageStarted", stage="upload"), "Processing", "Uploading"),
        (_first(events, "JobCompleted"), "Completed", "Finished"),
    ]

    for event, status, step in steps:
        for as_of in (str(event["position"]), event["recorded_at"]):
            answer = await cluster.client.get(
                f"/jobs/{job_id}", params={"as_of": as_of}, headers=cluster.headers()
            )
            assert answer.status_code == 200, answer.text
            then = answer.json()
            assert (then["status"], then["step"]) == (status, step), (as_of, then)
            assert then.keys() == now.keys()  # the same shape as GET /jobs/{id}
            assert all(then[link] is None for link in LINKS)

    downloading = await cluster.client.get(
        f"/jobs/{job_id}", params={"as_of": steps[1][0]["position"]}, headers=cluster.headers()
    )
    assert downloading.json()["download_duration_ms"] is None
    assert downloading.json()["progress"]["stage"] == "download"
    # As of its last event the job is exactly what it is now, less the presigned links.
    last = await cluster.client.get(
        f"/jobs/{job_id}", params={"as_of": events[-1]["position"]}, headers=cluster.headers()
    )
    assert {k: v for k, v in last.json().items() if k not in LINKS} == {
        k: v for k, v in now.items() if k not in LINKS
    }


async def test_a_jobs_events_carry_position_version_schema_and_full_metadata(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"))
    await cluster.wait(job_id, "Completed", "Failed", seconds=90)

    first = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 2}, headers=cluster.headers()
    )
    page = first.json()
    rest = await cluster.client.get(
        f"/jobs/{job_id}/events",
        params={"from_version": page["next_from_version"], "limit": 1000},
        headers=cluster.headers(),
    )
    events = page["events"] + rest.json()["events"]

    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert rest.json()["next_from_version"] is None
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    for e in events:
        assert set(e) == {
            "position",
            "version",
            "type",
            "schema_version",
            "data",
            "metadata",
            "recorded_at",
        }
        assert {"actor", "node_id", "correlation_id", "causation_id", "request_id"} <= set(
            e["metadata"]
        )
    created = _first(events, "JobCreated")
    assert created["metadata"]["actor"] and created["metadata"]["node_id"] is None
    started = _first(events, "StageStarted", stage="download")
    assert started["metadata"]["node_id"] == cluster.settings.node_id


async def test_as_of_before_the_job_existed_is_404_and_another_users_job_stays_404(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    created = await client.post(
        "/jobs", json={"url": "http://media.test/early.mp4"}, headers=_auth(api_key)
    )
    job_id = created.json()["job_id"]
    [event] = await _events(client, api_key, job_id)
    before_time = datetime.fromisoformat(event["recorded_at"]) - timedelta(milliseconds=1)

    for as_of in (str(event["position"] - 1), before_time.isoformat()):
        early = await client.get(f"/jobs/{job_id}", params={"as_of": as_of}, headers=_auth(api_key))
        assert early.status_code == 404
        assert "did not exist yet" in early.json()["error"]
    theirs = await client.get(
        f"/jobs/{job_id}", params={"as_of": event["position"]}, headers=_auth(other_api_key)
    )
    assert (theirs.status_code, theirs.json()) == (404, {"error": "Job not found"})


@pytest.mark.parametrize(
    "as_of", ["yesterday", "0", "-3", "2026-13-01", "2026-12-01T10:00:00 01:00"]
)
async def test_a_bad_as_of_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, api_key: str, as_of: str
) -> None:
    created = await client.post(
        "/jobs", json={"url": "http://media.test/bad.mp4"}, headers=_auth(api_key)
    )
    job_id = created.json()["job_id"]

    answer = await client.get(f"/jobs/{job_id}", params={"as_of": as_of}, headers=_auth(api_key))

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("as_of:")


async def test_a_batch_reads_as_it_stood_before_and_after_it_was_started(
    client: httpx.AsyncClient, store: EventStore, api_key: str, other_api_key: str
) -> None:
    bulk = await client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": "http://media.test/b1.mp4"}], "paused": True},
        headers=_auth(api_key),
    )
    batch_id, [job_id] = bulk.json()["batch_id"], bulk.json()["job_ids"]
    [event] = await store.read_stream(f"batch-{batch_id}")
    created = {"position": event.position, "recorded_at": event.recorded_at.isoformat()}
    started = await client.post(f"/batch/{batch_id}/start", headers=_auth(api_key))
    assert started.status_code == 200

    then = await client.get(
        f"/batch/{batch_id}", params={"as_of": created["position"]}, headers=_auth(api_key)
    )
    now = await client.get(f"/batch/{batch_id}", headers=_auth(api_key))
    by_time = await client.get(
        f"/batch/{batch_id}", params={"as_of": created["recorded_at"]}, headers=_auth(api_key)
    )

    assert then.status_code == by_time.status_code == 200
    assert then.json()["status"] == by_time.json()["status"] == "paused"
    assert now.json()["status"] == "processing"
    assert then.json().keys() == now.json().keys()
    assert [j["id"] for j in then.json()["jobs"]] == [job_id]
    early = await client.get(
        f"/batch/{batch_id}", params={"as_of": created["position"] - 1}, headers=_auth(api_key)
    )
    bad = await client.get(f"/batch/{batch_id}", params={"as_of": "soon"}, headers=_auth(api_key))
    theirs = await client.get(
        f"/batch/{batch_id}", params={"as_of": created["position"]}, headers=_auth(other_api_key)
    )
    assert early.status_code == 404
    assert bad.status_code == 400 and bad.json()["error"].startswith("as_of:")
    assert (theirs.status_code, theirs.json()) == (404, {"error": "Batch not found"})


async def test_a_task_reads_as_it_stood_before_it_was_cancelled(
    client: httpx.AsyncClient, store: EventStore, admin_key: str, api_key: str
) -> None:
    submitted = await client.post(
        "/api/v1/tasks",
        json={"task_type": "echo", "payload": {"message": "hi"}},
        headers=_auth(admin_key),
    )
    task_id = submitted.json()["data"]["task_id"]
    [event] = await store.read_stream(f"task-{task_id}")
    cancelled = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=_auth(admin_key))
    assert cancelled.status_code == 200

    for as_of in (str(event.position), event.recorded_at.isoformat()):
        then = await client.get(
            f"/api/v1/tasks/{task_id}", params={"as_of": as_of}, headers=_auth(admin_key)
        )
        assert then.status_code == 200, then.text
        assert then.json()["data"]["status"] == "queued"
    after = await client.get(f"/api/v1/tasks/{task_id}", headers=_auth(admin_key))

    assert after.json()["data"]["status"] == "cancelled"
    assert then.json()["data"].keys() == after.json()["data"].keys()
    bad = await client.get(
        f"/api/v1/tasks/{task_id}", params={"as_of": "later"}, headers=_auth(admin_key)
    )
    assert bad.status_code == 400
    assert bad.json()["error_code"] == "VALIDATION_ERROR"
    assert bad.json()["error_details"]["field"] == "as_of"
    early = await client.get(
        f"/api/v1/tasks/{task_id}",
        params={"as_of": "2000-01-01T00:00:00Z"},
        headers=_auth(admin_key),
    )
    assert (early.status_code, early.json()["error_code"]) == (404, "TASK_NOT_FOUND")
    theirs = await client.get(
        f"/api/v1/tasks/{task_id}", params={"as_of": event.position}, headers=_auth(api_key)
    )
    assert (theirs.status_code, theirs.json()["error_code"]) == (404, "TASK_NOT_FOUND")
