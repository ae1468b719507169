"""The live HLS recorder against real FFmpeg writing a live stream, served over loopback."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spool.adapters.downloader import DownloadCancelled, DownloadFailed, DownloadProgress
from spool.adapters.ffmpeg import ffmpeg_exe
from spool.adapters.live_hls import _GuardedBackend, _parse, is_live_hls, record
from spool.adapters.ssrf import UrlGuard, UrlRefused
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_hls, media_duration

ALLOW = UrlGuard(["127.0.0.1/32"])


def _start_live_ffmpeg(directory: Path, *, seconds: float | None = None) -> subprocess.Popen[bytes]:
    """FFmpeg writing a 1 s-segment HLS stream in real time into `directory/live.m3u8`.

    With `seconds`, the stream ends after that long and keeps every segment, so FFmpeg writes
    #EXT-X-ENDLIST; without, it runs (sliding window of 5) until killed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    limit = ["-t", f"{seconds}"] if seconds is not None else []
    flags = [] if seconds is not None else ["-hls_flags", "delete_segments"]
    args = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=15",
        "-f",
        "lavfi",
        "-i",
        "sine",
        *limit,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "15",
        "-c:a",
        "aac",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_list_size",
        "0" if seconds is not None else "5",
        *flags,
        str(directory / "live.m3u8"),
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=5)


def _wait_for_segments(playlist: Path, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if playlist.is_file() and playlist.read_text().count("#EXTINF") >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"FFmpeg did not write {count} segments to {playlist} in time")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    """A server whose `live/live.m3u8` is a running live stream (at least 3 segments in).

    `live/master.m3u8` is a hand-written master playlist: a low-bandwidth variant that does not
    exist and the live stream as the high-bandwidth one.
    """
    root = tmp_path_factory.mktemp("live")
    proc = _start_live_ffmpeg(root / "live")
    (root / "live" / "master.m3u8").write_text(
        "#EXTM3U\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=100000\nmissing.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=900000\nlive.m3u8\n"
    )
    server = MediaServer(root).start()
    try:
        _wait_for_segments(root / "live" / "live.m3u8", 3)
        yield server
    finally:
        _stop(proc)
        server.stop()


def test_parse_reads_sequence_numbers_and_end() -> None:
    playlist = _parse(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
        "#EXTINF:2.0,\na.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.5,\nhttp://x.test/b.ts\n"
        "#EXT-X-ENDLIST\n",
        "http://h.test/dir/p.m3u8",
    )
    assert playlist is not None
    assert [(s.sequence, s.duration, s.uri) for s in playlist.segments] == [
        (7, 2.0, "http://h.test/dir/a.ts"),
        (8, 1.5, "http://x.test/b.ts"),
    ]
    assert playlist.target_duration == 2.0 and playlist.ended
    assert _parse("<html></html>", "http://h.test/") is None


def test_is_live_hls(live: MediaServer, tmp_path: Path) -> None:
    assert is_live_hls(live.url("live/live.m3u8"), guard=ALLOW)
    assert is_live_hls(live.url("live/master.m3u8"), guard=ALLOW)
    vod = tmp_path / "vod"
    make_hls(vod, 1.0)
    vod_server = MediaServer(tmp_path).start()
    try:
        assert not is_live_hls(vod_server.url("vod/index.m3u8"), guard=ALLOW)
        assert not is_live_hls(vod_server.url("vod/seg_000.ts"), guard=ALLOW)
        assert not is_live_hls(vod_server.url("missing.m3u8"), guard=ALLOW)
    finally:
        vod_server.stop()


def test_records_up_to_max_duration(live: MediaServer, tmp_path: Path) -> None:
    reports: list[tuple[float, DownloadProgress]] = []
    result = record(
        live.url("live/live.m3u8"),
        tmp_path,
        guard=ALLOW,
        max_duration=4,
        on_progress=lambda p: reports.append((time.monotonic(), p)),
    )
    [file] = result.files
    assert file.kind == "av" and file.path.endswith(".ts")
    assert file.size == result.total_bytes == Path(file.path).stat().st_size > 0
    assert result.info.title == "live"
    assert result.info.duration is not None and 4 <= result.info.duration < 5.5
    assert abs(media_duration(Path(file.path)) - 4) <= 1.5
    assert reports and reports[-1][1].percent == 100.0
    # At most one report a second, the closing one aside.
    times = [t for t, _ in reports[:-1]]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))


def test_master_playlist_records_highest_bandwidth_variant(
    live: MediaServer, tmp_path: Path
) -> None:
    result = record(live.url("live/master.m3u8"), tmp_path, guard=ALLOW, max_duration=2)
    assert result.info.duration is not None and result.info.duration >= 2
    assert result.files[0].size > 0


def test_stops_by_itself_when_the_stream_ends(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    proc = _start_live_ffmpeg(root / "short", seconds=3)
    server = MediaServer(root).start()
    try:
        started = time.monotonic()
        # The playlist does not exist for the first second: wait_for_video rides that out.
        result = record(
            server.url("short/live.m3u8"),
            tmp_path / "out",
            guard=ALLOW,
            max_duration=None,
            live_from_start=True,
            wait_for_video=10,
        )
        assert time.monotonic() - started < 12
        assert proc.wait(timeout=5) == 0
        assert result.info.duration is not None and 2 <= result.info.duration <= 4
        assert abs(media_duration(Path(result.files[0].path)) - 3) <= 1.5
    finally:
        _stop(proc)
        server.stop()


def test_cancel_leaves_no_file(live: MediaServer, tmp_path: Path) -> None:
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            record(
                live.url("live/live.m3u8"),
                tmp_path,
                guard=ALLOW,
                max_duration=None,
                cancel=cancel,
            )
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(tmp_path.iterdir()), "recording never wrote anything"
    cancel.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], DownloadCancelled)
    assert list(tmp_path.iterdir()) == []


def test_missing_playlist_fails_after_waiting(live: MediaServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as info:
        record(
            live.url("live/not-yet.m3u8"),
            tmp_path,
            guard=ALLOW,
            max_duration=2,
            wait_for_video=1,
        )
    assert 1 <= time.monotonic() - started < 5
    assert str(info.value).startswith("Source answered HTTP 404")
    assert info.value.kind == "warning" and not info.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_refused_playlist_address(live: MediaServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match="URL refused") as info:
        record(live.url("live/live.m3u8"), tmp_path, guard=UrlGuard(), max_duration=2)
    assert not info.value.retryable
    with pytest.raises(DownloadFailed, match="URL refused"):
        is_live_hls(live.url("live/live.m3u8"), guard=UrlGuard())
    assert list(tmp_path.iterdir()) == []


def test_refused_redirect_hop(live: MediaServer, tmp_path: Path) -> None:
    if live.alt_base_url is None:
        raise AssertionError("cannot listen on 127.0.0.2 (Linux loopback is /8)")
    url = live.redirect_url(live.alt_url("live/live.m3u8"))
    with pytest.raises(DownloadFailed, match=r"URL refused: 127\.0\.0\.2"):
        record(url, tmp_path, guard=ALLOW, max_duration=2)
    with pytest.raises(DownloadFailed, match="URL refused"):
        is_live_hls(url, guard=ALLOW)


def test_refused_segment_host(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    root.mkdir()
    server = MediaServer(root).start()
    try:
        if server.alt_base_url is None:
            raise AssertionError("cannot listen on 127.0.0.2 (Linux loopback is /8)")
        (root / "seg.ts").write_bytes(b"\x47" * 188)
        (root / "evil.m3u8").write_text(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:1.0,\n{server.alt_url('seg.ts')}\n"
        )
        out = tmp_path / "out"
        with pytest.raises(DownloadFailed, match=r"URL refused: 127\.0\.0\.2") as info:
            record(server.url("evil.m3u8"), out, guard=ALLOW, max_duration=2)
        assert not info.value.retryable
        assert list(out.iterdir()) == []
    finally:
        server.stop()


def test_connect_time_check_refuses_the_address_itself() -> None:
    # What stops a DNS answer that changes after `check_url` (rebinding): the address the
    # socket would connect to is checked too.
    with pytest.raises(UrlRefused):
        _GuardedBackend(ALLOW).connect_tcp("127.0.0.2", 9)
    with pytest.raises(UrlRefused):
        _GuardedBackend(UrlGuard()).connect_tcp("localhost", 9)


async def test_a_live_stream_job_records_up_to_its_cap_and_lands_in_storage(
    cluster: Cluster, live: MediaServer, tmp_path: Path
) -> None:
    # No live_recording flag: a live HLS playlist is detected as live by itself.
    job_id = await cluster.create(live.url("live/live.m3u8"), max_duration=4, filename="recording")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)
    assert done["status"] == "Completed", done["error"]
    assert cluster.objects() == [cluster.in_bucket("recording.mp4")]
    async with httpx.AsyncClient() as client:
        body = (await client.get(done["s3_url"])).content
    (tmp_path / "recording.mp4").write_bytes(body)
    assert abs(media_duration(tmp_path / "recording.mp4") - 4.0) < 1.6
