"""Correlation: a request's id follows every event it causes, and `GET /jobs/{id}/trace` lists
the chain.

Real parts only: PostgreSQL, Redis, moto's S3 server, FFmpeg, the loopback media server and a
loopback webhook receiver; the API is driven in-process, its middleware included.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from itertools import pairwise
from typing import Any

from spool.domain import node, task
from spool.domain.events import Metadata, NewEvent, event_id
from spool.keys import issue
from tests.cluster_api_helpers import node_started
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.test_tasks_cluster import settled, start_scheduler
from tests.test_webhooks import Receiver

STAGE_EVENTS = {"StageStarted", "StageProgressed", "DownloadCompleted", "MuxCompleted"}


async def _create(cluster: Cluster, url: str, request_id: str, **options: Any) -> str:
    answer = await cluster.client.post(
        "/jobs",
        json={"url": url, **options},
        headers={**cluster.headers(), "X-Request-ID": request_id},
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["x-request-id"] == request_id
    job_id: str = answer.json()["job_id"]
    return job_id


async def _events(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


async def _trace(cluster: Cluster, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every page of the trace, joined."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = await cluster.client.get(
            f"/jobs/{job_id}/trace",
            params={"after": after, "limit": limit},
            headers=cluster.headers(),
        )
        assert answer.status_code == 200, answer.text
        page = answer.json()
        events += page["events"]
        if page["next_after"] is None:
            return events
        after = page["next_after"]


def _cause_of(events: list[dict[str, Any]], e: dict[str, Any]) -> dict[str, Any]:
    """The earlier event `e` names as its cause."""
    by_position = {str(x["position"]): x for x in events}
    cause = by_position[e["metadata"]["causation_id"]]
    assert cause["position"] < e["position"]
    return cause


async def test_every_event_of_a_job_carries_its_requests_correlation_and_a_real_cause(
    cluster: Cluster, media_server: MediaServer
) -> None:
    request_id = f"trace-{uuid.uuid4().hex}"
    receiver = Receiver()
    try:
        job_id = await _create(
            cluster, media_server.url("clip.mp4"), request_id, webhook_url=receiver.url
        )
        await cluster.wait(
            job_id, seconds=60, until=lambda j: j["webhook_status"] in ("delivered", "failed")
        )
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert cluster.node is not None
    events = await _events(cluster, job_id)
    types = [e["type"] for e in events]
    assert types[-2:] == ["JobCompleted", "WebhookDelivered"], types

    assert {e["metadata"]["correlation_id"] for e in events} == {request_id}
    created = events[0]
    assert created["metadata"]["causation_id"] == request_id
    assert created["metadata"]["request_id"] == request_id
    for e in events:
        if e["type"] in STAGE_EVENTS | {"JobCompleted", "WebhookDelivered"}:
            assert e["metadata"]["node_id"] == cluster.node.node_id, e
            assert e["metadata"]["actor"] == f"node:{cluster.node.node_id}", e

    # Each stage ends caused by its start. A stage dispatched through the queue starts from the
    # event that called for it; one the node went straight on to (the result says `chained`:
    # both are one append, which shares its metadata) from the start of the stage before, as
    # that stage's result does. The webhook delivery follows from JobCompleted.
    steps = [e for e in events if e["type"] != "StageProgressed"]
    download_done, mux_done = steps[2], steps[4]
    assert [(e["type"], _cause_of(events, e)["type"]) for e in steps[1:]] == [
        ("StageStarted", "JobCreated"),
        ("DownloadCompleted", "StageStarted"),
        (
            "StageStarted",
            "StageStarted" if download_done["data"]["chained"] else "DownloadCompleted",
        ),
        ("MuxCompleted", "StageStarted"),
        ("StageStarted", "StageStarted" if mux_done["data"]["chained"] else "MuxCompleted"),
        ("JobCompleted", "StageStarted"),
        ("WebhookDelivered", "JobCompleted"),
    ]
    # One job alone on its node: each next stage had a free slot.
    assert download_done["data"]["chained"] and mux_done["data"]["chained"]
    for e in events:
        if e["type"] == "StageProgressed":
            assert _cause_of(events, e)["type"] == "StageStarted"

    # The trace lists the same chain in log order, with the arq jobs each event enqueued, and
    # pages through it without losing or repeating an event.
    answer = await cluster.client.get(f"/jobs/{job_id}/trace", headers=cluster.headers())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["correlation_id"] for r in body["requests"]] == [request_id]
    assert body["requests"][0]["first_event"] == "JobCreated"
    traced = body["events"]
    assert [e["position"] for e in traced] == [e["position"] for e in events]
    assert [e["position"] for e in await _trace(cluster, job_id, limit=3)] == [
        e["position"] for e in events
    ]
    # Mux and upload went straight on (above): nothing was enqueued for them.
    dispatched = {e["type"]: e["dispatched"] for e in traced if e["dispatched"]}
    assert dispatched == {
        "JobCreated": [f"{job_id}:1:download:1"],
        "JobCompleted": [f"{job_id}:1:webhook:job.completed"],
    }


async def test_a_retry_starts_a_new_correlation_and_the_trace_lists_both_requests(
    cluster: Cluster, media_server: MediaServer
) -> None:
    first, second = f"create-{uuid.uuid4().hex}", f"retry-{uuid.uuid4().hex}"
    job_id = await _create(cluster, media_server.url("missing.mp4"), first)
    await cluster.wait(job_id, "Failed", seconds=60)

    answer = await cluster.client.post(
        f"/jobs/{job_id}/retry", headers={**cluster.headers(), "X-Request-ID": second}
    )
    assert answer.status_code == 200, answer.text
    await cluster.wait(job_id, "Failed", seconds=60, until=lambda j: j["download_retries"] == 2)

    events = await _events(cluster, job_id)
    retried = next(i for i, e in enumerate(events) if e["type"] == "JobRetried")
    assert {e["metadata"]["correlation_id"] for e in events[:retried]} == {first}
    assert {e["metadata"]["correlation_id"] for e in events[retried:]} == {second}
    assert events[retried]["metadata"]["causation_id"] == second
    restarted = events[retried + 1]
    assert restarted["type"] == "StageStarted"
    assert _cause_of(events, restarted)["type"] == "JobRetried"

    traced = await _trace(cluster, job_id)
    body = (await cluster.client.get(f"/jobs/{job_id}/trace", headers=cluster.headers())).json()
    assert [r["correlation_id"] for r in body["requests"]] == [first, second]
    assert [e["position"] for e in traced] == [e["position"] for e in events]
    assert [e["dispatched"] for e in traced if e["type"] == "JobRetried"] == [
        [f"{job_id}:2:download:1"]
    ]


async def _other_user_key(cluster: Cluster) -> str:
    """A key of a second account, once the API knows it."""
    other = await issue(cluster.store, name="other", admin=False)
    deadline = time.monotonic() + 10
    while (
        await cluster.client.get("/jobs", headers=cluster.headers(other.key))
    ).status_code != 200:
        assert time.monotonic() < deadline, "the new key never became usable"
        await asyncio.sleep(0.1)
    return other.key


async def test_the_trace_of_another_users_job_is_not_found(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await _create(cluster, media_server.url("missing.mp4"), f"r-{uuid.uuid4().hex}")
    other_api_key = await _other_user_key(cluster)

    other = await cluster.client.get(
        f"/jobs/{job_id}/trace", headers=cluster.headers(other_api_key)
    )
    nobody = await cluster.client.get(f"/jobs/{job_id}/trace")
    unknown = await cluster.client.get(f"/jobs/{uuid.uuid4()}/trace", headers=cluster.headers())
    bad_page = await cluster.client.get(
        f"/jobs/{job_id}/trace", params={"limit": 0}, headers=cluster.headers()
    )

    assert (other.status_code, other.json()) == (404, {"error": "Job not found"})
    assert (nobody.status_code, nobody.json()) == (401, {"error": "Missing x-api-key header"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Job not found"})
    assert bad_page.status_code == 400
    assert "error" in bad_page.json()


async def test_a_tasks_events_follow_the_request_that_submitted_it(
    start_cluster: StartCluster,
) -> None:
    request_id = f"task-{uuid.uuid4().hex}"
    async with start_cluster() as cluster:
        start_scheduler(cluster)
        answer = await cluster.client.post(
            "/api/v1/tasks",
            json={"task_type": "echo", "payload": {"n": 1}},
            headers={"X-API-Key": cluster.key, "X-Request-ID": request_id},
        )
        assert answer.status_code == 201, answer.text
        task_id = answer.json()["data"]["task_id"]
        await settled(cluster, task_id, "success", seconds=30)
        recorded = await cluster.store.read_stream(task.stream_id(task_id))

    assert {e.metadata.correlation_id for e in recorded} == {request_id}
    assert recorded[0].metadata.causation_id == request_id
    assert [e.type for e in recorded][-3:] == ["TaskAssigned", "TaskStarted", "TaskSucceeded"]
    # Here each event follows from the one before it (a TaskWaiting may precede the assignment
    # while the node's first heartbeat is on its way).
    for before, e in pairwise(recorded):
        assert e.metadata.causation_id == event_id(before.position), (before.type, e.type)
    assert recorded[-1].metadata.node_id == cluster.settings.node_id


async def _stream_ids(cluster: Cluster, job_id: str, key: str) -> set[str]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/trace", params={"limit": 1000}, headers=cluster.headers(key)
    )
    assert answer.status_code == 200, answer.text
    return {e["stream_id"] for e in answer.json()["events"]}


async def test_another_account_reusing_a_request_id_never_joins_its_trace(
    cluster: Cluster, media_server: MediaServer
) -> None:
    request_id = f"shared-{uuid.uuid4().hex}"
    first_key = await _other_user_key(cluster)
    second_key = await _other_user_key(cluster)
    url = media_server.url("missing.mp4")

    async def create(key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await cluster.client.post(
            path,
            json=body,
            headers={
                **cluster.headers(key),
                "X-Request-ID": request_id,
                "Idempotency-Key": uuid.uuid4().hex,
            },
        )
        assert answer.status_code == 201, answer.text
        # The client's id is kept as given, whichever account sends it.
        assert answer.headers["x-request-id"] == request_id
        created: dict[str, Any] = answer.json()
        return created

    first_job = (await create(first_key, "/jobs", {"url": url}))["job_id"]
    # The second account's job, its idempotency records and a batch of its own all carry the
    # same correlation id as the first account's job.
    second_job = (await create(second_key, "/jobs", {"url": url}))["job_id"]
    bulk = await create(second_key, "/jobs/bulk", {"jobs": [{"url": url}]})
    # An admin's account is an account like any other here.
    admin_job = (await create(cluster.admin_key, "/jobs", {"url": url}))["job_id"]
    # A stream of the cluster's own (a node's) with the same correlation: an admin's to see.
    node_id = f"trace-node-{uuid.uuid4().hex[:8]}"
    await cluster.store.append(
        node.stream_id(node_id),
        [NewEvent(node_started(node_id), Metadata(correlation_id=request_id, actor="test"))],
        0,
    )

    first_sees = await _stream_ids(cluster, first_job, first_key)
    second_sees = await _stream_ids(cluster, second_job, second_key)
    admin_sees = await _stream_ids(cluster, admin_job, cluster.admin_key)

    first_streams = {f"job-{first_job}", *[s for s in first_sees if s.startswith("idempotency-")]}
    assert first_sees == first_streams and len(first_streams) == 2, first_sees
    assert f"batch-{bulk['batch_id']}" in second_sees
    assert f"job-{second_job}" in second_sees
    assert f"job-{admin_job}" in admin_sees
    assert node.stream_id(node_id) in admin_sees
    assert not first_sees & second_sees
    assert not admin_sees & (first_sees | second_sees)
    # Nothing of the second account (its key, its jobs) shows in the first account's trace.
    body = (
        await cluster.client.get(f"/jobs/{first_job}/trace", headers=cluster.headers(first_key))
    ).text
    assert second_job not in body and bulk["batch_id"] not in body and admin_job not in body
    second = await cluster.client.get(
        f"/jobs/{second_job}/trace", headers=cluster.headers(second_key)
    )
    second_actor = second.json()["requests"][0]["actor"]
    assert second_actor and second_actor not in body


async def test_the_servers_own_request_ids_are_random_uuids_none_derived_from_another(
    cluster: Cluster,
) -> None:
    ids = []
    for _ in range(40):
        answer = await cluster.client.get("/jobs", headers=cluster.headers())
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers["x-request-id"])

    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)
    # Random ids share no run of leading digits and lie nowhere near each other: a counter or a
    # clock would make the next id a neighbour of the last.
    assert len({i[:8] for i in ids}) == len(ids)
    numbers = sorted(uuid.UUID(i).int for i in ids)
    assert min(b - a for a, b in pairwise(numbers)) > 2**64
