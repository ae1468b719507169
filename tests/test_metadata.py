"""`POST /metadata`: real yt-dlp against the loopback media server, through the real API."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spool.adapters import remote_probe
from spool.adapters.ffmpeg import ffmpeg_exe
from spool.api.app import create_app
from spool.api.metadata import MetadataController
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer, make_audio_only, make_clip


def api_client(c: Cluster) -> httpx.AsyncClient:
    """The cluster's API with the metadata surface on it (registered here until app.py does)."""
    app = create_app(pool=c.pool, store=c.store, settings=c.settings, storage=c.storage)
    if not any(route.path == "/metadata" for route in app.routes):
        app.register(MetadataController)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://spool.test", timeout=30
    )


@pytest.fixture
async def api(start_cluster: StartCluster) -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    async with start_cluster(with_node=False) as c, api_client(c) as client:
        yield c, client


async def _post(api: tuple[Cluster, httpx.AsyncClient], url: str) -> httpx.Response:
    c, client = api
    return await client.post("/metadata", json={"url": url}, headers=c.headers())


async def test_a_direct_file_lists_its_one_format(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.url("clip.mp4"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["title"] == "clip"
    assert body["webpage_url"] == media_server.url("clip.mp4")
    assert body["is_playlist"] is False and body["entries"] is None
    assert [(f["format_id"], f["ext"]) for f in body["formats"]] == [("mp4", "mp4")]


async def test_a_page_gives_title_description_subtitles_and_thumbnail(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.url("watch.html"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["title"].startswith("A test clip")
    assert body["description"] == "Test pattern and tone"
    assert body["subtitles"] == {"en": [{"url": media_server.url("subs.vtt"), "ext": "vtt"}]}
    assert [t["url"] for t in body["thumbnails"]] == [media_server.url("poster.jpg")]
    assert [f["ext"] for f in body["formats"]] == ["mp4"]


async def test_a_dash_manifest_lists_separate_video_and_audio(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.url("dash/manifest.mpd"))

    assert answer.status_code == 200, answer.text
    formats: list[dict[str, Any]] = answer.json()["formats"]
    video = [f for f in formats if f["vcodec"] not in (None, "none")]
    audio = [f for f in formats if f["acodec"] not in (None, "none")]
    assert len(video) == 1 and len(audio) == 1
    assert video[0]["acodec"] == "none" and audio[0]["vcodec"] == "none"
    assert (video[0]["width"], video[0]["height"]) == (320, 240)
    assert video[0]["resolution"] == "320x240"
    assert video[0]["tbr"] and audio[0]["tbr"]


async def test_an_hls_playlist_has_its_duration(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.url("hls/index.m3u8"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["duration"] == pytest.approx(2.0, abs=0.3)
    assert body["formats"][0]["protocol"] == "m3u8_native"


async def test_a_feed_answers_as_a_playlist_with_its_entry_count(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer, media_dir: Path
) -> None:
    items = "".join(
        f"<item><title>Episode {n}</title><guid>ep{n}</guid>"
        f'<enclosure url="{media_server.url("clip.mp4")}?ep={n}" type="video/mp4" length="1"/>'
        "</item>"
        for n in (1, 2)
    )
    (media_dir / "metadata-feed.xml").write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>A show</title>'
        f"<link>{media_server.url('')}</link><description>Two episodes</description>"
        f"{items}</channel></rss>"
    )

    answer = await _post(api, media_server.url("metadata-feed.xml"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["is_playlist"] is True
    assert body["entries"] == 2
    assert body["title"] == "A show"
    assert body["formats"] == []


async def test_a_missing_file_answers_400_with_the_reason(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.url("missing.mp4"))

    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"Source answered HTTP 404 Not Found for {media_server.url('missing.mp4')}"
    }


async def test_an_unreachable_source_answers_400_with_the_reason(
    api: tuple[Cluster, httpx.AsyncClient],
) -> None:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    answer = await _post(api, f"http://127.0.0.1:{port}/clip.mp4")

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error.startswith(f"Could not fetch from the source at http://127.0.0.1:{port}/clip.mp4")
    assert "refused" in error.lower()


@pytest.mark.parametrize("url", ["", "ftp://example.com/a.mp4", "not a url"])
async def test_a_bad_url_answers_400(api: tuple[Cluster, httpx.AsyncClient], url: str) -> None:
    answer = await _post(api, url)

    assert answer.status_code == 400
    assert answer.json()["error"]


async def test_a_body_without_url_answers_400(api: tuple[Cluster, httpx.AsyncClient]) -> None:
    c, client = api
    answer = await client.post("/metadata", json={"link": "x"}, headers=c.headers())

    assert answer.status_code == 400
    assert "error" in answer.json()


async def test_a_call_without_a_key_answers_401(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    _, client = api
    answer = await client.post("/metadata", json={"url": media_server.url("clip.mp4")})

    assert answer.status_code == 401
    assert answer.json() == {"error": "Missing x-api-key header"}


async def test_loopback_is_refused_without_an_allowlist(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, url_allowlist=()) as c, api_client(c) as client:
        answer = await client.post(
            "/metadata", json={"url": media_server.url("clip.mp4")}, headers=c.headers()
        )

    assert answer.status_code == 400
    assert answer.json() == {"error": "URL refused: 127.0.0.1 is a loopback address"}


async def test_a_redirect_to_a_guarded_address_is_refused(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer
) -> None:
    answer = await _post(api, media_server.redirect_url(media_server.alt_url("clip.mp4")))

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("URL refused: 127.0.0.2 is a loopback address")


async def test_a_slow_source_answers_504_after_the_limit(
    api: tuple[Cluster, httpx.AsyncClient],
    media_server: MediaServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api[0].settings, "probe_timeout", 0.5)
    # The page trickles in 16 bytes a second: far longer than the limit.
    slow = media_server.slow_url("watch.html", chunk=16, interval=1.0)

    answer = await _post(api, slow)

    assert answer.status_code == 504
    assert answer.json() == {"error": "Source did not answer within 0.5 s"}


# --- direct media files: what FFmpeg reads of them, through the guarded connection -------------


def _big_mp4(path: Path, seconds: float = 12.0) -> Path:
    """A lossless 720p clip of ~20 MB, its index (moov) at the end, as FFmpeg writes by default."""
    if not path.exists():
        subprocess.run(
            [
                ffmpeg_exe(),
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                *("-f", "lavfi", "-t", f"{seconds}", "-i", "testsrc2=size=1280x720:rate=25"),
                *("-f", "lavfi", "-t", f"{seconds}", "-i", "sine=frequency=440"),
                *("-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-c:a", "aac"),
                "-shortest",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
    return path


@pytest.fixture(scope="module")
def direct_files(media_dir: Path) -> Path:
    """Direct files beside the session's media: webm, mkv (served without a media type), m4a,
    a big mp4, and an HLS playlist posing as an mp4."""
    make_clip(media_dir / "probe.webm", 2.0, video_codec="libvpx-vp9", audio_codec="libopus")
    make_clip(media_dir / "probe.mkv", 2.0)
    make_audio_only(media_dir / "probe.m4a", 2.0)
    _big_mp4(media_dir / "probe-big.mp4")
    return media_dir


async def test_a_direct_mp4_reports_duration_codecs_resolution_and_bitrate(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer, media_dir: Path
) -> None:
    data = (media_dir / "clip.mp4").read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")  # its index is at the end of the file

    answer = await _post(api, media_server.url("clip.mp4"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["duration"] == pytest.approx(2.0, abs=0.1)
    [f] = body["formats"]
    assert (f["vcodec"], f["acodec"]) == ("h264", "aac")
    assert (f["width"], f["height"], f["resolution"]) == (320, 240, "320x240")
    assert f["fps"] == 25.0
    # The whole file's bitrate: its size over its length, in kbit/s.
    assert f["tbr"] == pytest.approx(len(data) * 8 / 1000 / 2.0, rel=0.1)


@pytest.mark.parametrize(
    ("name", "codecs", "size"),
    [
        ("probe.webm", ("vp9", "opus"), (320, 240)),
        # Served as application/octet-stream: yt-dlp cannot tell it is media, FFmpeg can.
        ("probe.mkv", ("h264", "aac"), (320, 240)),
        ("probe.m4a", ("none", "aac"), (None, None)),
    ],
)
async def test_other_direct_files_report_their_codecs_and_duration(
    api: tuple[Cluster, httpx.AsyncClient],
    media_server: MediaServer,
    direct_files: Path,
    name: str,
    codecs: tuple[str, str],
    size: tuple[int | None, int | None],
) -> None:
    answer = await _post(api, media_server.url(name))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["duration"] == pytest.approx(2.0, abs=0.1)
    [f] = body["formats"]
    assert (f["vcodec"], f["acodec"]) == codecs
    assert (f["width"], f["height"]) == size
    assert f["tbr"] and f["tbr"] > 0


async def test_a_large_direct_file_is_probed_from_a_small_part_of_its_bytes(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer, direct_files: Path
) -> None:
    size = (direct_files / "probe-big.mp4").stat().st_size

    answer = await _post(api, media_server.url("probe-big.mp4"))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["duration"] == pytest.approx(12.0, abs=0.1)
    [f] = body["formats"]
    assert (f["vcodec"], f["width"], f["height"]) == ("h264", 1280, 720)
    # What FFmpeg's requests took (yt-dlp's own look at the URL is a whole-file GET it leaves).
    read = media_server.sent_bytes.of("/probe-big.mp4", ranges_only=True)
    assert read < min(size / 3, remote_probe.MAX_BYTES), (read, size)


async def test_a_manifest_posing_as_a_media_file_never_sends_ffmpeg_to_its_urls(
    api: tuple[Cluster, httpx.AsyncClient], media_server: MediaServer, media_dir: Path
) -> None:
    # A DASH manifest served as video/mp4, its segments on 127.0.0.2, outside the allowlist:
    # FFmpeg, were it to open the manifest, would fetch them itself, past the URL guard.
    segments = media_dir / "posing-dash"
    shutil.copytree(media_dir / "dash", segments, dirs_exist_ok=True)
    manifest = (segments / "manifest.mpd").read_text()
    base = f"<BaseURL>{media_server.alt_url('posing-dash/')}</BaseURL>"
    (media_dir / "posing.mp4").write_text(manifest.replace("<Period", f"{base}<Period", 1))

    answer = await _post(api, media_server.url("posing.mp4"))

    assert answer.status_code == 200, answer.text
    [f] = answer.json()["formats"]
    assert (f["vcodec"], f["acodec"]) == (None, None)  # not known, and said so by null
    fetched = {
        p.name: media_server.sent_bytes.of(f"/posing-dash/{p.name}") for p in segments.iterdir()
    }
    assert not any(fetched.values()), fetched


async def test_a_direct_file_that_trickles_in_answers_what_is_known_within_the_limit(
    api: tuple[Cluster, httpx.AsyncClient],
    media_server: MediaServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api[0].settings, "probe_timeout", 2.0)
    # Headers at once (yt-dlp sees a video/mp4), then 16 bytes a second: FFmpeg never gets
    # far enough to name a codec.
    slow = media_server.slow_url("clip.mp4", chunk=16, interval=1.0)
    started = time.monotonic()

    answer = await _post(api, slow)

    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 2.0
    [f] = answer.json()["formats"]
    assert (f["ext"], f["vcodec"], f["acodec"], f["width"]) == ("mp4", None, None, None)
    deadline = time.monotonic() + 5
    while media_server.slow_answers.open:  # every connection to the source is closed
        assert time.monotonic() < deadline, "a connection to the source was left open"
        await asyncio.sleep(0.05)
