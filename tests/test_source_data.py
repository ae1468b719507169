"""Source data is data: what a source writes (titles, descriptions, codecs, error text) is made
safe before it is recorded, and a result the event store still refuses fails the job with its
real cause, at once when a retry could not help.

Real parts: pages served over loopback whose `<title>` holds a NUL, a lone surrogate, invalid
UTF-8 or 100 KB; the cluster's own PostgreSQL, with a check of the test's own on its events.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from spool.adapters.database import asyncpg_url
from spool.adapters.event_store import EventStore, refusal_reason, refused_for_good
from spool.domain import job, task
from spool.domain.events import NewEvent
from spool.domain.source_data import (
    BOUNDS,
    DEFAULT_BOUND,
    REPLACEMENT,
    TRUNCATED,
    made_safe,
    safe_text,
)
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.test_tasks_cluster import settled, start_scheduler, submit

# --- what the pure function does ------------------------------------------------------------


def test_nul_and_lone_surrogates_are_replaced_and_a_surrogate_pair_is_joined() -> None:
    assert safe_text("a\x00b") == f"a{REPLACEMENT}b"
    assert safe_text("a\ud800b\udc80") == f"a{REPLACEMENT}b{REPLACEMENT}"
    assert safe_text("smile \ud83d\ude00") == "smile \U0001f600"
    plain = "an ordinary title, with tabs\tand\nlines"
    assert safe_text(plain) is plain


def test_each_field_is_cut_to_its_documented_bound() -> None:
    done = job.DownloadCompleted(
        run=1,
        attempt=1,
        node_id="n",
        files=[job.MediaFile(path="/work/media.mp4", kind="av", size=1)],
        bytes=1,
        seconds=0.1,
        title="T" * 5_000,
        description="D" * 50_000,
        native_video_codec="avc1." + "4" * 500,
    )

    safe = made_safe(done)

    assert safe.title is not None and len(safe.title) == BOUNDS["title"] == 1_000
    assert safe.title.endswith(TRUNCATED)
    assert safe.description is not None and len(safe.description) == BOUNDS["description"]
    assert safe.native_video_codec is not None and len(safe.native_video_codec) == 100
    assert safe.files == done.files  # a path within bounds is left as it is
    failed = made_safe(job.JobFailed(run=1, stage="download", reason="x\x00" * 10_000))
    assert len(failed.reason) == BOUNDS["reason"] and "\x00" not in failed.reason
    assert len(safe_text("u" * 10_000)) == DEFAULT_BOUND


def test_an_event_with_nothing_to_fix_is_returned_unchanged() -> None:
    failed = job.JobFailed(run=1, stage="download", reason="Source answered HTTP 404")
    assert made_safe(failed) is failed


# --- what the store refuses, and for how long ---------------------------------------------------


async def test_the_store_refuses_a_nul_or_a_lone_surrogate_for_good_and_a_dead_server_only_for_now(
    store: EventStore,
) -> None:
    # A legal job: the suite's database is shared, and its `jobs` projection folds every stream.
    job_id = str(uuid.uuid4())
    stream = job.stream_id(job_id)
    created = job.create(job_id=job_id, account_id="a", url="http://x/", options=job.JobOptions())
    await store.append(stream, [NewEvent(e) for e in created], 0)
    refusals: list[Exception] = []
    for reason in ("a\x00b", "a\ud800b"):
        with pytest.raises(Exception) as raised:
            await store.append(
                stream, [NewEvent(job.JobFailed(run=1, stage="download", reason=reason))], None
            )
        refusals.append(raised.value)
    nul, surrogate = refusals

    # What PostgreSQL itself answers to `\u0000` in jsonb, and what the encoder does first.
    assert isinstance(nul, asyncpg.UntranslatableCharacterError)
    assert isinstance(surrogate, UnicodeEncodeError)
    assert refused_for_good(nul) and refused_for_good(surrogate)
    assert refusal_reason(nul).startswith("the database refused it (22P05: ")
    # Made safe first, the same events are taken.
    for reason in ("a\x00b", "a\ud800b"):
        await store.append(
            stream,
            [NewEvent(made_safe(job.JobFailed(run=1, stage="download", reason=reason)))],
            None,
        )
    assert [e.data.reason for e in await store.read_stream(stream, 2)] == [  # type: ignore[attr-defined]
        f"a{REPLACEMENT}b",
        f"a{REPLACEMENT}b",
    ]
    # A server that is not there is an outage, which a retry can outlast.
    with pytest.raises(OSError) as down:
        await asyncpg.connect("postgresql://postgres@127.0.0.1:9/postgres", timeout=5)
    assert not refused_for_good(down.value)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "title"),
    [
        ("nul-title.html", f"Spool{REPLACEMENT}test"),
        ("surrogate-title.html", f"Spool{REPLACEMENT}test \U0001f600"),
        ("bad-utf8-title.html", f"Spool{REPLACEMENT}{REPLACEMENT}test"),
    ],
    ids=["nul", "lone-surrogate", "invalid-utf8"],
)
async def test_a_source_whose_title_holds_a_nul_or_broken_text_completes_with_it_replaced(
    cluster: Cluster, media_server: MediaServer, page: str, title: str
) -> None:
    job_id = await cluster.create(media_server.url(page))

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

    assert done["status"] == "Completed", done["error"]
    assert done["download_retries"] == 0
    assert done["title"].startswith(title), done["title"]
    assert "\x00" not in done["title"] and "\x00" not in done["description"]
    assert done["description"].startswith("Test") and REPLACEMENT in done["description"]
    assert done["storage_key"].rsplit("/", 1)[-1].startswith("Spool_")
    assert cluster.objects() == [f"media/{done['storage_key']}"]


async def test_a_100_kb_title_completes_cut_to_its_bound(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("long-title.html"))

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

    assert done["status"] == "Completed", done["error"]
    assert len(done["title"]) == BOUNDS["title"] and done["title"].endswith(TRUNCATED)
    assert len(done["description"]) == BOUNDS["description"]
    # The file's name is made from the title, and cut shorter still.
    assert len(done["storage_key"].rsplit("/", 1)[-1]) < 260


async def _database_refuses(cluster: Cluster, name: str, check: str) -> None:
    """Add a check to the cluster's database (the test's own) on the partition that holds job
    and task streams: a bound the database then enforces on every append.

    Not on `events` itself: a heartbeat day's table attached meanwhile would have to carry it.
    """
    conn = await asyncpg.connect(asyncpg_url(cluster.settings.database_url))
    try:
        await conn.execute(
            f"ALTER TABLE events_after_heartbeats ADD CONSTRAINT {name} CHECK ({check})"
        )
    finally:
        await conn.close()


async def test_a_result_the_database_refuses_fails_the_job_at_once_naming_the_cause(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster() as cluster:
        # A database of this test's own that takes titles of at most 500 characters: shorter
        # than the 1,000 Spool keeps, so the download's result is refused however it is sent.
        await _database_refuses(
            cluster, "titles_fit", "type <> 'DownloadCompleted' OR length(data->>'title') <= 500"
        )
        job_id = await cluster.create(media_server.url("long-title.html"))

        failed = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

        assert failed["status"] == "Failed"
        assert failed["error"].startswith(
            "The download result could not be recorded: the database refused it (23514: "
        ), failed["error"]
        assert "titles_fit" in failed["error"]
        assert "LLLL" not in failed["error"]  # the refused row stays out of the reason
        assert "ended without a result" not in failed["error"]
        assert failed["download_retries"] == 1  # one failed attempt: a retry would be refused too
        types = await cluster.event_types(job_id)
        assert types.count("StageStarted") == 1
        assert "DownloadCompleted" not in types
        assert types[-2:] == ["StageFailed", "JobFailed"]
        assert cluster.objects() == []


async def test_metadata_of_a_page_with_broken_titles_answers_them_made_safe(
    cluster: Cluster, media_server: MediaServer
) -> None:
    answers = {
        page: await cluster.client.post(
            "/metadata", json={"url": media_server.url(page)}, headers=cluster.headers()
        )
        for page in ("nul-title.html", "surrogate-title.html", "long-title.html")
    }

    for page, answer in answers.items():
        assert answer.status_code == 200, (page, answer.text)
    assert answers["nul-title.html"].json()["title"].startswith(f"Spool{REPLACEMENT}test")
    assert (
        answers["surrogate-title.html"]
        .json()["title"]
        .startswith(f"Spool{REPLACEMENT}test \U0001f600")
    )
    assert len(answers["long-title.html"].json()["title"]) == BOUNDS["title"]


class _HostileStatus:
    """A loopback server whose every answer is a 404 with a NUL and 10 KB in its reason phrase."""

    REASON = "Not\x00Found " + "R" * 10_000

    def __init__(self) -> None:
        reason = self.REASON

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(404, reason)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/clip.mp4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hostile_status() -> Iterator[_HostileStatus]:
    server = _HostileStatus()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_a_source_whose_status_line_holds_a_nul_fails_with_its_reason_made_safe(
    cluster: Cluster, hostile_status: _HostileStatus
) -> None:
    job_id = await cluster.create(hostile_status.url)

    failed = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert failed["status"] == "Failed"
    assert failed["error"].startswith(f"Source answered HTTP 404 Not{REPLACEMENT}Found RRR")
    assert len(failed["error"]) == BOUNDS["reason"]
    assert failed["download_retries"] == 1  # a 404 is final, and it was recorded the first time


class _NulBody:
    """A loopback server that answers 200 with a body holding a NUL and a lone surrogate's
    bytes as CESU (invalid UTF-8)."""

    BODY = b"before\x00after \xed\xa0\x80 end"

    def __init__(self) -> None:
        body = self.BODY

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/note"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_an_http_request_task_whose_answer_holds_a_nul_succeeds_with_it_replaced(
    cluster: Cluster,
) -> None:
    remote = _NulBody()
    try:
        start_scheduler(cluster)
        task_id = await submit(
            cluster, cluster.admin_key, task_type="http_request", payload={"url": remote.url}
        )

        done = await settled(cluster, task_id, "success", "failed", "timeout", seconds=60)

        assert done.status == "success", done
        assert isinstance(done.result_data, dict)
        assert done.result_data["status_code"] == 200
        body = done.result_data["body"]
        assert body.startswith(f"before{REPLACEMENT}after ") and body.endswith(" end")
        assert "\x00" not in body
    finally:
        remote.server.shutdown()
        remote.server.server_close()


async def test_a_task_result_the_database_refuses_fails_the_task_at_once_naming_the_cause(
    cluster: Cluster,
) -> None:
    await _database_refuses(
        cluster, "results_fit", "type <> 'TaskSucceeded' OR length(data::text) <= 300"
    )
    start_scheduler(cluster)
    task_id = await submit(
        cluster,
        task_type="echo",
        payload={"text": "E" * 500},
        requirements={"max_retries": 3},
    )

    done = await settled(cluster, task_id, "success", "failed", "timeout", seconds=60)

    assert done.status == "failed", done
    assert done.error is not None and done.error.startswith(
        "The task's result could not be recorded: the database refused it (23514: "
    ), done.error
    assert "results_fit" in done.error and "EEEE" not in done.error
    types = [e.type for e in await cluster.store.read_stream(task.stream_id(task_id))]
    assert types.count("TaskStarted") == 1 and "TaskSucceeded" not in types
