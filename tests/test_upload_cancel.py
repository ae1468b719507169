"""Cancelling a job while its upload is in flight leaves nothing in storage.

Real parts only: the whole cluster in-process (PostgreSQL, Redis, the node), moto's S3 server,
FFmpeg-made media on a loopback HTTP server, and between the cluster and S3 a throttling TCP proxy
(`tests.fixtures.throttle`). The proxy is what makes these tests deterministic rather than lucky:
it paces the upload so that the job is seen in "Uploading" with bytes on the wire, then holds the
request half-sent while the test cancels the job and waits for the node to take the cancel in.
Only then does it let the rest through, so the upload always ends *after* the cancel.

Two uploads are held this way: a file below the multipart threshold (one PUT: the object exists
once the PUT ends and must be deleted again) and one above it (parts: the multipart upload must be
aborted so that no parts linger).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from spool.adapters.job_store import jobs
from spool.adapters.storage import S3Storage
from spool.assembly import PIPELINE, PROJECTIONS
from spool.domain import job
from spool.domain.events import Event, Metadata
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer, make_dense_clip
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401 - the fixture

SMALL = "small.mp4"
LARGE = "large.mp4"

IN_FLIGHT = 128 * 1024
"""Bytes through the proxy that show the request body is flowing, not just its headers."""


@pytest.fixture
def s3_storage_url(throttled_s3: ThrottledS3) -> str:  # noqa: F811 - overrides the suite's
    """The cluster's storage URL, through the throttling proxy.

    The harness builds its storage (the node's and the API's) from this fixture rather than from
    `settings.storage_url`, so overriding it here is what points the cluster at the proxy.
    """
    return throttled_s3.storage_url


@pytest.fixture(scope="module")
def dense_media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    """`small.mp4` (~5 MiB: one PUT) and `large.mp4` (~10 MiB: two 8 MiB-max parts), served."""
    root = tmp_path_factory.mktemp("dense-media")
    make_dense_clip(root / SMALL, seconds=2, video_bitrate="16M")
    make_dense_clip(root / LARGE, seconds=2, video_bitrate="34M")
    server = MediaServer(root).start()
    try:
        yield server
    finally:
        server.stop()


async def _eventually(what: str, check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        await asyncio.sleep(0.05)


def _pending_uploads(cluster: Cluster) -> list[str]:
    """Keys of unfinished multipart uploads, asked of moto directly (not through the proxy)."""
    listing: dict[str, Any] = cluster.s3.client().list_multipart_uploads(Bucket=cluster.bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


def _multipart_threshold(cluster: Cluster) -> int:
    assert isinstance(cluster.storage, S3Storage)
    return cluster.storage.multipart_threshold


@dataclass(frozen=True)
class Held:
    """What the test saw while the upload was held half-sent."""

    job_id: str
    size: int
    """The muxed file being uploaded."""
    sent_when_held: int
    pending_when_held: list[str]


async def _cancel_mid_upload(cluster: Cluster, throttled: ThrottledS3, url: str, name: str) -> Held:
    """Run a job into its upload, hold the upload half-sent, cancel the job, let go.

    Returns once the node runs nothing any more.
    """
    proxy, node = throttled.proxy, cluster.node
    assert node is not None
    job_id = await cluster.create(url, filename=name.removesuffix(".mp4"))
    await cluster.wait(job_id, until=lambda j: j["step"] == "Uploading", seconds=30)
    await _eventually("the upload is on the wire", lambda: proxy.upstream_bytes >= IN_FLIGHT)
    proxy.pause()
    try:
        sent = proxy.upstream_bytes
        size = (cluster.settings.data_dir / "work" / job_id / "1" / "output.mp4").stat().st_size
        pending = _pending_uploads(cluster)
        assert sent < size, "the upload must still be under way when the cancel comes"
        assert cluster.objects() == []

        answer = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"job_id": job_id, "status": "Cancelled"}
        await _eventually(
            "the node takes the cancel in",
            lambda: any(u.job_id == job_id and u.cancel.is_set() for u in node.running.values()),
        )
        assert cluster.objects() == []
    finally:
        proxy.unthrottle()  # the rest of the upload, and the clean-up, at full speed
    await _eventually("the node runs nothing", lambda: not node.running)
    return Held(job_id, size, sent, pending)


async def _assert_nothing_left(cluster: Cluster, job_id: str) -> None:
    assert cluster.objects() == []
    assert _pending_uploads(cluster) == []
    job = await cluster.job(job_id)
    assert job["status"] == "Cancelled", job
    assert job["s3_url"] is None
    types = await cluster.event_types(job_id)
    assert "JobCancelled" in types
    assert "JobCompleted" not in types
    # Nothing of the job's is left on the node's disk. A cancel removes the run's directory,
    # `work/<job>/<run>`, but leaves `work/<job>` itself behind, empty; that much is allowed.
    job_dir = cluster.settings.data_dir / "work" / job_id
    assert not (job_dir / "1").exists()
    assert not job_dir.exists() or list(job_dir.iterdir()) == []


async def test_cancel_during_a_single_put_upload_deletes_the_object_it_wrote(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    dense_media: MediaServer,
) -> None:
    # The stall watchdog is not under test: keep it out of the way of the held upload.
    async with start_cluster(stall_timeout=60) as cluster:
        held = await _cancel_mid_upload(cluster, throttled_s3, dense_media.url(SMALL), SMALL)

        assert held.size <= _multipart_threshold(cluster), "the file must go up in one PUT"
        assert held.pending_when_held == []
        assert throttled_s3.proxy.upstream_bytes > held.size  # all of it went up, then was undone
        await _assert_nothing_left(cluster, held.job_id)


async def test_cancel_during_a_multipart_upload_aborts_it_and_leaves_no_parts(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    dense_media: MediaServer,
) -> None:
    async with start_cluster(stall_timeout=60) as cluster:
        held = await _cancel_mid_upload(cluster, throttled_s3, dense_media.url(LARGE), LARGE)

        assert held.size > _multipart_threshold(cluster), "the file must go up in parts"
        assert held.pending_when_held == [cluster.in_bucket(LARGE)]  # held inside the first part
        assert throttled_s3.proxy.upstream_bytes < held.size  # the second part never went up
        await _assert_nothing_left(cluster, held.job_id)


async def test_an_upload_whose_job_moved_on_to_another_node_aborts_its_multipart_upload(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    dense_media: MediaServer,
) -> None:
    """The node is thought lost mid-upload (as after a cut link): the reconciler fails the
    upload so that the job starts over from download, and another node takes that download.
    The node learns it at its next heartbeat and stops: its multipart upload is aborted, it
    records nothing, and the run's files, which no current unit needs, leave its disk.

    Only projections and the pipeline run, and the pipeline stops before the job moves on: the
    other node is this test, which takes the download and does nothing with it."""
    proxy = throttled_s3.proxy
    async with start_cluster(stall_timeout=60, with_reactors=False) as cluster:
        cluster.start(PROJECTIONS, PIPELINE)
        node = cluster.node
        assert node is not None
        job_id = await cluster.create(dense_media.url(LARGE), filename="moved")
        await cluster.wait(job_id, until=lambda j: j["step"] == "Uploading", seconds=30)
        await _eventually("the upload is on the wire", lambda: proxy.upstream_bytes >= IN_FLIGHT)
        proxy.pause()
        try:
            assert _pending_uploads(cluster) == [cluster.in_bucket("moved.mp4")]
            cluster.stops[PIPELINE].set()
            await asyncio.wait_for(cluster.tasks[PIPELINE], 30)
            (unit,) = node.running.values()

            await _move_on_to(cluster, job_id, "node-elsewhere", lost=node.node_id)
            await _eventually("the node stops the unit", lambda: unit.cancel.is_set(), 10)
        finally:
            proxy.unthrottle()
        await _eventually("the node runs nothing", lambda: not node.running)

        assert unit.moved_on
        assert _pending_uploads(cluster) == []
        assert cluster.objects() == []
        assert not (cluster.settings.data_dir / "work" / job_id).exists()
        types = await cluster.event_types(job_id)
        # Nothing of the node's after the takeover: no result, no failure of its own.
        assert types[-2:] == ["StageFailed", "StageStarted"]
        assert "JobCompleted" not in types


async def _move_on_to(cluster: Cluster, job_id: str, other: str, *, lost: str) -> None:
    """What the reconciler and another node append when `lost` is judged lost mid-upload: the
    upload fails over to a download anywhere, and `other` starts that download."""
    repository = jobs(cluster.store)

    def fail(state: job.JobState) -> list[Event]:
        return job.fail_stage(
            state,
            "upload",
            state.run,
            state.attempt,
            node_id=lost,
            reason=f"Node {lost} stopped answering during upload",
            backoff=0.0,
            restart_from_download=True,
        )

    def start(state: job.JobState) -> list[Event]:
        return job.start_stage(state, "download", state.run, state.attempt, other)

    await repository.execute(job_id, fail, Metadata(actor="reconciler"))
    await repository.execute(job_id, start, Metadata(actor=f"node:{other}", node_id=other))


async def test_a_file_above_the_multipart_threshold_is_stored_whole_in_parts(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    dense_media: MediaServer,
) -> None:
    throttled_s3.proxy.unthrottle()  # nothing to hold here: full speed
    async with start_cluster() as cluster:
        job_id = await cluster.create(dense_media.url(LARGE), filename="whole")

        done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

        assert done["status"] == "Completed", done
        assert done["file_size"] > _multipart_threshold(cluster)
        assert cluster.objects() == [cluster.in_bucket("whole.mp4")]
        head = cluster.s3.client().head_object(
            Bucket=cluster.bucket, Key=cluster.in_bucket("whole.mp4")
        )
        assert head["ETag"].strip('"').endswith("-2")  # S3's mark of an object made of 2 parts
        assert head["ContentLength"] == done["file_size"]
        assert _pending_uploads(cluster) == []
