"""What FFmpeg reads from the head (and, for an MP4 whose index is at its end, the tail) of a
remote media file, without FFmpeg ever connecting to the source.

FFmpeg would fetch a URL with its own HTTP client, past the URL guard (adapters/ssrf.py). So it
is handed a loopback URL instead: a relay on 127.0.0.1, living for one probe, answers each of
FFmpeg's requests (a `Range` for each seek) by a request of the caller's guarded opener (the
same guarded yt-dlp networking a download uses), and stops relaying past `max_bytes` in all.
FFmpeg is told to speak only HTTP over TCP and to open only demuxers of plain media files, so a
file that is really a playlist cannot send it anywhere else. It runs until the probe's deadline
at most; what it read by then is what is known.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import msgspec

from spool.adapters import muxer
from spool.adapters.ffmpeg import ffmpeg_exe

MAX_BYTES = 8 * 1024 * 1024
"""Bytes read from the source for one probe, over all of FFmpeg's requests."""

_CHUNK = 64 * 1024
# Each request to the source asks for a window of bytes, doubling while FFmpeg keeps reading
# on: a seek (a new request) leaves at most one window unread at the source.
_FIRST_WINDOW = 128 * 1024
_MAX_WINDOW = 1024 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")

# Demuxers of plain media files. Playlist and reference formats (HLS, DASH, concat, mov's
# external references are off by default) would make FFmpeg open URLs named inside the file.
_DEMUXERS = "mov,matroska,webm,mp3,ogg,flac,wav,aac,mpegts,avi,flv"
# FFmpeg's own read limits, below our byte cap: enough to name every stream of a normal file.
_PROBE_SIZE = str(2 * 1024 * 1024)
_ANALYZE_MICROSECONDS = str(3_000_000)

_OVERALL_BITRATE = re.compile(r"^\s*Duration: .*?, bitrate: (\d+) kb/s", re.M)
_FPS = re.compile(r"^\s*Stream #\d+:\d+\S*: Video: .*?, (\d+(?:\.\d+)?) fps", re.M)


class SourceResponse(Protocol):
    """What the guarded opener answers: yt-dlp's `Response` fits."""

    status: int
    headers: Mapping[str, str]

    def read(self, amt: int | None = None) -> bytes: ...

    def close(self) -> None: ...


Opener = Callable[[dict[str, str]], SourceResponse]
"""Sends a GET for the source with these extra headers (a `Range`) through the guard; raises on
a refused URL or an HTTP error."""


class MediaFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What FFmpeg found. A codec is FFmpeg's name (`h264`, `aac`); "none" when the file has no
    such track; None for what could not be read."""

    duration: float | None
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    bitrate_kbps: float | None
    """The whole file's bitrate (FFmpeg's, from its size and length)."""


class _Budget:
    """The bytes still allowed from the source, shared by the relay's threads."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            granted = min(wanted, self._left)
            self._left -= granted
            return granted


def _asked_range(header: str | None) -> tuple[int, int | None]:
    """The first and last byte a `Range: bytes=a-[b]` asks for; the whole file otherwise."""
    found = _RANGE.fullmatch(header.strip()) if header else None
    if found is None:
        return 0, None
    return int(found.group(1)), int(found.group(2)) if found.group(2) else None


def _total_size(response: SourceResponse) -> int | None:
    """The file's size from a 206 answer's `Content-Range: bytes a-b/size`."""
    found = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    return int(found.group(1)) if found else None


def _handler(open_source: Opener, path: str, budget: _Budget) -> type[BaseHTTPRequestHandler]:
    class Relay(BaseHTTPRequestHandler):
        """Answers FFmpeg's request from the source in windows of bytes, asked for one after
        another as FFmpeg reads: a source never sends far more than FFmpeg takes, though
        FFmpeg leaves each connection open while it seeks with the next one."""

        def log_message(self, format: str, *args: object) -> None:
            pass  # FFmpeg's requests are not worth a log line each

        def do_GET(self) -> None:
            # The path is a one-time secret: another local process cannot use the relay.
            if self.path != path:
                self._fail(HTTPStatus.NOT_FOUND)
                return
            first, last = _asked_range(self.headers.get("Range"))
            window = _FIRST_WINDOW
            response = self._open(first, last, window)
            if response is None:
                return
            try:
                self._relay(response, first, last, window)
            except OSError:
                pass  # FFmpeg closed the connection (it seeks with a new one), or the source did
            finally:
                response.close()

        def _open(self, first: int, last: int | None, window: int) -> SourceResponse | None:
            """The source's answer for one window from `first`; None once a failure is sent."""
            end = first + window - 1 if last is None else min(last, first + window - 1)
            try:
                response = open_source({"Range": f"bytes={first}-{end}"})
            except Exception as exc:
                # FFmpeg only needs to know the read failed; the reason is the source's.
                status = getattr(exc, "status", None)
                self._fail(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
                    if status == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
                    else HTTPStatus.BAD_GATEWAY
                )
                return None
            if response.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                response.close()
                self._fail(HTTPStatus.BAD_GATEWAY)
                return None
            return response

        def _relay(
            self, response: SourceResponse, first: int, last: int | None, window: int
        ) -> None:
            total = _total_size(response)
            if response.status != HTTPStatus.PARTIAL_CONTENT or total is None:
                # A source without ranges sends the whole file: pass it on, within the cap.
                self._head(HTTPStatus.OK, response, response.headers.get("Content-Length"))
                self._copy(response)
                return
            end = total - 1 if last is None else min(last, total - 1)
            self._head(
                HTTPStatus.PARTIAL_CONTENT,
                response,
                str(end - first + 1),
                content_range=f"bytes {first}-{end}/{total}",
            )
            copied, capped = self._copy(response)
            position = first + copied
            while copied and not capped and position <= end:
                window = min(window * 2, _MAX_WINDOW)
                later = self._source_window(position, end, window)
                if later is None:
                    return
                try:
                    copied, capped = self._copy(later)
                finally:
                    later.close()
                position += copied

        def _source_window(self, first: int, last: int, window: int) -> SourceResponse | None:
            """The next window, mid-answer: a failure can only end the answer early."""
            try:
                response = open_source({"Range": f"bytes={first}-{min(last, first + window - 1)}"})
            except Exception:
                return None
            if response.status != HTTPStatus.PARTIAL_CONTENT:
                response.close()
                return None
            return response

        def _head(
            self,
            status: HTTPStatus,
            response: SourceResponse,
            length: str | None,
            *,
            content_range: str | None = None,
        ) -> None:
            self.send_response(status)
            content_type = response.headers.get("Content-Type")
            if content_type:
                self.send_header("Content-Type", content_type)
            if length:
                self.send_header("Content-Length", length)
            if content_range:
                # Only a source that answers ranges lets FFmpeg seek (to an index at the end).
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Range", content_range)
            self.send_header("Connection", "close")
            self.end_headers()

        def _copy(self, response: SourceResponse) -> tuple[int, bool]:
            """Bytes copied from `response` until it ends, and whether the cap stopped it."""
            copied = 0
            while data := response.read(_CHUNK):
                granted = budget.take(len(data))
                self.wfile.write(data[:granted])
                copied += granted
                if granted < len(data):
                    return copied, True  # the cap: FFmpeg sees the file end here
            return copied, False

        def _fail(self, status: HTTPStatus) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

    return Relay


def probe(
    open_source: Opener, name: str, *, deadline: float, max_bytes: int = MAX_BYTES
) -> MediaFacts | None:
    """What FFmpeg reads of the source within `max_bytes` and before `deadline` (a
    `time.monotonic()` value); None when it could not tell what the file holds.

    `name` is the file's name in its URL: its extension picks a container among those one
    FFmpeg demuxer reads (`mp4` from "mov,mp4,m4a,...").
    """
    path = f"/{secrets.token_urlsafe(16)}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(open_source, path, _Budget(max_bytes)))
    server.daemon_threads = True
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    serving.start()
    try:
        stderr = _ffmpeg_describe(
            f"http://127.0.0.1:{server.server_address[1]}{path}", deadline - time.monotonic()
        )
    finally:
        server.shutdown()
        server.server_close()
    if stderr is None:
        return None
    return _facts(stderr, name)


def _ffmpeg_describe(url: str, seconds: float) -> str | None:
    """FFmpeg's description of `url` (its stderr), or None when it ran out of time."""
    if seconds <= 0:
        return None
    proc = subprocess.Popen(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-protocol_whitelist",
            "http,tcp",
            "-format_whitelist",
            _DEMUXERS,
            "-probesize",
            _PROBE_SIZE,
            "-analyzeduration",
            _ANALYZE_MICROSECONDS,
            "-rw_timeout",
            str(int(seconds * 1_000_000)),
            "-i",
            url,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        # With an input and no output FFmpeg describes the input, then exits non-zero.
        _, stderr = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.communicate()
    return str(stderr)


def _facts(stderr: str, name: str) -> MediaFacts | None:
    # A name, never opened: its extension picks the container among the demuxer's names.
    info = muxer.parse_probe(stderr, Path(name or "media"))
    if info is None:
        return None
    video = next((s for s in info.streams if s.kind == "video"), None)
    audio = next((s for s in info.streams if s.kind == "audio"), None)
    bitrate = _OVERALL_BITRATE.search(stderr)
    fps = _FPS.search(stderr)
    return MediaFacts(
        duration=info.duration,
        video_codec=video.codec if video else "none",
        audio_codec=audio.codec if audio else "none",
        width=video.width if video else None,
        height=video.height if video else None,
        fps=float(fps.group(1)) if fps and video else None,
        bitrate_kbps=float(bitrate.group(1)) if bitrate else None,
    )
