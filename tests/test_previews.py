"""`storyboard` and `preview_clip`: a sprite sheet with its WebVTT map, and a short silent clip,
stored beside the output, linked from the job, and deleted with its file.

Through a real cluster with media made by FFmpeg: the storyboard's cues run back to back from 0
to the delivered file's end, each naming a tile inside the sprite (whose size is read from the
uploaded JPEG); the preview is a short MP4 without audio, or an animated WebP. The pure parts:
the storyboard's plan and bounds, its WebVTT text, and where a preview clip falls.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from spool.adapters import muxer, previews
from spool.domain import previews as plans
from spool.domain.job_options import AskedOptions, AskedPreviewClip, InvalidOption, resolve
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import (
    MediaServer,
    make_audio_only,
    make_clip,
    media_duration,
    media_streams,
    video_size,
)

CUE = re.compile(
    r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})\n"
    r"(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)$",
    re.M,
)


def cues(vtt: str) -> list[tuple[float, float, str, tuple[int, int, int, int]]]:
    """Each cue of a storyboard's WebVTT text: start and end (s), the sprite named, its xywh."""
    assert vtt.startswith("WEBVTT\n")
    found = []
    for m in CUE.finditer(vtt):
        h, mi, s, ms, h2, mi2, s2, ms2 = (int(g) for g in m.groups()[:8])
        start = h * 3600 + mi * 60 + s + ms / 1000
        end = h2 * 3600 + mi2 * 60 + s2 + ms2 / 1000
        x, y, w, hh = (int(g) for g in m.groups()[9:])
        found.append((start, end, m.group(9), (x, y, w, hh)))
    assert len(found) == vtt.count("-->")  # every cue is one of these
    return found


def assert_covers(vtt: str, duration: float, sprite: tuple[int, int]) -> None:
    """The cues run back to back from 0 to `duration`, each naming a tile inside `sprite`."""
    found = cues(vtt)
    assert found, vtt
    assert found[0][0] == 0.0
    for (_, end, _, _), (start, _, _, _) in itertools.pairwise(found):
        assert start == end  # no gap, no overlap
    assert found[-1][1] == pytest.approx(duration, abs=0.05)
    width, height = sprite
    for start, end, _, (x, y, w, h) in found:
        assert start < end
        assert w > 0 and h > 0 and x + w <= width and y + h <= height


async def _fetch(url: str, dest: Path) -> Path:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    dest.write_bytes(answer.content)
    return dest


@pytest.fixture(scope="module")
def tone(media_dir: Path) -> str:
    """`tone.m4a` beside the suite's media: audio and no video."""
    path = media_dir / "tone.m4a"
    if not path.exists():
        make_audio_only(path, 2.0)
    return path.name


async def test_a_storyboard_maps_the_whole_clip_onto_tiles_inside_its_sprite(
    cluster: Cluster, media_server: MediaServer, long_clip: str, tmp_path: Path
) -> None:
    job_id = await cluster.create(
        media_server.url(long_clip),
        filename="board",
        storyboard=True,
        storyboard_interval=3,
        preview_clip=True,
    )

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=120)

    assert done["status"] == "Completed", done
    names = ("board.mp4", "board.storyboard.jpg", "board.storyboard.vtt", "board.preview.mp4")
    assert sorted(cluster.objects()) == sorted(cluster.in_bucket(n) for n in names)
    delivered = await _fetch(done["s3_url"], tmp_path / "board.mp4")
    sprite = await _fetch(done["storyboard_url"], tmp_path / "board.storyboard.jpg")
    vtt = (await _fetch(done["storyboard_vtt_url"], tmp_path / "board.vtt")).read_text()
    size = video_size(sprite)
    assert size == (4 * plans.TILE_WIDTH, 90)  # 640x360 in 160x90 tiles, one every 3 of 10 s
    assert_covers(vtt, media_duration(delivered), size)
    assert [c[0] for c in cues(vtt)] == [0.0, 3.0, 6.0, 9.0]
    # Relative to the WebVTT file, beside which it lies.
    assert {unquote(c[2]) for c in cues(vtt)} == {"board.storyboard.jpg"}
    preview = await _fetch(done["preview_url"], tmp_path / "preview.mp4")
    assert preview.read_bytes()[4:8] == b"ftyp"
    assert media_streams(preview) == ["video"]  # silent
    assert media_duration(preview) == pytest.approx(plans.PREVIEW_SECONDS, abs=0.2)
    assert video_size(preview) == (480, 270)


async def test_a_webp_preview_is_stored_linked_and_deleted_with_the_file(
    cluster: Cluster, media_server: MediaServer, tmp_path: Path
) -> None:
    job_id = await cluster.create(
        media_server.url("clip.mp4"),
        filename="moving",
        preview_clip={"start": 1, "duration": 2, "format": "webp"},
    )
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done
    assert sorted(cluster.objects()) == sorted(
        cluster.in_bucket(n) for n in ("moving.mp4", "moving.preview.webp")
    )
    preview = await _fetch(done["preview_url"], tmp_path / "moving.webp")
    head = preview.read_bytes()[:16]
    assert head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"VP8X" in head
    assert done["storyboard_url"] is None and done["storyboard_vtt_url"] is None

    deleted = await cluster.client.delete(f"/jobs/{job_id}/file", headers=cluster.headers())

    assert deleted.status_code == 200, deleted.text
    assert cluster.objects() == []
    assert (await cluster.job(job_id))["preview_url"] is None


async def test_previews_of_a_file_without_video_fail_the_job_saying_why(
    cluster: Cluster, media_server: MediaServer, tone: str
) -> None:
    job_id = await cluster.create(media_server.url(tone), format="mp4", storyboard=True)

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Failed"
    assert done["error"] == "A storyboard or preview clip needs video, and the media has none"
    assert done["mux_retries"] == 1  # no retry: the same media fails the same way
    assert cluster.objects() == []


async def test_a_cancelled_stage_stops_making_previews_and_leaves_none(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 2.0)
    written = await asyncio.to_thread(muxer.probe, clip)
    result = muxer.MuxResult(
        path=str(clip),
        size=clip.stat().st_size,
        duration=written.duration,
        video_codec="h264",
        audio_codec="aac",
        seconds=0.0,
        width=320,
        height=240,
    )
    options = resolve(AskedOptions(storyboard=True, preview_clip=True))
    cancel = asyncio.Event()
    cancel.set()

    with pytest.raises(muxer.MuxCancelled):
        await previews.make(result, options, tmp_path, lambda _: None, cancel)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_storyboard_has_a_tile_every_interval_in_rows_of_ten() -> None:
    board = plans.plan_storyboard(95.0, 5.0, 1920, 1080)

    assert (board.count, board.columns, board.rows) == (19, 10, 2)
    assert (board.tile_width, board.tile_height) == (160, 90)
    assert (board.width, board.height) == (1600, 180)


def test_a_long_video_gets_a_longer_interval_never_more_tiles_than_the_cap() -> None:
    board = plans.plan_storyboard(3 * 3600.0, 1.0, 1280, 720)

    assert board.count <= plans.MAX_TILES
    assert board.interval_ms == 27_000
    assert (board.columns, board.rows) == (10, 40)


def test_a_portrait_video_has_tall_even_tiles() -> None:
    board = plans.plan_storyboard(10.0, 10.0, 1080, 1920)

    assert (board.tile_width, board.tile_height) == (160, 284)
    assert board.count == 1


@pytest.mark.parametrize(
    ("duration", "interval"),
    [(10.0, 3.0), (2.0, 1.0), (0.4, 10.0), (61.237, 2.5), (7200.0, 10.0), (9.9995, 1.0)],
)
def test_the_cues_cover_the_duration_back_to_back_inside_the_sprite(
    duration: float, interval: float
) -> None:
    board = plans.plan_storyboard(duration, interval, 640, 360)

    vtt = plans.storyboard_vtt(board)

    assert len(cues(vtt)) == board.count
    assert_covers(vtt, duration, (board.width, board.height))


def test_the_sprite_is_named_as_stored_and_url_encoded() -> None:
    vtt = plans.storyboard_vtt(plans.plan_storyboard(4.0, 2.0, 320, 240))

    named = plans.with_sprite(vtt, "Ep 1 [1a2b].storyboard.jpg")

    assert {c[2] for c in cues(named)} == {quote("Ep 1 [1a2b].storyboard.jpg")}
    assert [c[3] for c in cues(named)] == [c[3] for c in cues(vtt)]


def test_a_preview_starts_a_tenth_in_and_ends_within_the_video() -> None:
    assert plans.preview_window(None, 3.0, 100.0) == (10.0, 3.0)
    assert plans.preview_window(98.0, 3.0, 100.0) == (97.0, 3.0)
    assert plans.preview_window(None, 3.0, 2.0) == (0.0, 2.0)
    assert plans.preview_window(5.0, 60.0, None) == (5.0, plans.MAX_PREVIEW_SECONDS)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"storyboard_interval": 5}, "storyboard_interval requires storyboard"),
        (
            {"storyboard": True, "storyboard_interval": 0.5},
            "Invalid storyboard_interval (expected seconds from 1 to 600)",
        ),
        (
            {"storyboard": True, "format": "m4a"},
            "storyboard needs video, but the job is audio only",
        ),
        (
            {"preview_clip": True, "audio_only": True},
            "preview_clip needs video, but the job is audio only",
        ),
        (
            {"preview_clip": AskedPreviewClip(duration=11)},
            "Invalid preview_clip.duration (expected seconds above 0, at most 10)",
        ),
        (
            {"preview_clip": AskedPreviewClip(format="gif")},
            "Invalid preview_clip.format (expected mp4 or webp)",
        ),
        (
            {"preview_clip": AskedPreviewClip(start="soon")},
            "Invalid preview_clip.start: expected HH:MM:SS, MM:SS or a number of seconds",
        ),
    ],
)
def test_previews_the_pipeline_cannot_make_are_refused(asked: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        resolve(AskedOptions(**asked))
    assert str(caught.value) == message


async def test_an_unknown_preview_clip_field_is_a_400(
    cluster: Cluster, media_server: MediaServer
) -> None:
    answer = await cluster.client.post(
        "/jobs",
        json={"url": media_server.url("clip.mp4"), "preview_clip": {"lenght": 2}},
        headers=cluster.headers(),
    )
    assert answer.status_code == 400
    assert "lenght" in answer.json()["error"]
