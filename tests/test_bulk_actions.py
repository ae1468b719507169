"""Bulk actions by query (issue 24, Deliver 3): `POST /jobs/actions` over the jobs a filter
matches, carried on by the operations runner; `GET /operations/{id}` shows it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.read_models import operations as operation_rows
from spool.adapters.repository import record_many
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.application import jobs as commands
from spool.application.operations import caused_by
from spool.domain import job, operation
from spool.domain.aggregate import steps
from spool.domain.events import Event, Metadata, NewEvent
from spool.domain.job_query import JobQuery
from spool.keys import issue
from spool.reactors.operations import OperationRunner
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until
from tests.test_job_query import complete, fail


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture
async def operations(store: EventStore, tmp_path: Path) -> AsyncIterator[OperationRunner]:
    """The operations runner, its passes run by the test."""
    runner = OperationRunner(
        store, Settings(data_dir=tmp_path, secret_key="test-secret-key"), LocalStorage(tmp_path)
    )
    yield runner
    await runner.storages.aclose()


async def _create(client: httpx.AsyncClient, key: str, **body: object) -> str:
    answer = await client.post(
        "/jobs", json={"url": "http://media.test/a.mp4", **body}, headers=_auth(key)
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def _failed(client: httpx.AsyncClient, store: EventStore, key: str, n: int) -> list[str]:
    made = [await _create(client, key) for _ in range(n)]
    for job_id in made:
        await fail(store, job_id)
    return made


async def _ask(client: httpx.AsyncClient, key: str, **body: object) -> dict[str, object]:
    answer = await client.post("/jobs/actions", json=body, headers=_auth(key))
    assert answer.status_code == 202, answer.text
    asked: dict[str, object] = answer.json()
    return asked


async def _operation(
    client: httpx.AsyncClient, key: str, operation_id: object
) -> dict[str, object]:
    answer = await client.get(f"/operations/{operation_id}", headers=_auth(key))
    assert answer.status_code == 200, answer.text
    shown: dict[str, object] = answer.json()
    return shown


async def _status(client: httpx.AsyncClient, key: str, job_id: str) -> str:
    status: str = (await client.get(f"/jobs/{job_id}", headers=_auth(key))).json()["status"]
    return status


async def _events(store: EventStore, job_id: str) -> list[str]:
    return [e.type for e in await store.read_stream(job.stream_id(job_id))]


async def test_a_dry_run_counts_the_jobs_and_touches_none(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    failed = await _failed(client, store, api_key, 3)
    await _create(client, api_key)
    await runner.settle()
    before = {j: await _events(store, j) for j in failed}

    asked = await _ask(client, api_key, action="retry", filter={"status": ["Failed"]}, dry_run=True)

    assert (asked["matched"], asked["status"], asked["dry_run"]) == (3, "finished", True)
    shown = await _operation(client, api_key, asked["operation_id"])
    assert shown["counts"] == {"matched": 3, "done": 0, "skipped": 0, "failed": 0}
    assert shown["jobs"] == []
    assert shown["status"] == "finished"
    assert {j: await _events(store, j) for j in failed} == before


async def test_a_bulk_retry_reruns_each_job_once_even_when_resumed_after_a_restart(
    client: httpx.AsyncClient,
    api_key: str,
    store: EventStore,
    runner: ProjectionRunner,
    operations: OperationRunner,
    tmp_path: Path,
) -> None:
    failed = await _failed(client, store, api_key, 3)
    await runner.settle()
    asked = await _ask(client, api_key, action="retry", filter={"status": ["Failed"]})
    assert (asked["matched"], asked["status"]) == (3, "running")
    await runner.settle()

    await operations.pass_once(budget=1)  # the first job, then the process stops
    # A runner retried the second job and died before recording it in the operation.
    account = await store.pool.fetchval("SELECT account_id FROM jobs WHERE job_id = $1", failed[1])
    [requested] = await store.read_stream(f"operation-{asked['operation_id']}", 1, limit=1)
    meta = caused_by(str(asked["operation_id"]), requested.metadata)
    await commands.retry_job(store, account, failed[1], meta)
    await runner.settle()
    restarted = OperationRunner(
        store, Settings(data_dir=tmp_path, secret_key="test-secret-key"), LocalStorage(tmp_path)
    )
    await restarted.pass_once()
    await restarted.storages.aclose()

    for job_id in failed:
        state = await commands.owned_job(store, account, job_id)
        assert state.run == 2
        assert (await _events(store, job_id)).count("JobRetried") == 1
    shown = await _operation(client, api_key, asked["operation_id"])
    assert shown["status"] == "finished"
    assert shown["counts"] == {"matched": 3, "done": 3, "skipped": 0, "failed": 0}
    assert [j["job_id"] for j in shown["jobs"]] == failed  # type: ignore[attr-defined]


async def test_a_bulk_cancel_by_label_cancels_those_jobs_and_skips_finished_ones(
    client: httpx.AsyncClient,
    api_key: str,
    store: EventStore,
    runner: ProjectionRunner,
    operations: OperationRunner,
) -> None:
    tagged = [await _create(client, api_key, labels={"show": "x"}) for _ in range(2)]
    done = await _create(client, api_key, labels={"show": "x"})
    await complete(store, done, "done.mp4")
    other = await _create(client, api_key, labels={"show": "y"})
    await runner.settle()

    asked = await _ask(client, api_key, action="cancel", filter={"labels": {"show": "x"}})
    await runner.settle()
    await operations.pass_once()

    assert [await _status(client, api_key, j) for j in tagged] == ["Cancelled", "Cancelled"]
    assert await _status(client, api_key, done) == "Completed"
    assert await _status(client, api_key, other) == "Pending"
    shown = await _operation(client, api_key, asked["operation_id"])
    assert shown["counts"] == {"matched": 3, "done": 2, "skipped": 1, "failed": 0}
    [skipped] = [j for j in shown["jobs"] if j["outcome"] == "skipped"]  # type: ignore[attr-defined]
    assert skipped["job_id"] == done
    assert "completed" in skipped["reason"]
    # Each cancel names the operation as its cause, and the requester as its actor.
    [cancelled] = [
        e for e in await store.read_stream(job.stream_id(tagged[0])) if e.type == "JobCancelled"
    ]
    assert cancelled.metadata.causation_id == f"operation-{asked['operation_id']}"
    assert cancelled.metadata.actor


async def test_jobs_created_after_the_request_are_not_swept_in(
    client: httpx.AsyncClient,
    api_key: str,
    runner: ProjectionRunner,
    operations: OperationRunner,
) -> None:
    before = await _create(client, api_key, labels={"wave": "1"})
    await runner.settle()
    asked = await _ask(client, api_key, action="cancel", filter={"labels": {"wave": "1"}})
    later = await _create(client, api_key, labels={"wave": "1"})
    await runner.settle()
    await operations.pass_once()

    assert await _status(client, api_key, before) == "Cancelled"
    assert await _status(client, api_key, later) == "Pending"
    assert (await _operation(client, api_key, asked["operation_id"]))["counts"]["matched"] == 1  # type: ignore[index]


async def test_another_accounts_jobs_are_never_touched_nor_counted(
    client: httpx.AsyncClient,
    api_key: str,
    other_api_key: str,
    store: EventStore,
    runner: ProjectionRunner,
    operations: OperationRunner,
) -> None:
    mine = await _failed(client, store, api_key, 1)
    theirs = await _failed(client, store, other_api_key, 2)
    await runner.settle()
    before = {j: await _events(store, j) for j in theirs}

    asked = await _ask(client, api_key, action="retry", filter={"status": ["Failed"]})
    await runner.settle()
    await operations.pass_once()

    assert asked["matched"] == 1
    assert await _status(client, api_key, mine[0]) == "Pending"
    assert {j: await _events(store, j) for j in theirs} == before
    # Nor may a user key reach across accounts.
    refused = await client.post(
        "/jobs/actions",
        json={"action": "retry", "filter": {}, "all_accounts": True},
        headers=_auth(api_key),
    )
    assert refused.status_code == 403
    assert set(refused.json()) == {"error"}


async def test_an_admin_key_acts_across_accounts(
    client: httpx.AsyncClient,
    api_key: str,
    other_api_key: str,
    admin_key: str,
    runner: ProjectionRunner,
    operations: OperationRunner,
) -> None:
    label = {"sweep": "all-accounts"}
    mine = await _create(client, api_key, labels=label)
    theirs = await _create(client, other_api_key, labels=label)
    await runner.settle()

    asked = await _ask(
        client, admin_key, action="cancel", filter={"labels": label}, all_accounts=True
    )
    await runner.settle()
    await operations.pass_once()

    assert asked["matched"] == 2
    assert await _status(client, api_key, mine) == "Cancelled"
    assert await _status(client, other_api_key, theirs) == "Cancelled"
    shown = await _operation(client, admin_key, asked["operation_id"])
    assert shown["all_accounts"] is True
    assert shown["counts"] == {"matched": 2, "done": 2, "skipped": 0, "failed": 0}


async def test_an_account_runs_at_most_three_operations_at_once(
    client: httpx.AsyncClient, api_key: str, store: EventStore, runner: ProjectionRunner
) -> None:
    await _failed(client, store, api_key, 1)
    await runner.settle()
    for _ in range(3):
        await _ask(client, api_key, action="retry", filter={"status": ["Failed"]})
    await runner.settle()

    refused = await client.post(
        "/jobs/actions", json={"action": "retry", "filter": {}}, headers=_auth(api_key)
    )
    assert refused.status_code == 409
    assert "3 operations of this account are still running" in refused.json()["error"]
    # A dry run touches nothing, so it is not held back.
    await _ask(client, api_key, action="retry", filter={}, dry_run=True)


async def test_another_accounts_operation_answers_404(
    client: httpx.AsyncClient, api_key: str, other_api_key: str
) -> None:
    asked = await _ask(client, api_key, action="cancel", filter={}, dry_run=True)
    theirs = await client.get(f"/operations/{asked['operation_id']}", headers=_auth(other_api_key))
    missing = await client.get(
        "/operations/00000000-0000-0000-0000-000000000000", headers=_auth(other_api_key)
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() == {"error": "Operation not found"}


MANY = 3_000
"""Jobs of the large operation below: its stream holds one event each."""


def _handled(
    index: int, job_id: str
) -> operation.OperationJobDone | operation.OperationJobSkipped | operation.OperationJobFailed:
    """What the runner records for the job at `index`: most done, some skipped, some failed."""
    if index % 7 == 0:
        return operation.OperationJobSkipped(index=index, job_id=job_id, reason=f"gone {index}")
    if index % 11 == 0:
        return operation.OperationJobFailed(index=index, job_id=job_id, reason=f"quota {index}")
    return operation.OperationJobDone(index=index, job_id=job_id)


async def test_an_operations_progress_is_read_from_its_row_and_matches_the_fold_of_its_stream(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner, other_api_key: str
) -> None:
    issued = await issue(store, name=f"many-{uuid.uuid4().hex[:6]}", admin=False)
    await runner.wait_until("api_keys", issued.at)
    operation_id, job_ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(MANY)]
    events: list[Event] = operation.request(
        operation_id=operation_id,
        account_id=issued.account_id,
        accounts=[issued.account_id],
        action="cancel",
        filter=JobQuery(),
        dry_run=False,
        matched=MANY,
        job_ids=job_ids,
    )
    handled = [_handled(i, job_id) for i, job_id in enumerate(job_ids[: MANY - 40])]
    stream = operation.stream_id(operation_id)
    meta = Metadata(actor="bulk-test")
    appended = await record_many(
        store, [StreamAppend(stream, [NewEvent(e, meta) for e in [*events, *handled]], 0)]
    )
    folded = operation.fold(steps(await store.read_stream(stream)))
    assert folded is not None and folded.status == "running"

    # Once the projection has the operation, a read is its row alone: no event left to fold.
    await runner.wait_until("operations", appended[-1].checkpoint)
    found = await operation_rows.ROWS.row_and_tail(store.pool, operation_id)
    assert (found.state, found.tail) == (folded, [])

    path = f"/operations/{operation_id}"
    shown = (await client.get(path, headers=_auth(issued.key))).json()
    assert (shown["status"], shown["counts"]) == (
        "running",
        {
            "matched": MANY,
            "done": folded.done,
            "skipped": folded.skipped,
            "failed": folded.failed,
        },
    )
    assert folded.done + folded.skipped + folded.failed == len(handled)
    # The jobs it handled, a page at a time, in the order it handled them.
    listed: list[tuple[str, str, str | None]] = []
    after: int | None = 1
    while after is not None:
        page = await client.get(path, params={"after": after}, headers=_auth(issued.key))
        assert len(page.json()["jobs"]) <= 100
        listed += [(j["job_id"], j["outcome"], j["reason"]) for j in page.json()["jobs"]]
        after = page.json()["next_after"]
    outcomes = {operation.OperationJobDone: "done", operation.OperationJobSkipped: "skipped"}
    assert listed == [
        (e.job_id, outcomes.get(type(e), "failed"), getattr(e, "reason", None)) for e in handled
    ]
    # Another account: not found, as an unknown operation.
    theirs = await client.get(path, headers=_auth(other_api_key))
    assert theirs.status_code == 404
    assert theirs.json() == {"error": "Operation not found"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"action": "explode", "filter": {}}, "action must be one of"),
        ({"action": "retry", "filter": {"status": ["Asleep"]}}, "Invalid enum value 'Asleep'"),
        ({"action": "retry", "filter": {"colour": "red"}}, "unknown field `colour`"),
        ({"action": "retry", "filter": {"labels": {"Bad Key": "v"}}}, "Label key"),
        ({"action": "retry", "filter": {"created_after": "soon"}}, "filter:"),
        ({"action": "retry", "filter": [], "dry_run": False}, "got `array` (field: filter)"),
        ({"action": "retry", "dry_run": "yes"}, "got `str` (field: dry_run)"),
    ],
)
async def test_bad_action_requests_get_a_400_and_record_nothing(
    client: httpx.AsyncClient,
    api_key: str,
    store: EventStore,
    body: dict[str, object],
    fragment: str,
) -> None:
    before = await store.pool.fetchval("SELECT count(*) FROM events")
    answer = await client.post("/jobs/actions", json=body, headers=_auth(api_key))
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error"}
    assert fragment in answer.json()["error"]
    assert await store.pool.fetchval("SELECT count(*) FROM events") == before


async def test_a_read_only_key_cannot_ask_for_a_bulk_action(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner
) -> None:
    issued = await issue(store, name="reader", scope="read")
    await runner.wait_until("api_keys", issued.at)
    answer = await client.post(
        "/jobs/actions", json={"action": "cancel", "filter": {}}, headers=_auth(issued.key)
    )
    assert answer.status_code == 403


async def test_a_running_cluster_deletes_the_files_of_the_jobs_a_label_names(
    cluster: Cluster, media_server: MediaServer
) -> None:
    """End to end: the operations runner `spool reactors` starts carries the action out."""
    made = [
        await cluster.create(media_server.url("clip.mp4"), labels={"season": "old"})
        for _ in range(2)
    ]
    kept = await cluster.create(media_server.url("clip.mp4"), labels={"season": "new"})
    done = [await cluster.wait(j, "Completed") for j in (*made, kept)]
    await cluster.runner.settle()

    asked = await _ask(
        cluster.client, cluster.key, action="delete_file", filter={"labels": {"season": "old"}}
    )

    async def finished() -> dict[str, object] | None:
        shown = await _operation(cluster.client, cluster.key, asked["operation_id"])
        return shown if shown["status"] == "finished" else None

    shown = await until(finished)
    assert shown["counts"] == {"matched": 2, "done": 2, "skipped": 0, "failed": 0}
    assert [(await cluster.job(j))["file_deleted"] for j in (*made, kept)] == [True, True, False]
    assert await cluster.storage.list_keys() == [done[2]["storage_key"]]
