"""Media not out yet (a premiere, an upcoming live stream, a video still being processed) is
waited for, not failed: the download tries again later with backoff, spending no attempt, up to
a limit; while it waits the job is Pending and says why, holds no node slot and no room in the
line, and can be cancelled.

A real premiere needs YouTube, which no test reaches. So the tests register an extractor of
their own in yt-dlp, in this process (the cluster's node runs in it: tests/fixtures/cluster.py),
the way a yt-dlp plugin lands: first in yt-dlp's list. It answers like YouTube's extractor does
for an upcoming video (`raise_no_formats` with the player's reason, extractor/youtube/_video.py)
or like an extractor that returns an upcoming entry (`live_status: is_upcoming`, no formats),
until the test lets it out; then it gives a real file on the loopback media server, which
yt-dlp's real machinery downloads through Spool's guarded handler.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from yt_dlp.extractor import import_extractors
from yt_dlp.extractor.common import InfoExtractor
from yt_dlp.globals import extractors as registered_extractors
from yt_dlp.utils import ExtractorError, UserNotLive

from spool.adapters.downloader import DownloadFailed, NotReady, _failure, download
from spool.adapters.queue import DOWNLOAD_QUEUE, forget, unit_status
from spool.adapters.ssrf import UrlGuard
from spool.domain import job, not_ready
from spool.replay import load_timeline, render_text
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until

LOOPBACK = UrlGuard(["127.0.0.1/32"])
AT = datetime(2026, 1, 1, tzinfo=UTC)


# --- the loopback stand-in for a site with premieres --------------------------------------------


@dataclass
class Item:
    """One item the stand-in lists: upcoming until `media_url` is set."""

    says: str | None = None
    """Raise this as the site's reason (YouTube's way); None: return an upcoming entry."""
    release: float | None = None
    """The entry's `release_timestamp`, when it gives one."""
    media_url: str | None = None
    tries: int = 0


ITEMS: dict[str, Item] = {}


class LoopbackPremiereIE(InfoExtractor):  # type: ignore[misc]
    IE_NAME = "loopback:premiere"
    _VALID_URL = r"https?://127\.0\.0\.1:\d+/premiere/(?P<id>[\w-]+)"

    def _real_extract(self, url: str) -> dict[str, Any]:
        item_id = self._match_id(url)
        item = ITEMS[item_id]
        item.tries += 1
        if item.media_url is not None:
            return {"id": item_id, "title": f"Premiere {item_id}", "url": item.media_url}
        if item.says is not None:
            self.raise_no_formats(item.says, expected=True, video_id=item_id)
        return {
            "id": item_id,
            "title": f"Premiere {item_id}",
            "formats": [],
            "live_status": "is_upcoming",
            "release_timestamp": item.release,
        }


@pytest.fixture
def premieres() -> Iterator[dict[str, Item]]:
    """The stand-in registered first in yt-dlp's extractors (as a plugin would be) for the
    test; its items, which the test fills."""
    import_extractors()  # yt-dlp's own fill the registry first, so that none land in ours
    before = registered_extractors.value
    registered_extractors.value = {"LoopbackPremiereIE": LoopbackPremiereIE, **before}
    ITEMS.clear()
    try:
        yield ITEMS
    finally:
        registered_extractors.value = before
        ITEMS.clear()


def premiere_url(media_server: MediaServer, item_id: str) -> str:
    return f"{media_server.base_url}/premiere/{item_id}"


# --- the classifier -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "ready_in"),
    [
        ("This live event will begin in 3 hours.", 3 * 3600),
        ("Premieres in 2 days", 2 * 86400),
        ("This live event will begin in a few moments.", None),
        ("Premiere will begin shortly", None),
        ("This video is still being processed. Please check back later.", None),
        ("This video is being processed", None),
        ("This video is processing", None),
        ("Livestream has not yet started", None),
        ("Twitter Space not started yet", None),
        ("This live event is scheduled for 2026-05-01 20:00", None),
    ],
)
def test_what_sites_say_of_media_not_out_yet_is_not_ready(
    message: str, ready_in: int | None
) -> None:
    failure = _failure(
        ExtractorError(message, expected=True, video_id="x", ie="youtube"),
        "https://www.youtube.com/watch?v=x",
        audio_only=False,
        clock=lambda: 1_000.0,
    )
    assert isinstance(failure, NotReady)
    assert str(failure) == message.rstrip(".")
    assert failure.ready_at == (None if ready_in is None else 1_000.0 + ready_in)
    assert failure.retryable and failure.kind == "warning"


@pytest.mark.parametrize(
    "exc",
    [
        ExtractorError("Video unavailable", expected=True),
        ExtractorError("Private video. Sign in if you've been granted access", expected=True),
        ExtractorError("This live stream recording is not available.", expected=True),
        ExtractorError("Requested format is not available", expected=True),
        ExtractorError("Join this channel to get access to members-only content", expected=True),
        UserNotLive(),  # a channel that is not live now may never be: nothing is scheduled
        RuntimeError("the premiere will begin in 3 hours"),  # not a site's word, ours
    ],
)
def test_other_failures_are_not_taken_for_media_not_out_yet(exc: Exception) -> None:
    failure = _failure(exc, "https://example.com/v", audio_only=False)
    assert isinstance(failure, DownloadFailed) and not isinstance(failure, NotReady)


def test_an_upcoming_entry_is_not_ready_and_says_when(
    premieres: dict[str, Item], media_server: MediaServer, tmp_path: Path
) -> None:
    release = time.time() + 3600
    premieres["soon"] = Item(release=release)
    with pytest.raises(NotReady) as caught:
        download(premiere_url(media_server, "soon"), tmp_path, guard=LOOPBACK)
    assert caught.value.ready_at == release
    assert "upcoming" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_site_saying_when_it_begins_is_not_ready(
    premieres: dict[str, Item], media_server: MediaServer, tmp_path: Path
) -> None:
    premieres["live"] = Item(says="This live event will begin in 3 hours.")
    with pytest.raises(NotReady) as caught:
        download(premiere_url(media_server, "live"), tmp_path, guard=LOOPBACK, clock=lambda: 50.0)
    assert caught.value.ready_at == 50.0 + 3 * 3600
    assert str(caught.value) == "This live event will begin in 3 hours"


# --- when to try again ----------------------------------------------------------------------------

POLICY = not_ready.WaitPolicy(first=300, longest=3600, limit=48 * 3600)


def test_the_wait_doubles_up_to_its_cap_and_never_past_the_limit() -> None:
    tries = [not_ready.next_try(POLICY, waits=n, waited=0, ready_in=None) for n in range(6)]
    assert tries == [300, 600, 1200, 2400, 3600, 3600]
    assert not_ready.next_try(POLICY, waits=40, waited=48 * 3600 - 100, ready_in=None) == 100
    assert not_ready.next_try(POLICY, waits=40, waited=48 * 3600, ready_in=None) is None
    assert not_ready.next_try(POLICY, waits=5000, waited=0, ready_in=None) == 3600


def test_a_known_release_time_is_waited_for_then_tried_shortly_after() -> None:
    # Past the backoff's cap, too: the source said when.
    assert not_ready.next_try(POLICY, waits=0, waited=0, ready_in=5 * 3600) == 5 * 3600 + 60
    # Released already, and still not out: the backoff again.
    assert not_ready.next_try(POLICY, waits=2, waited=0, ready_in=-30) == 1200
    # Out only after the limit: no use waiting.
    assert not_ready.next_try(POLICY, waits=0, waited=0, ready_in=72 * 3600) is None


def _fold(events: list[Any]) -> job.JobState:
    state = job.fold([(e, AT + timedelta(seconds=v), v) for v, e in enumerate(events, 1)])
    assert state is not None
    return state


def test_a_wait_keeps_the_job_pending_saying_why_and_spends_no_attempt() -> None:
    events: list[Any] = job.create(
        job_id="j1", account_id="a1", url="https://example.com/v", options=job.JobOptions()
    )
    for attempt in (1, 2):
        events += job.start_stage(_fold(events), "download", 1, attempt, "n1")
        now = AT + timedelta(seconds=len(events) + 1)
        events += job.wait_for_media(
            _fold(events),
            1,
            attempt,
            node_id="n1",
            reason="Premieres in 2 hours",
            ready_at=None,
            now=now,
            policy=POLICY,
        )
    state = _fold(events)
    assert (state.status, state.step, state.stage, state.attempt) == (
        "Pending",
        "Queued",
        "download",
        3,
    )
    assert state.retries == {} and state.waits == 2
    assert state.error_type == "warning"
    assert state.error is not None and state.error.startswith("Waiting, not out yet: Premieres in")
    waits = [e for e in events if isinstance(e, job.MediaNotReady)]
    assert [w.retry_in for w in waits] == [300, 600]
    assert state.next_try_at == AT + timedelta(seconds=len(events)) + timedelta(seconds=600)

    # Its next try starts: the note goes; the stage's three attempts are all still there.
    events += job.start_stage(state, "download", 1, 3, "n2")
    started = _fold(events)
    assert started.error is None and started.next_try_at is None
    failed = job.fail_stage(started, "download", 1, 3, node_id="n2", reason="boom")
    assert [type(e).__name__ for e in failed] == ["StageFailed"]


def test_a_release_after_the_limit_fails_the_job_at_once_saying_when() -> None:
    events: list[Any] = job.create(
        job_id="j1", account_id="a1", url="https://example.com/v", options=job.JobOptions()
    )
    events += job.start_stage(_fold(events), "download", 1, 1, "n1")
    decided = job.wait_for_media(
        _fold(events),
        1,
        1,
        node_id="n1",
        reason="Premieres in 5 days",
        ready_at=AT + timedelta(days=5),
        now=AT,
        policy=POLICY,
    )
    assert [type(e).__name__ for e in decided] == ["StageFailed", "JobFailed"]
    failed = decided[-1]
    assert isinstance(failed, job.JobFailed) and failed.error_type == "warning"
    assert failed.reason.startswith("Not out before Spool stops waiting (48 h at most)")
    assert "2026-01-06 00:00:00 UTC" in failed.reason


# --- on a cluster ---------------------------------------------------------------------------------


async def _events(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    answer = await cluster.client.get(
        f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
    )
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


async def _waits(cluster: Cluster, job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's `MediaNotReady` events, once there are `count` of them."""

    async def enough() -> list[dict[str, Any]] | None:
        found = [e for e in await _events(cluster, job_id) if e["type"] == "MediaNotReady"]
        return found if len(found) >= count else None

    return await until(enough, seconds=60)


async def test_an_upcoming_premiere_waits_without_spending_attempts_then_downloads(
    start_cluster: StartCluster, premieres: dict[str, Item], media_server: MediaServer
) -> None:
    premieres["p1"] = Item(says="This live event will begin in a few moments.")
    async with start_cluster(not_ready_backoff=0.2, not_ready_backoff_max=0.4) as cluster:
        job_id = await cluster.create(premiere_url(media_server, "p1"))
        waits = await _waits(cluster, job_id, 3)
        assert [w["data"]["attempt"] for w in waits] == [1, 2, 3]
        assert [w["data"]["retry_in"] for w in waits] == [0.2, 0.4, 0.4]
        waiting = await cluster.wait(job_id, until=lambda j: j["next_try_at"] is not None)
        assert waiting["status"] == "Pending" and waiting["step"] == "Queued"
        assert waiting["error_type"] == "warning"
        assert waiting["error"].startswith(
            "Waiting, not out yet: This live event will begin in a few moments; next try at "
        )

        premieres["p1"].media_url = media_server.url("clip.mp4")
        done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

        assert done["status"] == "Completed", done
        assert done["error"] is None and done["next_try_at"] is None
        assert done["download_retries"] == 0
        assert done["title"] == "Premiere p1"
        types = [e["type"] for e in await _events(cluster, job_id)]
        assert "StageFailed" not in types
        timeline = await load_timeline(cluster.store, "job", job.stream_id(job_id))
        assert timeline is not None
        text = "\n".join(render_text(timeline))
        assert "MediaNotReady" in text
        assert "not out yet (This live event will begin in a few moments)" in text
        assert "download attempt 2 (no attempt spent)" in text


async def test_a_waiting_job_holds_no_node_slot_and_no_room_in_the_line(
    start_cluster: StartCluster, premieres: dict[str, Item], media_server: MediaServer
) -> None:
    premieres["later"] = Item(release=time.time() + 3600)
    async with start_cluster(download_concurrency=1, not_ready_backoff=60) as cluster:
        waiting = await cluster.create(premiere_url(media_server, "later"))
        [wait] = await _waits(cluster, waiting, 1)
        assert wait["data"]["ready_at"] is not None
        assert wait["data"]["retry_in"] >= 3600  # honours the release time the source gave

        # The line counts only the units due now (reactors/pipeline.py): the waiting one is
        # due in an hour, so once its first try's unit has ended, none is.
        unit = job.arq_job_id(waiting, 1, "download", 2)
        due_at = await until(lambda: cluster.redis.zscore(DOWNLOAD_QUEUE, unit))  # dispatched
        assert due_at > (time.time() + 3000) * 1000
        await until(lambda: _due_now(cluster, 0))
        # The node's one download slot is free for others.
        other = await cluster.create(media_server.url("clip.mp4"))
        assert (await cluster.wait(other, "Completed", "Failed", seconds=90))["status"] == (
            "Completed"
        )
        assert (await cluster.job(waiting))["status"] == "Pending"


async def test_a_wait_redis_lost_is_dispatched_again_still_waiting(
    start_cluster: StartCluster, premieres: dict[str, Item], media_server: MediaServer
) -> None:
    premieres["lost"] = Item()
    async with start_cluster(not_ready_backoff=120) as cluster:
        job_id = await cluster.create(premiere_url(media_server, "lost"))
        await _waits(cluster, job_id, 1)
        unit = job.arq_job_id(job_id, 1, "download", 2)
        await until(lambda: cluster.redis.zscore(DOWNLOAD_QUEUE, unit))
        await forget(cluster.redis, unit)  # as a FLUSHALL would
        await cluster.redis.zrem(DOWNLOAD_QUEUE, unit)

        # The reconciler finds the unit missing and sends it again, due when the wait ends.
        due_at = await until(lambda: cluster.redis.zscore(DOWNLOAD_QUEUE, unit))
        assert due_at > (time.time() + 60) * 1000
        assert premieres["lost"].tries == 2  # the API's probe and the one try: none since
        waiting = await cluster.job(job_id)
        assert waiting["status"] == "Pending" and waiting["next_try_at"] is not None


async def test_a_premiere_that_does_not_come_out_in_time_fails_clearly(
    start_cluster: StartCluster, premieres: dict[str, Item], media_server: MediaServer
) -> None:
    premieres["never"] = Item()
    async with start_cluster(not_ready_backoff=0.2, not_ready_limit=1.0) as cluster:
        job_id = await cluster.create(premiere_url(media_server, "never"))
        failed = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

        assert failed["status"] == "Failed"
        assert failed["error_type"] == "warning"
        assert failed["error"].startswith("Still not out after waiting 1 s: the source lists it")
        assert failed["next_try_at"] is None
        types = [e["type"] for e in await _events(cluster, job_id)]
        # It waited at least once before failing (how many times depends on how soon each try
        # ran against the 1 s limit, which a loaded machine stretches).
        assert types.count("MediaNotReady") >= 1
        assert types[-2:] == ["StageFailed", "JobFailed"]
        assert "DownloadCompleted" not in types


async def test_a_waiting_job_can_be_cancelled_and_never_downloads(
    start_cluster: StartCluster, premieres: dict[str, Item], media_server: MediaServer
) -> None:
    premieres["gone"] = Item(says="Premiere will begin shortly")
    async with start_cluster(not_ready_backoff=2.0) as cluster:
        job_id = await cluster.create(premiere_url(media_server, "gone"))
        [wait] = await _waits(cluster, job_id, 1)
        cancel = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
        assert cancel.status_code == 200, cancel.text
        tries = premieres["gone"].tries
        premieres["gone"].media_url = media_server.url("clip.mp4")  # it would download now

        # The unit the wait left is taken by the node when due, and ends there.
        unit = job.arq_job_id(job_id, 1, "download", wait["data"]["attempt"] + 1)
        await until(lambda: _done(cluster, unit), seconds=60)

        assert (await cluster.job(job_id))["status"] == "Cancelled"
        types = [e["type"] for e in await _events(cluster, job_id)]
        assert types[types.index("JobCancelled") :] == ["JobCancelled"]
        assert premieres["gone"].tries == tries
        assert cluster.objects() == []


async def _due_now(cluster: Cluster, count: int) -> bool:
    return await cluster.redis.zcount(DOWNLOAD_QUEUE, "-inf", int(time.time() * 1000)) == count


async def _done(cluster: Cluster, unit: str) -> bool:
    return await unit_status(cluster.redis, unit) == "done"
