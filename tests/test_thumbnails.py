"""`download_thumbnail` on a source without a thumbnail of its own: a frame of its video stands
in, stored and linked as a source's thumbnail is."""

from __future__ import annotations

from pathlib import Path

import httpx

from spool.adapters.downloader import DownloadedFile
from spool.adapters.thumbnails import frame_time, with_thumbnail
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_audio_only, make_clip, video_size


async def test_a_direct_file_gets_a_thumbnail_made_from_its_video(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    job_id = await cluster.create(
        media_server.url("clip.mp4"), filename="direct", download_thumbnail=True
    )

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert sorted(cluster.objects()) == [cluster.in_bucket(n) for n in ("direct.jpg", "direct.mp4")]
    async with httpx.AsyncClient() as client:
        answer = await client.get(done["thumbnail_url"])
    assert answer.status_code == 200
    thumbnail = tmp_path / "direct.jpg"
    thumbnail.write_bytes(answer.content)
    assert answer.content[:2] == b"\xff\xd8"  # a JPEG
    assert video_size(thumbnail) == (320, 240)


async def test_without_video_there_is_no_thumbnail_and_no_failure(tmp_path: Path) -> None:
    audio = make_audio_only(tmp_path / "tone.m4a", 1.0)
    files = [DownloadedFile(str(audio), "audio", "a", audio.stat().st_size)]

    assert await with_thumbnail(files, tmp_path) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.m4a"]


async def test_a_clip_shorter_than_the_frame_time_still_gets_a_frame(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "short.webm", 0.4, video_codec="libvpx-vp9", audio_codec="libopus")
    files = [DownloadedFile(str(clip), "av", "webm", clip.stat().st_size)]

    [_, made] = await with_thumbnail(files, tmp_path)

    assert made.kind == "thumbnail"
    assert video_size(Path(made.path)) == (320, 240)


def test_the_frame_is_a_tenth_of_the_way_in_else_at_one_second() -> None:
    assert frame_time(120.0) == 12.0
    assert frame_time(None) == 1.0
