"""`hls`: an adaptive HLS package (a master playlist, one media playlist and its segments per
rendition) stored beside the output, linked from the job, and deleted with its file.

Through a real cluster with media made by FFmpeg: FFmpeg reads the stored master playlist over
HTTP and decodes every segment of every rendition. It reads through moto's plain endpoint
(moto checks no signature): a presigned master playlist's relative URIs would not carry one,
so a real bucket serves a package publicly (or behind a CDN). The pure parts: the option's
rules, the master playlist's text, the segment length's bound and the measured bandwidth.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from spool.adapters import hls as packages
from spool.adapters import muxer
from spool.adapters.ffmpeg import ffmpeg_exe
from spool.domain import hls
from spool.domain.job_options import AskedOptions, Hls, HlsRendition, InvalidOption, resolve
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_clip

STREAM = re.compile(r'^#EXT-X-STREAM-INF:.*RESOLUTION=(\d+)x(\d+),CODECS="([^"]+)"\n(\S+)$', re.M)


@pytest.fixture(scope="module")
def clip_480p(media_dir: Path) -> str:
    """`480p.mp4` beside the suite's media: 8 s at 854x480 with a tone, two 6 s segments."""
    path = media_dir / "480p.mp4"
    if not path.exists():
        make_clip(path, 8.0, width=854, height=480)
    return path.name


def _options(**asked: Any) -> Any:
    return resolve(msgspec.convert(asked, AskedOptions))


async def test_a_two_rendition_package_plays_through_from_its_master_playlist(
    cluster: Cluster, media_server: MediaServer, clip_480p: str
) -> None:
    job_id = await cluster.create(
        media_server.url(clip_480p),
        filename="show",
        hls={"renditions": [{"height": 360}, {"height": 480, "video_bitrate": "1000k"}]},
    )

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=180)

    assert done["status"] == "Completed", done
    prefix = "show.hls"
    expected = {"show.mp4", f"{prefix}/master.m3u8"}
    for rendition in ("480p", "360p"):
        expected |= {f"{prefix}/{rendition}/index.m3u8", f"{prefix}/{rendition}/seg_00000.ts"}
        expected.add(f"{prefix}/{rendition}/seg_00001.ts")
    assert sorted(cluster.objects()) == sorted(cluster.in_bucket(n) for n in expected)
    assert {o["key"] for o in done["objects"]} == {cluster.key_of(n) for n in expected}
    assert done["hls_url"] is not None and "master.m3u8" in done["hls_url"]

    master_key = cluster.in_bucket(f"{prefix}/master.m3u8")
    # Served publicly, as a package is: a presigned link's signature stays on its own URL.
    public = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{cluster.bucket}/*",
            }
        ],
    }
    cluster.s3.client().put_bucket_policy(Bucket=cluster.bucket, Policy=json.dumps(public))
    master_url = f"{cluster.s3.endpoint_url}/{cluster.bucket}/{master_key}"
    text = cluster.s3.client().get_object(Bucket=cluster.bucket, Key=master_key)["Body"].read()
    streams = STREAM.findall(text.decode())
    assert [(w, h, uri) for w, h, _, uri in streams] == [
        ("854", "480", "480p/index.m3u8"),
        ("640", "360", "360p/index.m3u8"),
    ]
    assert all(c == "avc1.64001e,mp4a.40.2" for _, _, c, _ in streams)

    # Every stream of every rendition, through all of its segments.
    decoded = await asyncio.to_thread(
        subprocess.run,
        [ffmpeg_exe(), "-v", "error", "-i", master_url, "-map", "0", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr

    deleted = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())

    assert deleted.status_code == 200, deleted.text
    assert cluster.objects() == []
    assert (await cluster.job(job_id))["hls_url"] is None


async def _written(clip: Path) -> muxer.MuxResult:
    probed = await asyncio.to_thread(muxer.probe, clip)
    return muxer.MuxResult(
        path=str(clip),
        size=clip.stat().st_size,
        duration=probed.duration,
        video_codec="h264",
        audio_codec="aac",
        seconds=0.0,
        width=320,
        height=240,
    )


async def test_a_cancelled_stage_stops_packaging_and_leaves_no_package(tmp_path: Path) -> None:
    written = await _written(make_clip(tmp_path / "clip.mp4", 2.0))
    options = _options(hls={"renditions": [{"height": 360}]})
    cancel = asyncio.Event()
    cancel.set()
    written = msgspec.structs.replace(written, width=640, height=480)

    with pytest.raises(muxer.MuxCancelled):
        await packages.package(written, options, tmp_path, lambda _: None, cancel)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


async def test_renditions_all_taller_than_the_video_fail_saying_so(tmp_path: Path) -> None:
    written = await _written(make_clip(tmp_path / "clip.mp4", 2.0))
    options = _options(hls={"renditions": [{"height": 360}, {"height": 480}]})

    with pytest.raises(muxer.MuxFailed) as caught:
        await packages.package(written, options, tmp_path, lambda _: None, asyncio.Event())

    assert str(caught.value) == (
        "Every hls rendition is taller than the video (240p); none is made larger than its source"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize(
    ("hls_option", "message"),
    [
        ({"renditions": []}, "Invalid hls.renditions (expected 1 to 4 renditions)"),
        ({"renditions": [{"height": 240}]}, "Invalid hls rendition height"),
        ({"renditions": [{"height": 360}, {"height": "360"}]}, "360 is asked twice"),
        ({"renditions": [{"height": 360, "video_bitrate": "fast"}]}, "video_bitrate"),
        ({"renditions": [{"height": 360, "audio_bitrate": "1k"}]}, "audio_bitrate"),
        ({"renditions": [{"height": 360, "fps": 30}]}, "fps"),
        ({"renditions": "360"}, "renditions"),
    ],
)
async def test_a_bad_hls_option_is_a_400_saying_what_is_wrong(
    cluster: Cluster, media_server: MediaServer, hls_option: Any, message: str
) -> None:
    answer = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url("clip.mp4"), "hls": hls_option},
        headers=cluster.headers(),
    )
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_renditions_resolve_tallest_first_with_default_bitrates() -> None:
    options = _options(
        hls={"renditions": [{"height": "360"}, {"height": 720, "audio_bitrate": "96k"}]}
    )
    assert options.hls == Hls(
        renditions=(
            HlsRendition(height=720, video_bitrate="2800k", audio_bitrate="96k"),
            HlsRendition(height=360, video_bitrate="800k", audio_bitrate="128k"),
        )
    )
    # The options a job was created with, given again, give the same options.
    again = msgspec.convert(msgspec.to_builtins(options), AskedOptions)
    assert resolve(again) == options


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (
            {"audio_only": True, "hls": {"renditions": [{"height": 360}]}},
            "hls needs video, but the job is audio only",
        ),
        (
            {"max_resolution": "480", "hls": {"renditions": [{"height": 720}]}},
            "Invalid hls rendition height: 720 is above max_resolution",
        ),
        (
            {"hls": {"renditions": [{"height": h} for h in (360, 480, 720, 1080, 1440)]}},
            "Invalid hls.renditions (expected 1 to 4 renditions)",
        ),
        (
            {"hls": {"renditions": [{"height": 360, "video_bitrate": "99999k"}]}},
            "Invalid hls rendition video_bitrate (expected kbit/s as 100k to 60000k)",
        ),
        (
            {"hls": {"renditions": [{"height": "720p"}]}},
            "Invalid hls rendition height (expected 2160, 1440, 1080, 720, 480 or 360)",
        ),
    ],
)
def test_packages_the_pipeline_cannot_make_are_refused(asked: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        _options(**asked)
    assert str(caught.value) == message


def test_the_master_playlist_lists_each_rendition_tallest_first_by_relative_uri() -> None:
    variants = [
        hls.Variant(
            uri="360p/index.m3u8",
            width=640,
            height=360,
            bandwidth=900_000,
            average_bandwidth=850_000,
            codecs=hls.codecs(360, has_audio=True),
        ),
        hls.Variant(
            uri="720p/index.m3u8",
            width=1280,
            height=720,
            bandwidth=3_000_000,
            average_bandwidth=2_900_000,
            codecs=hls.codecs(720, has_audio=False),
        ),
    ]
    assert hls.master_playlist(variants) == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:6\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=3000000,AVERAGE-BANDWIDTH=2900000,"
        'RESOLUTION=1280x720,CODECS="avc1.64001f"\n'
        "720p/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=850000,"
        'RESOLUTION=640x360,CODECS="avc1.64001e,mp4a.40.2"\n'
        "360p/index.m3u8\n"
    )


def test_bandwidth_is_the_peak_and_average_of_the_segments() -> None:
    playlist = "#EXTM3U\n#EXTINF:6.000000,\nseg_00000.ts\n#EXTINF:2.000000,\nseg_00001.ts\n"
    found = hls.segments(playlist)
    assert found == [(6.0, "seg_00000.ts"), (2.0, "seg_00001.ts")]
    assert hls.bandwidths([(6.0, 600_000), (2.0, 300_000)]) == (1_200_000, 900_000)


def test_a_long_video_gets_longer_segments_never_more_than_the_cap() -> None:
    assert hls.segment_seconds(60.0) == hls.SEGMENT_SECONDS
    assert hls.segment_seconds(None) == hls.SEGMENT_SECONDS
    long = 4 * 3600.0
    assert hls.segment_seconds(long) == 24.0
    assert long / hls.segment_seconds(long) <= hls.MAX_SEGMENTS


def test_a_rendition_keeps_the_sources_shape_with_even_sides_and_never_upscales() -> None:
    assert hls.frame(854, 480, 360) == (640, 360)
    assert hls.frame(1920, 1080, 720) == (1280, 720)
    assert hls.frame(480, 854, 360) == (202, 360)  # portrait
    options = _options(hls={"renditions": [{"height": 360}, {"height": 720}]})
    assert options.hls is not None
    assert [r.height for r in hls.fitting(options.hls.renditions, 480)] == [360]
