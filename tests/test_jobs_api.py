"""The job API slice: create, read, list, history; auth and errors exactly as seed 002 says."""

from __future__ import annotations

import uuid

import httpx
import pytest

from spool.adapters.event_store import EventStore
from spool.reactors.projection import ProjectionRunner


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _create(client: httpx.AsyncClient, key: str, url: str = "http://media.test/a.mp4") -> str:
    answer = await client.post("/jobs", json={"url": url}, headers=_auth(key))
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def test_a_created_job_is_pending_and_queued_at_once(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await client.post(
        "/jobs", json={"url": "https://media.test/clip.mp4"}, headers=_auth(api_key)
    )

    assert answer.status_code == 201
    assert set(answer.json()) == {"job_id"}
    job_id = answer.json()["job_id"]
    uuid.UUID(job_id)
    # Read straight after the write, before any projection runner has run.
    got = await client.get(f"/jobs/{job_id}", headers=_auth(api_key))
    assert got.status_code == 200
    body = got.json()
    assert (body["id"], body["url"], body["status"], body["step"]) == (
        job_id,
        "https://media.test/clip.mp4",
        "Pending",
        "Queued",
    )
    assert isinstance(body["created_at"], int)


async def test_a_job_reads_the_same_from_the_projection_as_from_the_log(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    job_id = await _create(client, api_key)
    from_log = (await client.get(f"/jobs/{job_id}", headers=_auth(api_key))).json()
    await runner.settle()
    from_projection = (await client.get(f"/jobs/{job_id}", headers=_auth(api_key))).json()
    assert from_projection == from_log


async def test_bearer_authorization_is_accepted_too(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await client.post(
        "/jobs",
        json={"url": "http://media.test/b.mp4"},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert answer.status_code == 201


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing x-api-key header"),
        ({"x-api-key": "sk_not_a_real_key_at_all_000000"}, "Invalid API Key"),
        ({"Authorization": "Bearer sk_wrong_wrong_wrong_wrong"}, "Invalid API Key"),
    ],
)
async def test_requests_without_a_valid_key_get_401_in_the_seed_words(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}")]:
        answer = await client.request(method, path, headers=headers, json={"url": "http://x.y"})
        assert answer.status_code == 401
        assert answer.json() == {"error": message}


async def test_another_users_job_answers_404_like_a_missing_one(
    client: httpx.AsyncClient, api_key: str, other_api_key: str, runner: ProjectionRunner
) -> None:
    job_id = await _create(client, api_key)
    for _ in range(2):  # once from the log, once from the projection
        theirs = await client.get(f"/jobs/{job_id}", headers=_auth(other_api_key))
        missing = await client.get(f"/jobs/{uuid.uuid4()}", headers=_auth(other_api_key))
        history = await client.get(f"/jobs/{job_id}/events", headers=_auth(other_api_key))
        assert theirs.status_code == missing.status_code == history.status_code == 404
        assert theirs.json() == missing.json() == {"error": "Job not found"}
        await runner.settle()
    listing = await client.get("/jobs", headers=_auth(other_api_key))
    assert job_id not in {j["id"] for j in listing.json()["jobs"]}


async def test_a_jobs_events_tell_who_created_it_and_in_which_request(
    client: httpx.AsyncClient, api_key: str
) -> None:
    answer = await client.post(
        "/jobs",
        json={"url": "http://media.test/c.mp4"},
        headers={**_auth(api_key), "x-request-id": "req-audit-1"},
    )
    assert answer.headers["x-request-id"] == "req-audit-1"
    job_id = answer.json()["job_id"]

    history = await client.get(f"/jobs/{job_id}/events", headers=_auth(api_key))

    assert history.status_code == 200
    [created] = history.json()["events"]
    assert created["type"] == "JobCreated"
    assert created["version"] == 1
    assert created["schema_version"] == 2
    assert created["data"]["url"] == "http://media.test/c.mp4"
    assert created["data"]["job_id"] == job_id
    assert created["metadata"]["request_id"] == "req-audit-1"
    assert created["metadata"]["correlation_id"] == "req-audit-1"
    assert created["metadata"]["actor"]  # the key id, never the key itself
    assert api_key not in history.text
    assert created["recorded_at"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "url"),
        ({"url": 5}, "Expected `str`"),
        ({"url": ""}, "Invalid URL"),
        ({"url": "ftp://media.test/a.mp4"}, "Invalid URL"),
        ({"url": "not a url"}, "Invalid URL"),
        ([1, 2], "The body is an array, not an object; send a JSON object with `url`"),
        # A misspelt option would otherwise deliver something else than asked, quietly.
        ({"url": "http://media.test/a.mp4", "fromat": "mkv"}, "unknown field `fromat`"),
    ],
)
async def test_bad_input_gets_a_clear_400_and_writes_nothing(
    client: httpx.AsyncClient, api_key: str, store: EventStore, body: object, fragment: str
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post("/jobs", json=body, headers=_auth(api_key))
    assert answer.status_code == 400
    assert fragment in answer.json()["error"]
    assert set(answer.json()) == {"error"}
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before


async def test_malformed_json_gets_a_400_error(client: httpx.AsyncClient, api_key: str) -> None:
    answer = await client.post(
        "/jobs", content=b"{nope", headers={**_auth(api_key), "content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert "error" in answer.json()


async def test_the_job_list_is_newest_first_and_pages_with_a_cursor(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    created = [await _create(client, api_key, f"http://media.test/{i}.mp4") for i in range(5)]
    await runner.settle()

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/jobs", params=params, headers=_auth(api_key))).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(created))
    assert pages == 3
    pending = await client.get("/jobs", params={"status": "Pending"}, headers=_auth(api_key))
    assert len(pending.json()["jobs"]) == 5
    done = await client.get("/jobs", params={"status": "Completed"}, headers=_auth(api_key))
    assert done.json()["jobs"] == []


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1000"}, {"cursor": "%%%"}, {"status": "Sleeping"}]
)
async def test_bad_list_parameters_get_a_400_error(
    client: httpx.AsyncClient, api_key: str, params: dict[str, str]
) -> None:
    answer = await client.get("/jobs", params=params, headers=_auth(api_key))
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}


async def test_the_openapi_document_and_swagger_ui_are_served(client: httpx.AsyncClient) -> None:
    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/jobs" in schema.json()["paths"]
    swagger = await client.get("/swagger", follow_redirects=True)
    assert swagger.status_code == 200
    assert "swagger" in swagger.text.lower()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.mp4",
        "http://localhost:8081/jobs",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.mp4",
        "http://2130706433/a.mp4",
        "http://0x7f.1/a.mp4",
        "http://10.0.0.5/a.mp4",
        "http://[::ffff:192.168.1.1]/a.mp4",
    ],
)
async def test_a_url_aimed_inside_the_network_is_refused_at_submission(
    client: httpx.AsyncClient, api_key: str, store: EventStore, url: str
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post("/jobs", json={"url": url}, headers=_auth(api_key))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("URL refused:")
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before
