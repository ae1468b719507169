"""The media pipeline end to end: a URL goes in, a playable file lands in S3, every step an event.

Real parts only: PostgreSQL, Redis, moto's S3 server on loopback, FFmpeg, and media made by
FFmpeg and served from a loopback HTTP server.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters.muxer import probe
from spool.api.cluster_reads import REFUSED
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import (
    MediaServer,
    make_clip,
    media_duration,
    media_streams,
    video_size,
)


async def _fetch(url: str, dest: Path) -> Path:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 200
    dest.write_bytes(answer.content)
    return dest


@pytest.mark.parametrize(
    ("source", "expect_streams"),
    [("clip.mp4", 2), ("hls/index.m3u8", 2), ("dash/manifest.mpd", 2)],
    ids=["direct-mp4", "hls", "dash-separate-video-and-audio"],
)
async def test_a_source_ends_as_a_playable_file_in_storage(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path, source: str, expect_streams: int
) -> None:
    job_id = await cluster.create(media_server.url(source), filename="result")

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)

    assert done["status"] == "Completed", done
    assert done["step"] == "Finished"
    assert done["s3_url"] and "X-Amz-Signature" in done["s3_url"]
    assert done["storage_key"] == cluster.key_of("result.mp4")
    assert cluster.objects() == [cluster.in_bucket("result.mp4")]
    got = await _fetch(done["s3_url"], tmp_path / "result.mp4")
    assert abs(media_duration(got) - 2.0) < 0.3
    assert len(media_streams(got)) == expect_streams
    assert done["file_size"] == got.stat().st_size
    # The source's own codecs, whether the source said them (HLS, DASH) or only the file did.
    assert (done["native_video_codec"], done["native_audio_codec"]) == ("h264", "aac")
    assert done["actual_quality"] == "240p"  # the clip is 320x240
    for field in (
        "download_duration_ms",
        "mux_duration_ms",
        "upload_duration_ms",
        "total_duration_ms",
        "queue_wait_ms",
    ):
        assert isinstance(done[field], int), field
    types = await cluster.event_types(job_id)
    assert types[0] == "JobCreated"
    assert types.count("JobCompleted") == 1
    assert [t for t in types if t in ("StageStarted", "DownloadCompleted", "MuxCompleted")] == [
        "StageStarted",
        "DownloadCompleted",
        "StageStarted",
        "MuxCompleted",
        "StageStarted",
    ]
    assert types[-1] == "JobCompleted"


async def test_audio_only_extracts_an_m4a(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), audio_only=True, filename="sound")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    assert done["storage_key"] == cluster.key_of("sound.m4a")
    got = await _fetch(done["s3_url"], tmp_path / "sound.m4a")
    assert media_streams(got) == ["audio"]


async def test_max_resolution_delivers_the_shorter_side_asked_for_and_says_so(
    cluster: Cluster, media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    make_clip(media_dir / "vga.mp4", 1.0, width=640, height=480)
    job_id = await cluster.create(media_server.url("vga.mp4"), max_resolution="360")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    assert (done["requested_quality"], done["actual_quality"]) == ("360", "360p")
    got = await _fetch(done["s3_url"], tmp_path / "small.mp4")
    assert video_size(got) == (480, 360)


async def test_a_job_reports_its_codecs_in_the_words_it_was_asked_in(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), video_codec="h265")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    # FFmpeg calls it hevc; the job was asked for h265 and says h265.
    assert (done["video_codec"], done["audio_codec"]) == ("h265", "aac")
    assert (done["native_video_codec"], done["native_audio_codec"]) == ("h264", "aac")
    got = await _fetch(done["s3_url"], tmp_path / "result.mp4")
    assert [s.codec for s in probe(got).streams if s.kind == "video"] == ["hevc"]


async def test_a_missing_source_fails_with_a_clear_reason_after_no_pointless_retries(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("missing.mp4"))
    failed = await cluster.wait(job_id, "Failed", "Completed", seconds=60)
    assert failed["status"] == "Failed"
    assert "404" in failed["error"]
    assert "Traceback" not in failed["error"]
    assert failed["error_type"] == "warning"  # the content is not there: not Spool's failure
    assert failed["download_retries"] == 1  # a 404 is final: no pointless retries
    assert cluster.objects() == []
    types = await cluster.event_types(job_id)
    assert types.count("JobFailed") == 1


async def test_a_host_that_does_not_exist_fails_the_job_at_once_as_a_dns_failure(
    cluster: Cluster,
) -> None:
    # Submission takes a name that does not resolve (DNS may be down a moment); the download
    # finds it does not exist, and no retry can change that.
    job_id = await cluster.create("http://example.invalid/clip.mp4")
    failed = await cluster.wait(job_id, "Failed", "Completed", seconds=30)
    assert failed["error"] == "Could not resolve host example.invalid: no such host"
    assert failed["download_retries"] == 1
    types = await cluster.event_types(job_id)
    assert (types.count("StageFailed"), types.count("JobFailed")) == (1, 1)


@pytest.mark.parametrize("source", ["notes.mp4", "cut-short.mp4"])
async def test_a_source_that_is_not_media_fails_at_once_naming_no_temp_file(
    cluster: Cluster, media_server: MediaServer, media_dir: Path, source: str
) -> None:
    (media_dir / "notes.mp4").write_text("These are notes, not a movie.\n" * 20)
    clip = (media_dir / "clip.mp4").read_bytes()
    (media_dir / "cut-short.mp4").write_bytes(clip[: len(clip) // 2])

    job_id = await cluster.create(media_server.url(source))
    failed = await cluster.wait(job_id, "Failed", "Completed", seconds=60)

    assert failed["status"] == "Failed"
    error = failed["error"]
    assert error.startswith("The source is not playable media: "), error
    # Neither the node's work dir nor any file name (`media.mp4.mp4`, the source's own).
    assert str(cluster.settings.data_dir) not in error and "/" not in error, error
    assert ".mp4" not in error, error
    assert (failed["download_retries"], failed["mux_retries"]) == (0, 1)
    assert cluster.objects() == []


async def test_a_loopback_url_is_refused_at_submission_unless_allowlisted(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(url_allowlist=()) as cluster:
        answer = await cluster.client.post(
            "/jobs", json={"url": media_server.url("clip.mp4")}, headers=cluster.headers()
        )
    assert answer.status_code == 400
    assert answer.json() == {"error": "URL refused: 127.0.0.1 is a loopback address"}


async def test_a_redirect_into_a_refused_address_is_refused_at_submission(
    cluster: Cluster, media_server: MediaServer
) -> None:
    # 127.0.0.2 serves the same file, but only 127.0.0.1/32 is allowlisted. The URL is not a
    # media file by its name, so submission reads it (to see if it is a feed) through the guard.
    # (The download stage's own check of every hop is covered in test_downloader.py.)
    url = media_server.redirect_url(media_server.alt_url("clip.mp4"))
    answer = await cluster.client.post("/jobs", json={"url": url}, headers=cluster.headers())
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("URL refused: 127.0.0.2 is a loopback address")
    assert "redirected from" in answer.json()["error"]


async def test_cancel_during_download_stops_it_and_leaves_no_object(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.slow_url("clip.mp4", chunk=4096, interval=0.1))
    await cluster.wait(job_id, until=lambda j: j["step"] == "Downloading", seconds=30)

    answer = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    assert answer.status_code == 200
    assert answer.json() == {"job_id": job_id, "status": "Cancelled"}

    assert cluster.node is not None
    node = cluster.node
    await cluster.wait(job_id, until=lambda j: not node.running, seconds=15)
    job = await cluster.job(job_id)
    assert job["status"] == "Cancelled"
    assert cluster.objects() == []
    assert not (cluster.settings.data_dir / "work" / job_id / "1").exists()
    again = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    assert again.status_code == 400
    assert "already cancelled" in again.json()["error"]


async def test_a_cancelled_job_can_be_retried_to_completion(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.slow_url("clip.mp4", chunk=8192, interval=0.05))
    await cluster.wait(job_id, until=lambda j: j["step"] == "Downloading", seconds=30)
    await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    await cluster.wait(job_id, "Cancelled")

    retried = await cluster.client.post(f"/jobs/{job_id}/retry", headers=cluster.headers())
    assert retried.status_code == 200
    assert retried.json()["status"] == "Pending"
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
    assert done["status"] == "Completed", done
    types = await cluster.event_types(job_id)
    assert types.count("JobCompleted") == 1
    assert "JobRetried" in types


async def test_after_a_retry_the_timings_describe_the_new_run_and_the_old_one_stays_in_history(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    source = media_dir / "appears-later.mp4"
    job_id = await cluster.create(media_server.url(source.name))
    failed = await cluster.wait(job_id, "Failed", "Completed", seconds=30)
    assert failed["status"] == "Failed"  # a 404: the file is not there yet

    source.write_bytes((media_dir / "clip.mp4").read_bytes())
    answer = await cluster.client.post(f"/jobs/{job_id}/retry", headers=cluster.headers())
    assert answer.status_code == 200, answer.text
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done

    events = (
        await cluster.client.get(
            f"/jobs/{job_id}/events", params={"limit": 1000}, headers=cluster.headers()
        )
    ).json()["events"]

    def at_ms(event: dict[str, Any]) -> int:
        return int(datetime.fromisoformat(event["recorded_at"]).timestamp() * 1000)

    retried = next(e for e in events if e["type"] == "JobRetried")
    second_run = [e for e in events if e["data"].get("run") == 2]
    first_start = next(e for e in second_run if e["type"] == "StageStarted")
    downloaded = next(e for e in second_run if e["type"] == "DownloadCompleted")
    # The first run is still in the history: its start and its failure.
    assert [e["type"] for e in events if e["data"].get("run") == 1][:1] == ["StageStarted"]
    assert any(e["type"] == "JobFailed" and e["data"]["run"] == 1 for e in events)
    # ...but every timing is the second run's, counted from the retry, not from the creation.
    assert done["total_duration_ms"] == done["finished_at"] - at_ms(retried)
    assert done["queue_wait_ms"] == at_ms(first_start) - at_ms(retried)
    assert done["download_duration_ms"] == int(downloaded["data"]["seconds"] * 1000)
    assert done["total_duration_ms"] < done["finished_at"] - done["created_at"]


async def test_retry_is_refused_for_a_job_that_has_not_failed(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"))
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed"
    answer = await cluster.client.post(f"/jobs/{job_id}/retry", headers=cluster.headers())
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "Only failed or cancelled jobs can be retried (this job is Completed)"
    }
    cancel = await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())
    assert cancel.status_code == 400
    assert "already completed" in cancel.json()["error"]


async def test_deleting_the_file_removes_the_object_and_is_recorded(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"))
    await cluster.wait(job_id, "Completed", seconds=60)
    assert len(cluster.objects()) == 1

    answer = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())

    assert answer.status_code == 200
    assert cluster.objects() == []
    job = await cluster.job(job_id)
    assert job["file_deleted"] is True
    assert job["s3_url"] is None
    assert (await cluster.event_types(job_id))[-1] == "FileDeleted"
    again = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())
    assert again.status_code == 400


async def test_cluster_stats_count_the_stage_a_job_is_in(
    cluster: Cluster, media_server: MediaServer
) -> None:
    admin = cluster.headers(cluster.admin_key)
    idle = await cluster.client.get("/dashboard/cluster", headers=admin)
    assert idle.json() == {"total_downloading": 0, "total_muxing": 0, "total_uploading": 0}

    job_id = await cluster.create(media_server.slow_url("clip.mp4", chunk=4096, interval=0.1))
    await cluster.wait(job_id, until=lambda j: j["step"] == "Downloading", seconds=30)
    seen = 0
    for _ in range(50):
        stats = (await cluster.client.get("/dashboard/cluster", headers=admin)).json()
        if stats["total_downloading"] == 1:
            seen += 1
            break
        await asyncio.sleep(0.1)
    assert seen, "the dashboard never counted the running download"
    await cluster.client.delete(f"/jobs/{job_id}", headers=cluster.headers())

    user = await cluster.client.get("/dashboard/cluster", headers=cluster.headers())
    assert user.status_code == 403
    assert user.json() == {"error": REFUSED}
    anonymous = await cluster.client.get("/dashboard/cluster")
    assert anonymous.json() == {"error": "Missing x-api-key header"}


async def test_subtitles_and_thumbnail_land_beside_the_media_with_their_own_urls(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    job_id = await cluster.create(
        media_server.url("watch.html"),
        filename="page",
        download_subtitles=True,
        download_thumbnail=True,
    )
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    assert done["title"].startswith("A test clip")
    assert sorted(cluster.objects()) == [
        cluster.in_bucket(n) for n in ("page.en.vtt", "page.jpg", "page.mp4")
    ]
    subtitle = await _fetch(done["subtitle_url"], tmp_path / "page.vtt")
    assert subtitle.read_text().startswith("WEBVTT")
    thumbnail = await _fetch(done["thumbnail_url"], tmp_path / "page.jpg")
    assert thumbnail.read_bytes()[:2] == b"\xff\xd8"  # a JPEG

    deleted = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())
    assert deleted.status_code == 200
    assert cluster.objects() == []
