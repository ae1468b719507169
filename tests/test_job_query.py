"""Finding jobs (issue 24, Deliver 6): `GET /jobs` filters by status, batch, label, source host,
created and finished ranges, error type and text; jobs carry labels from creation and PATCH."""

from __future__ import annotations

import uuid
from datetime import datetime

import httpx
import msgspec
import pytest

from spool.adapters.event_store import EventStore
from spool.domain import job
from spool.domain.events import Metadata, NewEvent
from spool.reactors.projection import ProjectionRunner

META = Metadata(actor="job-query-test")


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _create(
    client: httpx.AsyncClient, key: str, url: str = "http://media.test/a.mp4", **body: object
) -> str:
    answer = await client.post("/jobs", json={"url": url, **body}, headers=_auth(key))
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def fail(
    store: EventStore, job_id: str, reason: str = "HTTP 404", error_type: job.ErrorType = "error"
) -> None:
    """The job's download starts and fails for good, as a node would record it."""
    started = job.StageStarted(stage="download", run=1, attempt=1, node_id="n1")
    failed = job.StageFailed(
        stage="download", run=1, attempt=1, node_id="n1", reason=reason, error_type=error_type
    )
    gave_up = job.JobFailed(run=1, stage="download", reason=reason, error_type=error_type)
    events = [NewEvent(e, META) for e in (started, failed, gave_up)]
    await store.append(job.stream_id(job_id), events, None)


async def complete(store: EventStore, job_id: str, key: str) -> None:
    """The job runs through and uploads `key`."""
    started = job.StageStarted(stage="download", run=1, attempt=1, node_id="n1")
    done = job.JobCompleted(
        run=1, attempt=1, node_id="n1", key=key, storage="local", size=10, seconds=1.0
    )
    await store.append(job.stream_id(job_id), [NewEvent(e, META) for e in (started, done)], None)


async def listed(client: httpx.AsyncClient, key: str, **params: str | list[str]) -> list[str]:
    answer = await client.get("/jobs", params=params, headers=_auth(key))
    assert answer.status_code == 200, answer.text
    return [j["id"] for j in answer.json()["jobs"]]


async def test_jobs_are_found_by_every_label_they_carry(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    both = await _create(client, api_key, labels={"show": "news", "lang": "en"})
    news = await _create(client, api_key, labels={"show": "news", "lang": "fr"})
    await _create(client, api_key)
    await runner.settle()

    assert await listed(client, api_key, label="show=news") == [news, both]
    assert await listed(client, api_key, label=["show=news", "lang=en"]) == [both]
    assert await listed(client, api_key, label="show=sport") == []
    shown = (await client.get(f"/jobs/{both}", headers=_auth(api_key))).json()
    assert shown["labels"] == {"show": "news", "lang": "en"}


async def test_jobs_are_found_by_the_host_of_their_source(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    a = await _create(client, api_key, "https://Videos.Example.test:8443/x.mp4?y=1")
    b = await _create(client, api_key, "http://videos.example.test/z.mp4#t=1")
    await _create(client, api_key, "http://other.test/videos.example.test.mp4")
    await runner.settle()

    assert await listed(client, api_key, host="videos.example.test") == [b, a]
    assert await listed(client, api_key, host="VIDEOS.example.test") == [b, a]


async def test_text_search_looks_in_title_file_name_and_url_whatever_the_case(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    by_url = await _create(client, api_key, "http://media.test/Holiday-2026.mp4")
    by_name = await _create(client, api_key, "http://media.test/1.mp4", filename="my_HOLIDAY")
    by_key = await _create(client, api_key, "http://media.test/2.mp4")
    await complete(store, by_key, "out/holiday-clip.mp4")
    literal = await _create(client, api_key, "http://media.test/100%25.mp4")
    await _create(client, api_key, "http://media.test/work.mp4")
    await runner.settle()

    assert set(await listed(client, api_key, q="holiday")) == {by_url, by_name, by_key}
    # % and _ are the user's text, not patterns.
    assert await listed(client, api_key, q="100%") == [literal]
    assert await listed(client, api_key, q="y_h") == [by_name]


async def test_jobs_are_found_by_status_error_type_and_error_text(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    missing = await _create(client, api_key)
    warned = await _create(client, api_key)
    done = await _create(client, api_key)
    pending = await _create(client, api_key)
    await fail(store, missing, "HTTP Error 404: Not Found")
    await fail(store, warned, "Sign in to confirm your age", "warning")
    await complete(store, done, "done.mp4")
    await runner.settle()

    assert await listed(client, api_key, status=["Failed", "Completed"]) == [done, warned, missing]
    assert await listed(client, api_key, status="Pending,Completed") == [pending, done]
    assert await listed(client, api_key, error_type="warning") == [warned]
    assert await listed(client, api_key, error="not found") == [missing]


async def test_jobs_are_found_by_when_they_were_created_and_finished(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    first = await _create(client, api_key)
    second = await _create(client, api_key)
    third = await _create(client, api_key)
    await fail(store, second)
    await runner.settle()
    shown = [
        (await client.get(f"/jobs/{j}", headers=_auth(api_key))).json()
        for j in (first, second, third)
    ]
    created = [s["created_at"] for s in shown]  # ms since the epoch
    assert created[0] < created[1] < created[2]

    between = {"created_after": str(created[1]), "created_before": str(created[2])}
    assert await listed(client, api_key, **between) == [second]
    iso = datetime.fromtimestamp(created[1] / 1000).astimezone().isoformat()
    assert await listed(client, api_key, created_after=iso) == [third, second]
    finished = shown[1]["finished_at"]
    assert await listed(client, api_key, finished_after=str(finished)) == [second]
    assert await listed(client, api_key, finished_before=str(finished)) == []


async def test_a_filtered_list_pages_with_its_cursor(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    tagged = [await _create(client, api_key, labels={"run": "a"}) for _ in range(5)]
    for _ in range(3):
        await _create(client, api_key)
    await runner.settle()

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", "label": "run=a", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/jobs", params=params, headers=_auth(api_key))).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(tagged))


async def test_a_batch_filter_lists_the_batch_jobs_only(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    bulk = await client.post(
        "/jobs/bulk",
        json={
            "jobs": [
                {"url": "http://media.test/1.mp4", "labels": {"part": "1"}},
                {"url": "http://media.test/2.mp4"},
            ],
            "labels": {"season": "3"},
        },
        headers=_auth(api_key),
    )
    assert bulk.status_code == 201, bulk.text
    await _create(client, api_key)
    await runner.settle()
    batch_id = bulk.json()["batch_id"]

    in_batch = await listed(client, api_key, batch_id=batch_id)
    assert len(in_batch) == 2
    assert await listed(client, api_key, label="season=3") == in_batch
    [first] = await listed(client, api_key, label=["season=3", "part=1"])
    shown = (await client.get(f"/jobs/{first}", headers=_auth(api_key))).json()
    assert shown["labels"] == {"season": "3", "part": "1"}


async def test_another_accounts_jobs_are_never_listed_whatever_the_filter(
    client: httpx.AsyncClient, api_key: str, other_api_key: str, runner: ProjectionRunner
) -> None:
    mine = await _create(client, api_key, "http://shared.test/a.mp4", labels={"k": "v"})
    await runner.settle()
    assert await listed(client, api_key, host="shared.test", label="k=v") == [mine]
    assert await listed(client, other_api_key, host="shared.test") == []
    assert await listed(client, other_api_key, label="k=v") == []


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"status": "Sleeping"}, "status must be one of"),
        ({"status": "Failed,nope"}, "status must be one of"),
        ({"label": "novalue"}, "label must be key=value"),
        ({"label": "Bad Key=v"}, "Label key"),
        ({"label": ["k=1", "k=2"]}, "two values"),
        ({"created_after": "yesterday"}, "created_after must be an ISO 8601 time"),
        ({"finished_before": "2026-13-40"}, "finished_before must be"),
        ({"created_after": "2026-12-02", "created_before": "2026-12-01"}, "must be before"),
        ({"error_type": "fatal"}, "error_type must be one of"),
        ({"q": "x" * 201}, "q must be 1-200 characters"),
        ({"q": "  "}, "q must be 1-200 characters"),
        ({"limit": "101"}, ""),
    ],
)
async def test_bad_filters_get_a_clear_400(
    client: httpx.AsyncClient, api_key: str, params: dict[str, str], fragment: str
) -> None:
    answer = await client.get("/jobs", params=params, headers=_auth(api_key))
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}
    assert fragment in answer.json()["error"]


async def test_labels_are_changed_by_patch_and_each_change_is_an_event(
    client: httpx.AsyncClient, api_key: str, runner: ProjectionRunner
) -> None:
    job_id = await _create(client, api_key, labels={"a": "1", "b": "2"})

    answer = await client.patch(
        f"/jobs/{job_id}",
        json={"labels": {"b": None, "c": "3"}},
        headers={**_auth(api_key), "x-request-id": f"label-{job_id}"},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": job_id, "labels": {"a": "1", "c": "3"}}
    shown = (await client.get(f"/jobs/{job_id}", headers=_auth(api_key))).json()
    assert shown["labels"] == {"a": "1", "c": "3"}
    history = (await client.get(f"/jobs/{job_id}/events", headers=_auth(api_key))).json()
    labelled = history["events"][-1]
    assert labelled["type"] == "JobLabelled"
    assert labelled["data"]["labels"] == {"a": "1", "c": "3"}
    assert labelled["data"]["changes"] == {"b": None, "c": "3"}
    assert labelled["metadata"]["actor"]
    trace = (await client.get(f"/jobs/{job_id}/trace", headers=_auth(api_key))).json()
    assert {"correlation_id": f"label-{job_id}", "first_event": "JobLabelled"}.items() <= next(
        r for r in trace["requests"] if r["correlation_id"] == f"label-{job_id}"
    ).items()
    await runner.settle()
    assert await listed(client, api_key, label="c=3") == [job_id]
    assert await listed(client, api_key, label="b=2") == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"labels": {"Bad Key": "v"}}, "Label key"),
        ({"labels": {"k": 1}}, "Expected `str | null`, got `int`"),
        ({"labels": {f"k{i}": "v" for i in range(21)}}, "at most 20 labels"),
        ({"labels": {"k": "x" * 257}}, "at most 256 characters"),
        ({"tags": {}}, "missing required field `labels`"),
    ],
)
async def test_bad_labels_get_a_400_and_change_nothing(
    client: httpx.AsyncClient,
    api_key: str,
    store: EventStore,
    body: dict[str, object],
    fragment: str,
) -> None:
    job_id = await _create(client, api_key, labels={"a": "1"})
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    patched = await client.patch(f"/jobs/{job_id}", json=body, headers=_auth(api_key))
    assert patched.status_code == 400
    assert fragment in patched.json()["error"]
    created = await client.post(
        "/jobs", json={"url": "http://media.test/x.mp4", **body}, headers=_auth(api_key)
    )
    assert created.status_code == 400
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before


async def test_another_accounts_job_cannot_be_labelled(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    job_id = await _create(client, api_key)
    answer = await client.patch(
        f"/jobs/{job_id}", json={"labels": {"a": "1"}}, headers=_auth(other_api_key)
    )
    assert answer.status_code == 404
    assert answer.json() == {"error": "Job not found"}


async def test_a_history_written_before_labels_replays_without_any(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    job_id = str(uuid.uuid4())
    mine = await _create(client, api_key)
    await runner.settle()
    owner = await store.pool.fetchval("SELECT account_id FROM jobs WHERE job_id = $1", mine)
    # A JobCreated as an older Spool wrote it (v1, no labels), then a label added today.
    await store.pool.execute(
        "INSERT INTO events (stream_id, version, type, schema_version, data, metadata)"
        " VALUES ($1, 1, 'JobCreated', 1, $2, $3)",
        job.stream_id(job_id),
        msgspec.json.encode({"job_id": job_id, "account_id": owner, "url": "http://old.test/a"}),
        b"{}",
    )
    await runner.settle()
    old = (await client.get(f"/jobs/{job_id}", headers=_auth(api_key))).json()
    assert old["labels"] == {}
    assert await listed(client, api_key, host="old.test") == [job_id]

    patched = await client.patch(
        f"/jobs/{job_id}", json={"labels": {"era": "old"}}, headers=_auth(api_key)
    )
    assert patched.status_code == 200, patched.text
    await runner.settle()
    assert await listed(client, api_key, label="era=old") == [job_id]
