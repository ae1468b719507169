"""`Idempotency-Key` on `POST /jobs`, `/jobs/bulk` and `/api/v1/tasks`: a retry never doubles."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from spool.domain import idempotency
from tests.cluster_api_helpers import FreshApi, fresh_api

MEDIA = "https://93.184.216.34/clip.mp4"  # an address literal: no DNS lookup


@pytest.fixture
async def api(fresh_database_url: str, redis_url: str) -> AsyncIterator[FreshApi]:
    async with fresh_api(fresh_database_url, redis_url) as a:
        yield a


def _with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def _created_jobs(api: FreshApi) -> int:
    count: int = await api.pool.fetchval("SELECT count(*) FROM events WHERE type = 'JobCreated'")
    return count


async def test_the_same_request_sent_twice_with_a_key_creates_one_job(api: FreshApi) -> None:
    key = str(uuid.uuid4())
    body = {"url": MEDIA, "filename": "once"}
    first = await api.client.post("/jobs", json=body, headers=_with_key(api.user(), key))
    again = await api.client.post("/jobs", json=body, headers=_with_key(api.user(), key))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await _created_jobs(api) == 1
    # The first request is on record, in the log, with what it was answered.
    stream = idempotency.stream_id(api.account_id, key)
    [recorded] = await api.store.read_stream(stream)
    assert isinstance(recorded.data, idempotency.RequestRecorded)
    assert recorded.data.answer == first.text and recorded.data.status == 201
    assert key not in recorded.data.answer + recorded.data.key_digest  # only its digest is kept
    trace = await api.client.get(f"/jobs/{first.json()['job_id']}/trace", headers=api.user())
    assert [e["type"] for e in trace.json()["events"]] == ["JobCreated", "RequestRecorded"]


async def test_requests_without_a_key_are_never_merged(api: FreshApi) -> None:
    for _ in range(2):
        assert (await api.client.post("/jobs", json={"url": MEDIA}, headers=api.user())).is_success
    assert await _created_jobs(api) == 2


async def test_a_key_reused_for_a_different_request_is_a_422_and_creates_nothing(
    api: FreshApi,
) -> None:
    key = "order-17"
    headers = _with_key(api.user(), key)
    first = await api.client.post("/jobs", json={"url": MEDIA}, headers=headers)
    assert first.status_code == 201
    other = await api.client.post("/jobs", json={"url": MEDIA, "format": "mkv"}, headers=headers)
    assert other.status_code == 422
    assert other.json() == {
        "error": "This Idempotency-Key was already used for a different request"
    }
    elsewhere = await api.client.post(
        "/jobs/bulk", json={"jobs": [{"url": MEDIA}]}, headers=headers
    )
    assert elsewhere.status_code == 422  # the same body on another endpoint is another request
    assert await _created_jobs(api) == 1


async def test_keys_belong_to_one_account(api: FreshApi) -> None:
    body = {"url": MEDIA}
    mine = await api.client.post("/jobs", json=body, headers=_with_key(api.user(), "k-1"))
    theirs = await api.client.post("/jobs", json=body, headers=_with_key(api.admin(), "k-1"))
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert "idempotent-replayed" not in theirs.headers


async def test_copies_racing_each_other_all_get_the_one_job_created(api: FreshApi) -> None:
    headers = _with_key(api.user(), "burst")
    answers = await asyncio.gather(
        *(api.client.post("/jobs", json={"url": MEDIA}, headers=headers) for _ in range(12))
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    assert await _created_jobs(api) == 1


async def test_a_refused_request_records_nothing_so_its_corrected_retry_goes_through(
    api: FreshApi,
) -> None:
    headers = _with_key(api.user(), "fix-and-retry")
    refused = await api.client.post(
        "/jobs", json={"url": MEDIA, "video_quality": 99}, headers=headers
    )
    assert refused.status_code == 400
    # A refused request created nothing and recorded nothing: the same request still gets its
    # 400 (it is checked again), and the corrected one is a new request under the same key.
    again = await api.client.post(
        "/jobs", json={"url": MEDIA, "video_quality": 99}, headers=headers
    )
    assert again.status_code == 400
    fixed = await api.client.post(
        "/jobs", json={"url": MEDIA, "video_quality": 23}, headers=headers
    )
    assert fixed.status_code == 201
    assert await _created_jobs(api) == 1


@pytest.mark.parametrize("key", ["", " ", "has space", "x" * 256, "tab\there", "naïve"], ids=repr)
async def test_a_malformed_key_is_a_400_that_says_what_a_key_must_be(
    module_api: FreshApi, key: str
) -> None:
    api = module_api  # refused, each of them: nothing is created, so they can share a database
    answer = await api.client.post(
        "/jobs",
        json={"url": MEDIA},
        headers=[*api.user().items(), ("Idempotency-Key", key.encode("latin-1"))],  # type: ignore[list-item]
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"
    }
    assert await _created_jobs(api) == 0


async def test_the_longest_key_is_accepted(api: FreshApi) -> None:
    headers = _with_key(api.user(), "k" * 255)
    first = await api.client.post("/jobs", json={"url": MEDIA}, headers=headers)
    again = await api.client.post("/jobs", json={"url": MEDIA}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()


async def test_a_bulk_request_sent_twice_with_a_key_creates_one_batch(api: FreshApi) -> None:
    body = {"jobs": [{"url": MEDIA, "filename": "a"}, {"url": MEDIA, "filename": "b"}]}
    headers = _with_key(api.user(), "bulk-1")
    first = await api.client.post("/jobs/bulk", json=body, headers=headers)
    again = await api.client.post("/jobs/bulk", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["total_jobs"] == 2
    assert await _created_jobs(api) == 2
    batches = await api.pool.fetchval("SELECT count(*) FROM events WHERE type = 'BatchCreated'")
    assert batches == 1


async def test_the_key_is_documented_on_both_endpoints(api: FreshApi) -> None:
    doc = (await api.client.get("/schema/openapi.json")).json()
    for path in ("/jobs", "/jobs/bulk"):
        params = doc["paths"][path]["post"]["parameters"]
        [header] = [p for p in params if p["name"].lower() == "idempotency-key"]
        assert header["in"] == "header" and not header.get("required", False)


async def _submitted_tasks(api: FreshApi) -> int:
    count: int = await api.pool.fetchval("SELECT count(*) FROM events WHERE type = 'TaskSubmitted'")
    return count


async def test_a_task_submitted_twice_with_a_key_is_one_task(api: FreshApi) -> None:
    body = {"task_type": "echo", "payload": {"m": 1}}
    headers = _with_key(api.user(), "task-1")
    first = await api.client.post("/api/v1/tasks", json=body, headers=headers)
    again = await api.client.post("/api/v1/tasks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["data"]["task_id"] == first.json()["data"]["task_id"]
    assert again.json()["status"] == "success"  # the seed's envelope, of this request
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _submitted_tasks(api) == 1


async def test_task_copies_racing_each_other_submit_one_task(api: FreshApi) -> None:
    headers = _with_key(api.user(), "task-burst")
    body = {"task_type": "echo", "payload": {}}
    answers = await asyncio.gather(
        *(api.client.post("/api/v1/tasks", json=body, headers=headers) for _ in range(8))
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["data"]["task_id"] for a in answers}) == 1
    assert await _submitted_tasks(api) == 1


async def test_task_key_misuse_is_answered_in_the_envelope(api: FreshApi) -> None:
    headers = _with_key(api.user(), "task-2")
    first = await api.client.post(
        "/api/v1/tasks", json={"task_type": "echo", "payload": {}}, headers=headers
    )
    assert first.status_code == 201
    other = await api.client.post(
        "/api/v1/tasks", json={"task_type": "echo", "payload": {"x": 2}}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error_code"] == "VALIDATION_ERROR"
    assert (
        other.json()["message"] == "This Idempotency-Key was already used for a different request"
    )
    bad = await api.client.post(
        "/api/v1/tasks",
        json={"task_type": "echo", "payload": {}},
        headers=_with_key(api.user(), "has space"),
    )
    assert bad.status_code == 400 and bad.json()["status"] == "error"
    assert await _submitted_tasks(api) == 1
