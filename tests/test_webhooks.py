"""Webhooks: signed POSTs on completion and failure, retried with backoff, each one an event."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spool.adapters.event_store import EventStore
from spool.domain import job, webhook
from spool.domain.events import Event, NewEvent
from spool.domain.job import JobOptions
from spool.reactors.webhooks import WebhookReactor
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer


class Receiver:
    """A loopback HTTP endpoint that answers with scripted status codes and keeps what it got."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.location: str | None = None
        """The `Location` a redirect status is sent with."""
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


async def _secret(cluster: Cluster) -> str:
    answer = await cluster.client.get("/user/webhook", headers=cluster.headers())
    assert answer.status_code == 200
    body = answer.json()
    assert body["signature_header"] == "X-Spool-Signature"
    secret: str = body["secret"]
    return secret


async def test_a_completed_job_posts_one_signed_webhook(
    cluster: Cluster, media_server: MediaServer, receiver: Receiver
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), webhook_url=receiver.url)
    done = await cluster.wait(
        job_id, seconds=60, until=lambda j: j["webhook_status"] in ("delivered", "failed")
    )

    assert done["status"] == "Completed"
    assert done["webhook_status"] == "delivered"
    [(headers, body)] = receiver.received
    payload = json.loads(body)
    assert (payload["event"], payload["job_id"], payload["status"]) == (
        "job.completed",
        job_id,
        "Completed",
    )
    assert payload["s3_url"]
    assert headers["x-spool-event"] == "job.completed"
    secret = await _secret(cluster)
    assert webhook.verify(
        secret, int(headers["x-spool-timestamp"]), body, headers["x-spool-signature"]
    )
    assert not webhook.verify(
        secret, int(headers["x-spool-timestamp"]) + 1, body, headers["x-spool-signature"]
    )
    types = await cluster.event_types(job_id)
    assert types.count("WebhookDelivered") == 1
    assert types.index("WebhookDelivered") > types.index("JobCompleted")


async def test_a_webhook_from_a_local_storage_carries_a_signed_link_not_a_path(
    start_cluster: StartCluster, media_server: MediaServer, receiver: Receiver, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    async with start_cluster(storage_url=store.as_uri(), public_url="http://spool.test") as c:
        job_id = await c.create(media_server.url("clip.mp4"), webhook_url=receiver.url)
        await c.wait(job_id, seconds=60, until=lambda j: j["webhook_status"] == "delivered")
        [payload] = receiver.payloads()
        link = payload["s3_url"]
        assert link.startswith(f"http://spool.test/files/{job_id}/media?"), link
        assert str(store) not in link
        fetched = await c.client.get(link)  # no API key: the link is the permission
        assert fetched.status_code == 200
        assert len(fetched.content) == payload["file_size"]


async def test_a_failing_receiver_is_retried_with_each_attempt_recorded(
    cluster: Cluster, media_server: MediaServer, receiver: Receiver
) -> None:
    receiver.statuses = [503, 500]
    job_id = await cluster.create(media_server.url("missing.mp4"), webhook_url=receiver.url)
    done = await cluster.wait(
        job_id, seconds=60, until=lambda j: j["webhook_status"] in ("delivered", "failed")
    )

    assert done["status"] == "Failed"
    assert done["webhook_status"] == "delivered"
    assert [p["event"] for p in receiver.payloads()] == ["job.failed"] * 3
    assert "404" in receiver.payloads()[-1]["error"]
    types = await cluster.event_types(job_id)
    assert [t for t in types if t.startswith("Webhook")] == [
        "WebhookFailed",
        "WebhookFailed",
        "WebhookDelivered",
    ]


async def test_a_receiver_that_rejects_the_delivery_is_not_retried(
    cluster: Cluster, media_server: MediaServer, receiver: Receiver
) -> None:
    receiver.statuses = [410]
    job_id = await cluster.create(media_server.url("clip.mp4"), webhook_url=receiver.url)
    done = await cluster.wait(
        job_id, seconds=60, until=lambda j: j["webhook_status"] in ("delivered", "failed")
    )
    assert done["webhook_status"] == "failed"
    assert len(receiver.received) == 1


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_receiver_that_answers_a_redirect_is_a_failed_delivery_never_followed(
    cluster: Cluster, media_server: MediaServer, receiver: Receiver, status: int
) -> None:
    elsewhere = Receiver()  # where the redirect points: it must never get the signed body
    try:
        receiver.statuses = [status]
        receiver.location = elsewhere.url
        job_id = await cluster.create(media_server.url("clip.mp4"), webhook_url=receiver.url)
        done = await cluster.wait(
            job_id, seconds=60, until=lambda j: j["webhook_status"] in ("delivered", "failed")
        )

        assert done["status"] == "Completed"
        assert done["webhook_status"] == "failed"
        assert len(receiver.received) == 1
        assert elsewhere.received == []
        events = (
            await cluster.client.get(f"/jobs/{job_id}/events", headers=cluster.headers())
        ).json()["events"]
        outcomes = [e for e in events if e["type"].startswith("Webhook")]
        assert [e["type"] for e in outcomes] == ["WebhookFailed"]
        assert outcomes[0]["data"]["reason"].startswith(
            f"receiver answered HTTP {status}, a redirect: webhooks do not follow redirects"
        )
        assert outcomes[0]["data"]["final"] is True
    finally:
        elsewhere.server.shutdown()
        elsewhere.server.server_close()


async def test_progress_webhooks_arrive_only_when_asked_for(
    cluster: Cluster, media_server: MediaServer, receiver: Receiver
) -> None:
    job_id = await cluster.create(
        media_server.url("clip.mp4"), webhook_url=receiver.url, enable_progress_webhook=True
    )
    await cluster.wait(job_id, seconds=60, until=lambda j: j["webhook_status"] == "delivered")
    payloads = receiver.payloads()
    progress = [p for p in payloads if p["event"] == "job.progress"]
    assert [p["event"] for p in payloads].count("job.completed") == 1
    assert len(progress) >= 2  # best effort, but the stage starts at least
    assert {p["progress"]["stage"] for p in progress if p.get("progress")} >= {"download"}
    assert all(p["status"] == "Processing" for p in progress)


async def test_the_webhook_reactor_forgets_every_job_that_ended(store: EventStore) -> None:
    # It learns each job's webhook from JobCreated; a job that ends without a webhook (most
    # jobs) used to stay in memory for as long as the reactor process ran.
    ids = [str(uuid.uuid4()) for _ in range(3)]
    endings: list[Event] = [
        job.JobCompleted(run=1, attempt=1, node_id="n", key="k", storage="s", size=1, seconds=0),
        job.JobFailed(run=1, stage="download", reason="gone"),
        job.JobCancelled(run=1, stage=None),
    ]
    for job_id in ids:
        created = job.create(job_id=job_id, account_id="a", url="https://x/y", options=JobOptions())
        await store.append(job.stream_id(job_id), [NewEvent(e) for e in created], 0)
    reactor = WebhookReactor(redis=None)  # type: ignore[arg-type]  # nothing is dispatched
    async with store.pool.acquire() as conn:
        for job_id in ids:
            await reactor.apply(conn, await store.read_stream(job.stream_id(job_id)))
        assert len(reactor._targets) == 3
        for job_id, ending in zip(ids, endings, strict=True):
            await store.append(job.stream_id(job_id), [NewEvent(ending)], 1)
            await reactor.apply(conn, await store.read_stream(job.stream_id(job_id), 2))

    assert reactor._targets == {}
