"""The yt-dlp downloader against real FFmpeg media on a loopback HTTP server."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yt_dlp import YoutubeDL

from spool.adapters.downloader import (
    DownloadCancelled,
    DownloadFailed,
    DownloadProgress,
    DownloadResult,
    _GuardedYoutubeDL,
    _QuietLog,
    download,
)
from spool.adapters.ssrf import UrlGuard
from tests.fixtures.media import (
    MediaServer,
    make_dash,
    media_duration,
    media_streams,
    video_size,
)

LOOPBACK = UrlGuard(["127.0.0.1/32"])


def _assert_about(seconds: float, expected: float = 2.0) -> None:
    assert abs(seconds - expected) < 0.3, seconds


def _media(result: DownloadResult) -> dict[str, Path]:
    return {f.kind: Path(f.path) for f in result.files}


@pytest.fixture(scope="module")
def renditions(media_dir: Path) -> dict[str, str]:
    """DASH streams offering several video sizes, landscape and vertical."""
    # One aspect ratio per stream: FFmpeg's DASH muxer wants it so within an adaptation set.
    make_dash(media_dir / "landscape", 2.0, video_sizes=((480, 360), (640, 480)))
    make_dash(media_dir / "vertical", 2.0, video_sizes=((360, 480), (480, 640)))
    return {"landscape": "landscape/manifest.mpd", "vertical": "vertical/manifest.mpd"}


def test_media_server_serves_ranges_and_404s(media_server: MediaServer, media_dir: Path) -> None:
    whole = (media_dir / "clip.mp4").read_bytes()
    ranged = urllib.request.Request(media_server.url("clip.mp4"), headers={"Range": "bytes=10-109"})
    with urllib.request.urlopen(ranged, timeout=5) as answer:
        assert answer.status == 206
        assert answer.headers["Content-Range"] == f"bytes 10-109/{len(whole)}"
        assert answer.read() == whole[10:110]
    tail = urllib.request.Request(media_server.url("clip.mp4"), headers={"Range": "bytes=-5"})
    with urllib.request.urlopen(tail, timeout=5) as answer:
        assert answer.read() == whole[-5:]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(media_server.url("missing.mp4"), timeout=5)
    assert missing.value.code == 404


def test_direct_file_is_one_av_file(media_server: MediaServer, tmp_path: Path) -> None:
    result = download(media_server.url("clip.mp4"), tmp_path, guard=LOOPBACK)
    assert [f.kind for f in result.files] == ["av"]
    file = Path(result.files[0].path)
    assert file.parent == tmp_path
    assert result.files[0].size == file.stat().st_size == result.total_bytes > 0
    assert media_streams(file) == ["video", "audio"]
    _assert_about(media_duration(file))
    assert result.info.extractor == "generic"
    assert result.info.webpage_url == media_server.url("clip.mp4")
    assert result.seconds > 0
    # Nothing but the media is left behind: no .part, .ytdl or cache files.
    assert sorted(tmp_path.iterdir()) == [file]


def test_hls_is_fetched_natively(media_server: MediaServer, tmp_path: Path) -> None:
    result = download(media_server.url("hls/index.m3u8"), tmp_path, guard=LOOPBACK)
    assert [f.kind for f in result.files] == ["av"]
    file = Path(result.files[0].path)
    assert media_streams(file) == ["video", "audio"]
    _assert_about(media_duration(file))
    assert result.info.duration == pytest.approx(2.0, abs=0.3)


def test_dash_gives_separate_video_and_audio(media_server: MediaServer, tmp_path: Path) -> None:
    result = download(media_server.url("dash/manifest.mpd"), tmp_path, guard=LOOPBACK)
    assert sorted(f.kind for f in result.files) == ["audio", "video"]
    files = _media(result)
    assert media_streams(files["video"]) == ["video"]
    assert media_streams(files["audio"]) == ["audio"]
    _assert_about(media_duration(files["video"]))
    _assert_about(media_duration(files["audio"]))
    assert video_size(files["video"]) == (320, 240)
    assert (result.info.width, result.info.height) == (320, 240)
    assert result.info.video_codec and result.info.video_codec.startswith("avc1")
    assert result.info.audio_codec and result.info.audio_codec.startswith("mp4a")
    assert result.total_bytes == sum(f.size for f in result.files)


@pytest.fixture(scope="module")
def video_page(media_dir: Path) -> str:
    """An HTML page with a <video>: the clip, a poster image and English subtitles."""
    assert (media_dir / "watch.html").exists()
    return "watch.html"


def test_subtitles_thumbnail_and_metadata(
    media_server: MediaServer, video_page: str, tmp_path: Path
) -> None:
    result = download(
        media_server.url(video_page),
        tmp_path,
        guard=LOOPBACK,
        download_subtitles=True,
        download_thumbnail=True,
    )
    files = _media(result)
    assert sorted(files) == ["av", "subtitle", "thumbnail"]
    assert files["subtitle"].read_text().startswith("WEBVTT")
    assert files["thumbnail"].suffix == ".jpg"
    assert video_size(files["thumbnail"]) == (320, 240)
    assert result.info.title and result.info.title.startswith("A test clip")
    assert result.info.description == "Test pattern and tone"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files.values())


def test_subtitles_and_thumbnail_only_when_asked(
    media_server: MediaServer, video_page: str, tmp_path: Path
) -> None:
    result = download(media_server.url(video_page), tmp_path, guard=LOOPBACK)
    assert [f.kind for f in result.files] == ["av"]


def test_audio_only_takes_the_audio_track(media_server: MediaServer, tmp_path: Path) -> None:
    result = download(
        media_server.url("dash/manifest.mpd"), tmp_path, guard=LOOPBACK, audio_only=True
    )
    assert [f.kind for f in result.files] == ["audio"]
    assert media_streams(Path(result.files[0].path)) == ["audio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(result.files[0].path).name]


def test_audio_only_of_a_single_file_source_takes_that_file(
    media_server: MediaServer, tmp_path: Path
) -> None:
    # No audio-only format exists; the mux stage drops the picture.
    result = download(media_server.url("clip.mp4"), tmp_path, guard=LOOPBACK, audio_only=True)
    assert [f.kind for f in result.files] == ["av"]


def test_audio_only_without_any_audio_fails_clearly(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    make_dash(media_dir / "silent", 1.0, audio=False)
    url = media_server.url("silent/manifest.mpd")
    with pytest.raises(DownloadFailed) as failed:
        download(url, tmp_path, guard=LOOPBACK, audio_only=True)
    assert str(failed.value) == f"No audio format at {url} can be downloaded"
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []
    # Without audio_only the picture alone is fetched.
    result = download(url, tmp_path, guard=LOOPBACK)
    assert [f.kind for f in result.files] == ["video"]


def test_live_hls_is_refused_rather_than_handed_to_ffmpeg(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    # yt-dlp gives live HLS to FFmpeg, which would fetch segments without asking the guard.
    playlist = (media_dir / "hls" / "index.m3u8").read_text()
    live = [line for line in playlist.splitlines() if "ENDLIST" not in line and "TYPE" not in line]
    live = [line.replace("MEDIA-SEQUENCE:0", "MEDIA-SEQUENCE:7") for line in live]
    (media_dir / "hls" / "live.m3u8").write_text("\n".join(live) + "\n")
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("hls/live.m3u8"), tmp_path, guard=LOOPBACK)
    assert "cannot be downloaded: it is live" in str(failed.value)
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("stream", "max_resolution", "size"),
    [
        ("landscape", "best", (640, 480)),
        ("landscape", "360", (480, 360)),
        ("landscape", "480", (640, 480)),
        # The cap is on the shorter side: 480x640 fits "480" though it is 640 lines tall.
        ("vertical", "480", (480, 640)),
        ("vertical", "360", (360, 480)),
        ("vertical", "best", (480, 640)),
        # Nothing is that small: the smallest there is.
        ("landscape", "240", (480, 360)),
    ],
)
def test_max_resolution_caps_the_shorter_side(
    media_server: MediaServer,
    renditions: dict[str, str],
    tmp_path: Path,
    stream: str,
    max_resolution: str,
    size: tuple[int, int],
) -> None:
    result = download(
        media_server.url(renditions[stream]),
        tmp_path,
        guard=LOOPBACK,
        max_resolution=max_resolution,
    )
    assert video_size(_media(result)["video"]) == size
    assert (result.info.width, result.info.height) == size


def test_bad_max_resolution_is_a_programming_error(
    media_server: MediaServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="max_resolution"):
        download(media_server.url("clip.mp4"), tmp_path, guard=LOOPBACK, max_resolution="huge")


def test_missing_file_is_a_final_404(media_server: MediaServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("missing.mp4"), tmp_path, guard=LOOPBACK)
    assert str(failed.value) == (
        f"Source answered HTTP 404 Not Found for {media_server.url('missing.mp4')}"
    )
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []


def test_a_host_that_does_not_exist_is_a_final_dns_failure(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download("http://example.invalid/clip.mp4", tmp_path, guard=LOOPBACK)
    assert str(failed.value) == "Could not resolve host example.invalid: no such host"
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 410])
def test_a_source_that_is_gone_is_final(
    media_server: MediaServer, tmp_path: Path, status: int
) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.status_url(status), tmp_path, guard=LOOPBACK)
    assert f"HTTP {status}" in str(failed.value)
    assert failed.value.retryable is False


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_worth_retrying(
    media_server: MediaServer, tmp_path: Path, status: int
) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.status_url(status), tmp_path, guard=LOOPBACK)
    assert f"HTTP {status}" in str(failed.value)
    assert failed.value.retryable is True


def test_a_source_that_ends_early_says_so_and_is_worth_retrying(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    size = (media_dir / "clip.mp4").stat().st_size
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.cut_url("clip.mp4"), tmp_path, guard=LOOPBACK)
    assert str(failed.value) == (f"The source ended early: it sent {size // 2} of {size} bytes")
    assert failed.value.retryable is True
    assert list(tmp_path.iterdir()) == []


def test_closed_port_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadFailed) as failed:
        download(f"http://127.0.0.1:{port}/clip.mp4", tmp_path, guard=LOOPBACK)
    assert failed.value.retryable is True
    assert failed.value.kind == "error"
    assert "Connection refused" in str(failed.value)


def test_page_without_media_is_unsupported(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    (media_dir / "page.html").write_text("<html><body><p>no video here</p></body></html>")
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("page.html"), tmp_path, guard=LOOPBACK)
    assert str(failed.value).startswith("Unsupported URL")
    assert failed.value.retryable is False


def test_loopback_is_refused_without_the_allowlist(
    media_server: MediaServer, tmp_path: Path
) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("clip.mp4"), tmp_path, guard=UrlGuard())
    assert str(failed.value) == "URL refused: 127.0.0.1 is a loopback address"
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []


def test_non_http_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match="only http and https") as failed:
        download("file:///etc/passwd", tmp_path, guard=LOOPBACK)
    assert failed.value.retryable is False


def test_redirect_within_the_allowlist_is_followed(
    media_server: MediaServer, tmp_path: Path
) -> None:
    url = media_server.redirect_url(media_server.url("clip.mp4"), code=301)
    result = download(url, tmp_path, guard=LOOPBACK)
    assert [f.kind for f in result.files] == ["av"]


def test_redirect_to_a_refused_host_is_refused(media_server: MediaServer, tmp_path: Path) -> None:
    target = media_server.alt_url("clip.mp4")  # 127.0.0.2: loopback, outside 127.0.0.1/32
    # The target really serves the file: only the guard can stop the hop.
    with urllib.request.urlopen(target, timeout=5) as answer:
        assert answer.status == 200
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.redirect_url(target), tmp_path, guard=LOOPBACK)
    assert "URL refused: 127.0.0.2 is a loopback address" in str(failed.value)
    assert failed.value.retryable is False
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("ftp://127.0.0.1/clip.mp4", "only http and https URLs can be downloaded (ftp:)"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata"),
        ("http://[::1]:9/clip.mp4", "::1 is a loopback address"),
        # 127.0.0.2 in hex: getaddrinfo reads it, so must the guard.
        ("http://0x7f000002:9/clip.mp4", "0x7f000002 resolves to 127.0.0.2, a loopback"),
    ],
)
def test_redirect_hops_are_checked(
    media_server: MediaServer, tmp_path: Path, target: str, reason: str
) -> None:
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.redirect_url(target, code=307), tmp_path, guard=LOOPBACK)
    assert reason in str(failed.value)
    assert failed.value.retryable is False


def test_hls_segments_on_a_refused_host_are_refused(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    # A playlist on an allowed host whose segments live on a refused one.
    playlist = (media_dir / "hls" / "index.m3u8").read_text()
    lines = [
        media_server.alt_url(f"hls/{line}") if line.endswith(".ts") else line
        for line in playlist.splitlines()
    ]
    (media_dir / "hls" / "elsewhere.m3u8").write_text("\n".join(lines) + "\n")
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("hls/elsewhere.m3u8"), tmp_path, guard=LOOPBACK)
    assert "URL refused: 127.0.0.2 is a loopback address" in str(failed.value)
    assert list(tmp_path.iterdir()) == []


def test_connections_are_checked_even_if_the_url_check_passed(
    media_server: MediaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if DNS had answered a public address to the URL check, then 127.0.0.1 to the connect
    # (DNS rebinding): the address actually connected to is checked too.
    monkeypatch.setattr(UrlGuard, "check_url", lambda self, url: None)
    with pytest.raises(DownloadFailed) as failed:
        download(media_server.url("clip.mp4"), tmp_path, guard=UrlGuard())
    assert str(failed.value) == "URL refused: 127.0.0.1 is a loopback address"


def test_progress_is_throttled_and_ends_at_100(media_server: MediaServer, tmp_path: Path) -> None:
    reports: list[tuple[float, DownloadProgress]] = []
    # About 160 KiB/s for a ~210 KB file: yt-dlp calls its hook for every block read.
    url = media_server.slow_url("clip.mp4", chunk=8192, interval=0.05)
    result = download(
        url, tmp_path, guard=LOOPBACK, on_progress=lambda p: reports.append((time.monotonic(), p))
    )
    assert 2 <= len(reports) <= 100 / 5 + 2
    last = reports[-1][1]
    assert last.percent == 100.0
    assert last.downloaded_bytes == last.total_bytes == result.total_bytes
    percents = [p.percent for _, p in reports]
    assert all(p is not None for p in percents)
    assert percents == sorted(percents)  # type: ignore[type-var]
    assert all(p < 100.0 for p in percents[:-1])  # type: ignore[operator]
    for (t0, a), (t1, b) in itertools.pairwise(reports[:-1]):
        assert (b.percent or 0) - (a.percent or 0) >= 5 or t1 - t0 >= 0.9
    assert all(p.total_bytes == result.total_bytes for _, p in reports)


def test_cancel_during_download_removes_partial_files(
    media_server: MediaServer, tmp_path: Path
) -> None:
    cancel = threading.Event()
    url = media_server.slow_url("clip.mp4", chunk=4096, interval=0.05)  # ~80 KiB/s, ~2.6 s
    seen: list[DownloadProgress] = []

    def on_progress(p: DownloadProgress) -> None:
        seen.append(p)
        cancel.set()

    started = time.monotonic()
    with pytest.raises(DownloadCancelled):
        download(url, tmp_path, guard=LOOPBACK, on_progress=on_progress, cancel=cancel)
    assert time.monotonic() - started < 2.0
    assert seen and (seen[-1].percent or 0) < 100
    assert list(tmp_path.iterdir()) == []


def test_cancel_before_start_fetches_nothing(media_server: MediaServer, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        download(media_server.url("clip.mp4"), tmp_path, guard=LOOPBACK, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_cancel_between_hls_segments_keeps_files_that_were_there(
    media_server: MediaServer, media_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "earlier.txt").write_text("not ours")
    # Segments served slowly, so the cancel lands mid-stream.
    playlist = (media_dir / "hls" / "index.m3u8").read_text()
    lines = [
        media_server.slow_url(f"hls/{line}", chunk=4096, interval=0.05)
        if line.endswith(".ts")
        else line
        for line in playlist.splitlines()
    ]
    (media_dir / "hls" / "slow.m3u8").write_text("\n".join(lines) + "\n")
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(DownloadCancelled):
            download(media_server.url("hls/slow.m3u8"), tmp_path, guard=LOOPBACK, cancel=cancel)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["earlier.txt"]


def test_nothing_reaches_the_console(
    media_server: MediaServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    download(media_server.url("dash/manifest.mpd"), tmp_path / "ok", guard=LOOPBACK)
    with pytest.raises(DownloadFailed):
        download(media_server.url("missing.mp4"), tmp_path / "missing", guard=LOOPBACK)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


# --- what downloads share, and what they must not ----------------------------------------------
# A node keeps yt-dlp's extractor list and its TLS context from one download to the next (they
# cost more CPU than the fetch of a short clip); each download still has its own handler, opener,
# cookie jar and guard.


def test_the_guarded_downloader_knows_the_same_sites_in_the_same_order_as_yt_dlp() -> None:
    # The first extractor whose pattern matches a URL takes it: the order matters as much.
    params = {"quiet": True, "logger": _QuietLog()}
    with YoutubeDL(dict(params)) as stock:
        for _ in range(2):  # the second instance is built from what the first one worked out
            with _GuardedYoutubeDL(dict(params), guard=LOOPBACK, cancel=None) as guarded:
                assert list(guarded._ies.items()) == list(stock._ies.items())
                assert guarded._ies_instances.keys() == stock._ies_instances.keys()


def test_downloads_in_two_threads_at_once_all_succeed(
    media_server: MediaServer, tmp_path: Path
) -> None:
    urls = [media_server.url("clip.mp4"), media_server.url("dash/manifest.mpd")] * 3
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda n: download(urls[n], tmp_path / str(n), guard=LOOPBACK), range(len(urls))
            )
        )
    assert [sorted(f.kind for f in r.files) for r in results] == [["av"], ["audio", "video"]] * 3


class _CookieHandler(BaseHTTPRequestHandler):
    """Serves one file at any path, hands every client a cookie and notes the cookies it gets."""

    body = b""
    seen: list[tuple[str, str | None]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Cookie")))
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Set-Cookie", f"session={self.path.strip('/')}; Path=/")
        self.end_headers()
        self.wfile.write(self.body)


def test_a_cookie_one_download_was_given_never_reaches_the_next(
    media_dir: Path, tmp_path: Path
) -> None:
    handler = type(
        "Handler", (_CookieHandler,), {"body": (media_dir / "clip.mp4").read_bytes(), "seen": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        download(f"{base}/first.mp4", tmp_path / "1", guard=LOOPBACK)
        download(f"{base}/second.mp4", tmp_path / "2", guard=LOOPBACK)
    finally:
        server.shutdown()
        server.server_close()
    first = [cookie for path, cookie in handler.seen if path == "/first.mp4"]
    second = [cookie for path, cookie in handler.seen if path == "/second.mp4"]
    # Within one download the cookie comes back (yt-dlp asks twice: to identify, to fetch)...
    assert first[0] is None and "session=first.mp4" in first[1:], handler.seen
    # ...but the next download starts with an empty jar.
    assert second[0] is None, handler.seen
    assert not any(c and "first" in c for c in second), handler.seen


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_an_untrusted_certificate_is_refused_by_every_download(
    media_dir: Path, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    handler = type(
        "Handler", (_CookieHandler,), {"body": (media_dir / "clip.mp4").read_bytes(), "seen": []}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/clip.mp4"
    try:
        for n in range(2):  # the second download uses the TLS context the first one made
            with pytest.raises(DownloadFailed) as failed:
                download(url, tmp_path / str(n), guard=LOOPBACK)
            assert str(failed.value).startswith(
                f"The source's TLS certificate is not trusted at {url}"
            ), failed.value
            assert failed.value.retryable is False
    finally:
        server.shutdown()
        server.server_close()
    assert handler.seen == []  # no request was ever sent over the untrusted connection
