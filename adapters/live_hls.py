"""Recording live HLS streams ourselves, every request guarded, no FFmpeg fetching anything.

`download` (yt-dlp) refuses live HLS: yt-dlp would hand a live stream to FFmpeg, which fetches
URLs past the SSRF guard. This module records such a stream with plain HTTP instead: it polls
the media playlist, fetches each new segment once (by media sequence number) and appends the
MPEG-TS segments, in order, to one `.ts` file.

Every request (playlist, variant playlist, segment, each redirect hop) is asked about twice:
`UrlGuard.check_url` before the request is sent, and `UrlGuard.check_address` for the very
address a socket connects to (`_GuardedBackend`), so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot reach a refused address. Redirects are
followed by hand, one checked hop at a time. Proxies from the environment are never used.

Both functions block; callers run them in a thread.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

from spool.adapters.downloader import (
    DownloadCancelled,
    DownloadedFile,
    DownloadFailed,
    DownloadProgress,
    DownloadResult,
    MediaInfo,
    _refusal,
)
from spool.adapters.ssrf import UrlGuard, UrlRefused

logger = logging.getLogger(__name__)

_MAX_REDIRECTS = 10
_MAX_PLAYLIST_BYTES = 4 * 1024 * 1024  # a live playlist is kilobytes; more is not a playlist
_SNIFF_BYTES = 64 * 1024  # what `is_live_hls` reads before deciding it is no playlist
_CHUNK = 64 * 1024
_REQUEST_TIMEOUT = 20.0  # seconds, like the yt-dlp downloader's socket timeout
_LIVE_EDGE_SEGMENTS = 3  # where a player joins a live stream (RFC 8216 6.3.3)
_PROGRESS_SECONDS = 1.0
_SEGMENT_ATTEMPTS = 3
_WAIT_RETRY_SECONDS = 2.0  # how often a not-yet-started stream is asked for again
_MIN_POLL_SECONDS = 0.5  # never hammer the origin, whatever TARGETDURATION says
_MAX_POLL_SECONDS = 10.0
# A live playlist that brings no new segment for this many target durations (and at least
# `_MIN_STALL_SECONDS`) is taken to be a stream that ended without #EXT-X-ENDLIST.
_STALL_TARGETS = 6
_MIN_STALL_SECONDS = 30.0
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


# --- guarded HTTP ---------------------------------------------------------------------------------


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, asking the guard about each address before connecting to it.

    httpcore hands us the host name, so we resolve it ourselves, refuse if any address it
    resolves to is refused (as `check_url` does), and connect to the checked address itself:
    no second lookup happens between the check and the connection.
    """

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise httpcore.ConnectError(f"cannot resolve host {host}: {e}") from e
        for info in infos:
            self._guard.check_address(host, str(info[4][0]))  # UrlRefused passes up unchanged
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if local_address is not None:
                    sock.bind((local_address, 0))
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)
            except TimeoutError as e:
                sock.close()
                raise httpcore.ConnectTimeout(f"timed out connecting to {host}") from e
            except OSError as e:
                sock.close()
                last = e
                continue
            # SyncStream is what SyncBackend itself returns; TLS starts on it later, with the
            # host name (not the address) as server name.
            return SyncStream(sock)
        raise httpcore.ConnectError(f"cannot connect to {host}: {last}")


def _client(guard: UrlGuard, timeout: float) -> httpx.Client:
    """An httpx client that never follows redirects itself, uses no proxy, connects guarded."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public way to give its transport a network backend; the pool it builds
    # without a proxy is exactly this one, minus the backend.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=10,
        max_keepalive_connections=5,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(guard),
    )
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,  # no proxies, no .netrc: nothing the guard does not see
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": "Spool live recorder"},
    )


class _HttpStatus(Exception):
    """A final (non-redirect) answer that was not 2xx."""

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.reason = reason
        self.url = url


def _http_failure(e: _HttpStatus) -> DownloadFailed:
    """The same wording and classification as the yt-dlp downloader's HTTP failures."""
    message = f"Source answered HTTP {e.status} {e.reason}".rstrip() + f" for {e.url}"
    if e.status in (403, 404, 410, 451):
        # Forbidden, gone, or withheld: the content is not there for us; retrying won't help.
        return DownloadFailed(message, kind="warning", retryable=False)
    if e.status in (408, 425, 429) or e.status >= 500:
        return DownloadFailed(message, retryable=True)
    return DownloadFailed(message, retryable=False)


@contextmanager
def _get(client: httpx.Client, guard: UrlGuard, url: str) -> Iterator[httpx.Response]:
    """GET `url` as a streamed 2xx response, following redirects by hand, each hop guarded.

    Raises UrlRefused, _HttpStatus, or httpx.HTTPError for network trouble.
    """
    for _ in range(_MAX_REDIRECTS + 1):
        guard.check_url(url)
        with client.stream("GET", url) as response:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_CODES and location:
                url = urllib.parse.urljoin(url, location)
                continue
            if not response.is_success:
                raise _HttpStatus(response.status_code, response.reason_phrase, url)
            yield response
            return
    raise httpx.TooManyRedirects(f"more than {_MAX_REDIRECTS} redirects", request=None)


def _read_text(client: httpx.Client, guard: UrlGuard, url: str, limit: int) -> tuple[str, str]:
    """The body of `url` (at most `limit` bytes, else not a playlist) and the URL it came from.

    The final URL matters: relative segment URIs resolve against it, not the first one.
    """
    with _get(client, guard, url) as response:
        data = bytearray()
        for chunk in response.iter_bytes(_CHUNK):
            data += chunk
            if len(data) > limit:
                break
        return bytes(data[:limit]).decode("utf-8", "replace"), str(response.url)


# --- playlists ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    sequence: int
    duration: float
    uri: str  # absolute


@dataclass
class _Playlist:
    """The parts of an HLS playlist the recorder uses."""

    is_master: bool = False
    variants: list[tuple[int, str]] = field(default_factory=list)  # (bandwidth, absolute URI)
    target_duration: float = 0.0
    segments: list[_Segment] = field(default_factory=list)
    ended: bool = False
    unsupported: str | None = None  # why the segments cannot simply be concatenated


def _attributes(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTRIBUTE.findall(text)}


def _parse(text: str, base_url: str) -> _Playlist | None:
    """Parse an HLS playlist; None if `text` is not one (no #EXTM3U header)."""
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].startswith("#EXTM3U"):
        return None
    playlist = _Playlist()
    sequence = 0
    duration: float | None = None
    stream_inf: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            playlist.is_master = True
            stream_inf = _attributes(line.partition(":")[2])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            playlist.target_duration = _number(line.partition(":")[2], 0.0)
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(_number(line.partition(":")[2], 0.0))
        elif line.startswith("#EXTINF:"):
            duration = _number(line.partition(":")[2].split(",", 1)[0], 0.0)
        elif line.startswith("#EXT-X-ENDLIST"):
            playlist.ended = True
        elif line.startswith("#EXT-X-KEY:"):
            method = _attributes(line.partition(":")[2]).get("METHOD", "NONE")
            if method.upper() != "NONE":
                playlist.unsupported = f"it is encrypted ({method})"
        elif line.startswith("#EXT-X-MAP:"):
            playlist.unsupported = "its segments are fragmented MP4, not MPEG-TS"
        elif line.startswith("#EXT-X-BYTERANGE:"):
            playlist.unsupported = "its segments are byte ranges of larger files"
        elif line.startswith("#"):
            continue  # a tag we need not understand to record (RFC 8216: ignore unknown tags)
        elif stream_inf is not None:
            bandwidth = int(_number(stream_inf.get("BANDWIDTH", "0"), 0.0))
            playlist.variants.append((bandwidth, urllib.parse.urljoin(base_url, line)))
            stream_inf = None
        elif duration is not None:
            playlist.segments.append(
                _Segment(sequence, duration, urllib.parse.urljoin(base_url, line))
            )
            sequence += 1
            duration = None
    return playlist


def _number(text: str, default: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _best_variant(playlist: _Playlist, url: str) -> str:
    if not playlist.variants:
        raise DownloadFailed(f"The HLS master playlist at {url} lists no streams")
    # max() keeps the first of equal bandwidths: the order the publisher preferred.
    return max(playlist.variants, key=lambda v: v[0])[1]


def _fetch_media_playlist(client: httpx.Client, guard: UrlGuard, url: str) -> _Playlist:
    """The media playlist at `url`, or at the highest-bandwidth variant if `url` is a master.

    Raises UrlRefused, _HttpStatus, httpx.HTTPError, or DownloadFailed if it is no playlist.
    """
    text, final_url = _read_text(client, guard, url, _MAX_PLAYLIST_BYTES)
    playlist = _parse(text, final_url)
    if playlist is not None and playlist.is_master:
        variant = _best_variant(playlist, url)
        text, final_url = _read_text(client, guard, variant, _MAX_PLAYLIST_BYTES)
        playlist = _parse(text, final_url)
        if playlist is not None and playlist.is_master:
            raise DownloadFailed(f"The HLS stream at {url} nests master playlists")
    if playlist is None:
        raise DownloadFailed(f"The source at {url} is not an HLS playlist")
    return playlist


# --- the probe ------------------------------------------------------------------------------------


def is_live_hls(url: str, *, guard: UrlGuard, timeout: float = 10.0) -> bool:
    """Whether `url` is a live HLS stream: a media playlist without #EXT-X-ENDLIST, or a master
    playlist whose highest-bandwidth variant is one. Blocking.

    Only the first 64 KiB of the answer are read before deciding it is no playlist, so probing
    the URL of a large file costs little. Raises DownloadFailed (not retryable) if the guard
    refuses the URL or a redirect hop; any other failure (HTTP error, network trouble, not a
    playlist) answers False, leaving the URL to the ordinary downloader and its error messages.
    """
    try:
        with _client(guard, timeout) as client:
            text, final_url = _read_text(client, guard, url, _SNIFF_BYTES)
            playlist = _parse(text, final_url)
            if playlist is None:
                return False
            if playlist.is_master:
                variant = _best_variant(playlist, url)
                text, final_url = _read_text(client, guard, variant, _MAX_PLAYLIST_BYTES)
                playlist = _parse(text, final_url)
            return playlist is not None and not playlist.is_master and not playlist.ended
    except UrlRefused as e:
        raise _refusal(e) from None
    except (_HttpStatus, httpx.HTTPError, DownloadFailed) as e:
        logger.debug("%s is not a live HLS stream we can reach: %s", url, e)
        return False


# --- the recorder ---------------------------------------------------------------------------------


class _Reporter:
    """At most one progress report a second, then a closing one."""

    def __init__(
        self, on_progress: Callable[[DownloadProgress], None] | None, cap: float | None
    ) -> None:
        self._on_progress = on_progress
        self._cap = cap
        self._last_time = time.monotonic()
        self._last_bytes = 0

    def update(self, downloaded: int, recorded: float) -> None:
        now = time.monotonic()
        if self._on_progress is None or now - self._last_time < _PROGRESS_SECONDS:
            return
        speed = (downloaded - self._last_bytes) / (now - self._last_time)
        self._last_time, self._last_bytes = now, downloaded
        percent = eta = None
        if self._cap:
            # Never 100 before the end; a live stream plays in real time, so what is left of
            # the cap is also roughly the time left.
            percent = round(min(recorded / self._cap * 100, 99.9), 1)
            eta = max(0.0, self._cap - recorded)
        self._emit(DownloadProgress(downloaded, None, speed, eta, percent))

    def finish(self, total_bytes: int, seconds: float) -> None:
        speed = total_bytes / seconds if seconds > 0 else None
        self._emit(DownloadProgress(total_bytes, total_bytes, speed, 0.0, 100.0))

    def _emit(self, progress: DownloadProgress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(progress)
        except Exception:
            # Reporting progress is a side show: a failing callback must not fail the recording.
            logger.exception("progress callback failed")


class _Stop(Exception):
    """The cancel event was set."""


@dataclass
class _Recorder:
    """The state of one recording; `run` does the work."""

    url: str
    guard: UrlGuard
    client: httpx.Client
    max_duration: float | None
    live_from_start: bool
    wait_for_video: float | None
    reporter: _Reporter
    cancel: threading.Event
    recorded: float = 0.0
    downloaded: int = 0
    last_sequence: int | None = None

    def _sleep(self, seconds: float) -> None:
        # Waiting on the event, not time.sleep, so a cancel is noticed at once.
        if self.cancel.wait(max(0.0, seconds)):
            raise _Stop

    def _first_playlist(self) -> _Playlist:
        """The playlist, waiting up to `wait_for_video` seconds for a stream not yet started."""
        deadline = time.monotonic() + (self.wait_for_video or 0.0)
        while True:
            try:
                return _fetch_media_playlist(self.client, self.guard, self.url)
            except _HttpStatus as e:
                left = deadline - time.monotonic()
                if e.status != 404 or left <= 0:
                    raise
                logger.info("live stream %s not there yet; retrying for %.0f s", self.url, left)
                self._sleep(min(_WAIT_RETRY_SECONDS, left))

    def _reload(self, stall_deadline: float) -> _Playlist | None:
        """The playlist again; None after a transient failure (network, 5xx) before the
        stall deadline, so the caller polls again instead of failing the whole recording."""
        try:
            return _fetch_media_playlist(self.client, self.guard, self.url)
        except (httpx.HTTPError, _HttpStatus) as e:
            transient = not isinstance(e, _HttpStatus) or _http_failure(e).retryable
            if transient and time.monotonic() < stall_deadline:
                logger.info("reloading live playlist %s failed (%s); polling on", self.url, e)
                return None
            raise

    def _append(self, segment: _Segment, sink: _Sink) -> None:
        """Download one segment to the end of the output, retrying transient failures.

        A segment is written only once it arrived whole, so a retry never duplicates bytes.
        A segment the origin already dropped (404/410: we fell behind) is skipped.
        """
        for attempt in range(1, _SEGMENT_ATTEMPTS + 1):
            data = bytearray()
            try:
                with _get(self.client, self.guard, segment.uri) as response:
                    for chunk in response.iter_bytes(_CHUNK):
                        if self.cancel.is_set():
                            raise _Stop
                        data += chunk
                        self.reporter.update(self.downloaded + len(data), self.recorded)
            except _HttpStatus as e:
                if e.status in (404, 410):
                    logger.warning("live segment %s is gone; skipping it", segment.uri)
                    return
                if not _http_failure(e).retryable or attempt == _SEGMENT_ATTEMPTS:
                    raise
            except httpx.HTTPError:
                if attempt == _SEGMENT_ATTEMPTS:
                    raise
            else:
                sink.write(bytes(data))
                self.downloaded += len(data)
                self.recorded += segment.duration
                return
            self._sleep(0.5 * attempt)

    def _capped(self) -> bool:
        return self.max_duration is not None and self.recorded >= self.max_duration

    def run(self, sink: _Sink) -> None:
        playlist = self._first_playlist()
        if playlist.unsupported:
            raise DownloadFailed(
                f"The live stream at {self.url} cannot be recorded: {playlist.unsupported}"
            )
        segments = playlist.segments
        if not self.live_from_start and not playlist.ended:
            # Join at the live edge, as players do; an ended stream is recorded whole.
            segments = segments[-_LIVE_EDGE_SEGMENTS:]
        if segments:
            self.last_sequence = segments[0].sequence - 1
        target = playlist.target_duration or 2.0
        stall_seconds = max(_STALL_TARGETS * target, _MIN_STALL_SECONDS)
        last_new = time.monotonic()
        while True:
            new = [
                s
                for s in playlist.segments
                if self.last_sequence is None or s.sequence > self.last_sequence
            ]
            if new and self.last_sequence is not None and new[0].sequence > self.last_sequence + 1:
                # The origin dropped segments before we fetched them (we fell behind).
                missed = new[0].sequence - self.last_sequence - 1
                logger.warning("live stream %s: %d segment(s) missed", self.url, missed)
            for segment in new:
                if self.cancel.is_set():
                    raise _Stop
                self._append(segment, sink)
                self.last_sequence = segment.sequence
                last_new = time.monotonic()
                if self._capped():
                    return
            if playlist.ended:
                return
            if time.monotonic() - last_new > stall_seconds:
                if self.downloaded:
                    # Probably an encoder that stopped without writing #EXT-X-ENDLIST: keep
                    # what was recorded rather than throw it away.
                    logger.warning("live stream %s stalled; ending the recording", self.url)
                    return
                raise DownloadFailed(
                    f"The live stream at {self.url} brought no new segment for "
                    f"{stall_seconds:.0f} s",
                    retryable=True,
                )
            # RFC 8216 6.3.4: after a reload with news, wait a target duration; without, half.
            wait = target if new else target / 2
            self._sleep(min(max(wait, _MIN_POLL_SECONDS), _MAX_POLL_SECONDS))
            reloaded = self._reload(last_new + stall_seconds)
            if reloaded is None:
                continue  # `playlist` still holds the old list, whose segments are all seen
            if reloaded.unsupported:
                raise DownloadFailed(
                    f"The live stream at {self.url} cannot be recorded: {reloaded.unsupported}"
                )
            playlist = reloaded
            target = playlist.target_duration or target
            if self.last_sequence is None and playlist.segments:
                # The first playlist listed nothing yet: join this one at its live edge.
                edge = playlist.segments
                if not self.live_from_start:
                    edge = edge[-_LIVE_EDGE_SEGMENTS:]
                self.last_sequence = edge[0].sequence - 1


class _Sink:
    """The output file, created by the first segment, so a failure before it leaves nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, data: bytes) -> None:
        # Opened per segment (one a second or so): nothing is left open when a recording stops.
        with self.path.open("ab") as f:
            f.write(data)


def _output_path(dest: Path) -> Path:
    path = dest / "live.ts"
    n = 1
    while path.exists():
        path = dest / f"live.{n}.ts"
        n += 1
    return path


def _title(url: str) -> str | None:
    """The playlist's file name without its suffix ("live" for .../live.m3u8), if it has one."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])
    return name.rpartition(".")[0] or name or None


def record(
    url: str,
    dest: Path,
    *,
    guard: UrlGuard,
    max_duration: float | None,
    live_from_start: bool = False,
    wait_for_video: float | None = None,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> DownloadResult:
    """Record the live HLS stream at `url` into one MPEG-TS file in `dest` (kind "av"). Blocking.

    Joins at the live edge (the last 3 segments), or with `live_from_start` at the first
    segment the playlist still lists; for a master playlist, records the highest-bandwidth
    variant. Stops when the stream ends (#EXT-X-ENDLIST), when `max_duration` seconds of media
    (the sum of #EXTINF; it may overshoot by less than one segment) are recorded, or when the
    stream brings no new segment for a long while (6 target durations, at least 30 s).
    `wait_for_video` is how long a playlist that answers 404 is asked for again.

    Raises DownloadFailed with a user-facing reason, or DownloadCancelled once `cancel` is set;
    either way the partial file is removed.
    """
    try:
        guard.check_url(url)  # a plain refusal before anything else happens
    except UrlRefused as e:
        raise _refusal(e) from None
    if max_duration is not None and max_duration <= 0:
        raise ValueError(f"max_duration must be positive, not {max_duration!r}")
    dest.mkdir(parents=True, exist_ok=True)
    sink = _Sink(_output_path(dest))
    reporter = _Reporter(on_progress, max_duration)
    started = time.monotonic()
    try:
        with _client(guard, _REQUEST_TIMEOUT) as client:
            recorder = _Recorder(
                url=url,
                guard=guard,
                client=client,
                max_duration=max_duration,
                live_from_start=live_from_start,
                wait_for_video=wait_for_video,
                reporter=reporter,
                cancel=cancel or threading.Event(),
            )
            recorder.run(sink)
    except BaseException as exc:
        sink.path.unlink(missing_ok=True)
        if isinstance(exc, _Stop) or (cancel is not None and cancel.is_set()):
            raise DownloadCancelled(f"recording of {url} cancelled") from None
        if isinstance(exc, UrlRefused):
            raise _refusal(exc) from None
        if isinstance(exc, _HttpStatus):
            raise _http_failure(exc) from None
        if isinstance(exc, httpx.TimeoutException):
            raise DownloadFailed(
                f"Timed out waiting for the source at {url}; it may be slow or unreachable",
                retryable=True,
            ) from None
        if isinstance(exc, httpx.TooManyRedirects):
            # A redirect loop is the source's configuration: retrying will loop again.
            raise DownloadFailed(f"Too many redirects from the source at {url}") from None
        if isinstance(exc, httpx.HTTPError):
            raise DownloadFailed(
                f"Could not fetch from the source at {url}: {exc}", retryable=True
            ) from None
        raise
    if not sink.path.is_file():
        raise DownloadFailed(f"The live stream at {url} brought no segment to record")
    seconds = time.monotonic() - started
    size = sink.path.stat().st_size
    reporter.finish(size, seconds)
    info = MediaInfo(
        title=_title(url),
        description=None,
        release_date=None,
        duration=round(recorder.recorded, 3),
        webpage_url=None,
        extractor=None,
        video_codec=None,
        audio_codec=None,
        width=None,
        height=None,
    )
    kind: Literal["av"] = "av"
    return DownloadResult(
        files=[DownloadedFile(str(sink.path), kind, None, size)],
        info=info,
        total_bytes=size,
        seconds=seconds,
    )
