"""The storage goes away in the middle of a multipart upload, and comes back.

Real parts only: the whole cluster in-process, moto's S3 server behind the throttling TCP proxy
(`tests.fixtures.throttle`), which paces the upload so that it is seen mid-part and then cuts
every connection (and refuses new ones) for a while, as a storage outage or a network partition
between a node and its storage would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.fixtures.cluster import StartCluster
from tests.fixtures.media import MediaServer, media_duration
from tests.fixtures.throttle import ThrottledS3, throttled_s3  # noqa: F401 - the fixture
from tests.test_upload_cancel import (  # noqa: F401 - the fixtures
    LARGE,
    _eventually,
    _pending_uploads,
    dense_media,
    s3_storage_url,
)


async def test_a_storage_outage_mid_upload_is_retried_until_it_is_back_and_stored_once(
    start_cluster: StartCluster,
    throttled_s3: ThrottledS3,  # noqa: F811
    dense_media: MediaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    proxy = throttled_s3.proxy
    proxy.set_rate(2 * 1024 * 1024)  # ~10 MiB in parts of 8: seconds, so the cut lands mid-part
    # Backoff 0.5, 1, 2, 4 s: an outage of a few seconds is within the stage's attempts.
    async with start_cluster(stall_timeout=60, stage_attempts=5, retry_backoff=0.5) as cluster:
        job_id = await cluster.create(dense_media.url(LARGE), filename="survivor")
        await cluster.wait(job_id, until=lambda j: j["step"] == "Uploading", seconds=30)
        await _eventually("the first part is on the wire", lambda: proxy.upstream_bytes > 1 << 20)

        proxy.cut()
        failed = await cluster.wait(job_id, until=lambda j: j["upload_retries"] >= 1, seconds=30)
        assert failed["status"] == "Processing", failed  # a failed attempt, not a failed job
        await asyncio.sleep(1.0)
        proxy.mend()
        proxy.unthrottle()

        done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
        assert done["status"] == "Completed", done
        assert cluster.objects() == [cluster.in_bucket("survivor.mp4")]
        async with httpx.AsyncClient() as client:
            got = await client.get(done["s3_url"])
        assert got.status_code == 200
        (tmp_path / "got.mp4").write_bytes(got.content)
        assert len(got.content) == done["file_size"]
        assert abs(media_duration(tmp_path / "got.mp4") - 2.0) < 0.3
        # The attempt the outage broke could not abort its multipart upload while the storage
        # was gone; nothing of it may linger once the job is done (parts cost storage).
        assert _pending_uploads(cluster) == []
        # And the log says so: the broken attempt named what it left, the last one aborted it.
        answer = await cluster.client.get(
            f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
        )
        events = answer.json()["events"]
        left = [
            u
            for e in events
            if e["type"] == "StageFailed"
            for u in e["data"].get("unfinished_uploads", [])
        ]
        [completed] = [e for e in events if e["type"] == "JobCompleted"]
        assert left and sorted(completed["data"]["aborted_uploads"]) == sorted(left)
        assert all(u.endswith(" " + cluster.in_bucket("survivor.mp4")) for u in left)
