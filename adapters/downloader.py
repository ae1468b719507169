"""Fetching media with yt-dlp as a library: every connection guarded, HLS/DASH native, no merging.

`download` is blocking; callers run it in a thread. Every HTTP request yt-dlp makes (the page,
manifests, segments, each redirect hop) goes through one request handler of ours, which asks the
`UrlGuard` about the URL and, when the socket is opened, about the very address it connects to:
see `_GuardedRH`.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

import msgspec
from yt_dlp import YoutubeDL
from yt_dlp.extractor import import_extractors
from yt_dlp.globals import extractors as registered_extractors
from yt_dlp.globals import plugin_dirs
from yt_dlp.networking._helper import _socket_connect, create_connection, make_ssl_context
from yt_dlp.networking._urllib import (
    HTTPHandler,
    RedirectHandler,
    UrllibRH,
    _create_http_connection,
)
from yt_dlp.networking.exceptions import (
    CertificateVerifyError,
    HTTPError,
    RequestError,
    TransportError,
    UnsupportedRequest,
)
from yt_dlp.utils import DownloadCancelled as YtDlpCancelled
from yt_dlp.utils import (
    ExtractorError,
    GeoRestrictedError,
    UnsupportedError,
    determine_protocol,
)

from spool.adapters.ssrf import UnresolvedHost, UrlGuard, UrlRefused
from spool.domain.job_options import DEFAULTS, JobOptions, is_audio_only

logger = logging.getLogger(__name__)

FileKind = Literal["video", "audio", "av", "subtitle", "thumbnail"]

# Protocols yt-dlp fetches itself through its networking layer. Anything else (rtmp, rtsp, mms,
# websockets, ...) would hand the URL to an outside tool that the guard never sees.
_NATIVE_PROTOCOLS = frozenset(
    {"http", "https", "m3u8", "m3u8_native", "http_dash_segments", "http_dash_segments_generator"}
)
_RESOLUTIONS = re.compile(r"(\d{3,4})p?")
_PROGRESS_SECONDS = 1.0
_PROGRESS_PERCENT = 5.0


class DownloadProgress(msgspec.Struct, frozen=True):
    """How far a download has got, across all the files it fetches."""

    downloaded_bytes: int
    total_bytes: int | None
    speed: float | None  # bytes/s
    eta: float | None  # seconds
    percent: float | None


class MediaInfo(msgspec.Struct, frozen=True):
    """What the source says about the media; codecs and size are those of the chosen formats."""

    title: str | None
    description: str | None
    release_date: str | None  # ISO date, e.g. "2024-05-31"
    duration: float | None
    webpage_url: str | None
    extractor: str | None
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    extractor_key: str | None = None
    """yt-dlp's name of the extractor that read the item (`Youtube`, `Generic`)."""
    item_id: str | None = None
    """The item's id as that extractor gives it."""


class ItemName(msgspec.Struct, frozen=True):
    """How yt-dlp names an item it extracted: its extractor key, its id and its page's URL."""

    extractor_key: str
    item_id: str
    url: str


class AlreadyHave(Exception):
    """`download`'s `already_have` named what holds the item: nothing was fetched."""

    def __init__(self, item: ItemName, holder: str, title: str | None) -> None:
        super().__init__(f"{item.extractor_key} {item.item_id} is held by {holder}")
        self.item = item
        self.holder = holder
        self.title = title


class DownloadedFile(msgspec.Struct, frozen=True):
    """One file a download left in its destination folder."""

    path: str
    kind: FileKind
    format_id: str | None
    size: int


class DownloadResult(msgspec.Struct, frozen=True):
    """The files fetched for one URL and what is known about them."""

    files: list[DownloadedFile]
    info: MediaInfo
    total_bytes: int
    seconds: float


class DownloadFailed(Exception):
    """A download that did not succeed; str() is a reason a user can act on, never a traceback."""

    def __init__(
        self, message: str, *, kind: Literal["error", "warning"] = "error", retryable: bool = False
    ) -> None:
        super().__init__(message)
        # "warning" for content problems (private, geo-blocked, gone), "error" for failures.
        self.kind: Literal["error", "warning"] = kind
        self.retryable = retryable


class NotReady(DownloadFailed):
    """The media is not out yet: a premiere, an upcoming live stream, a video its site is still
    processing. Worth trying again later, not now (domain/not_ready.py); `ready_at` (seconds
    since the epoch) when the source says when it is out."""

    def __init__(self, message: str, *, ready_at: float | None = None) -> None:
        super().__init__(message, kind="warning", retryable=True)
        self.ready_at = ready_at


class DownloadCancelled(Exception):
    """The caller's cancel event was set; the partial files are gone."""


# --- guarded networking ---------------------------------------------------------------------------


class _RefusedRequest(RequestError):  # type: ignore[misc]
    """The guard refused a request; a RequestError so yt-dlp's director passes it up unchanged."""

    def __init__(self, refusal: UrlRefused) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class _CancelledRequest(RequestError):  # type: ignore[misc]
    """A request started after the cancel event was set."""


class _Cancelled(YtDlpCancelled):  # type: ignore[misc]
    """Raised from a progress hook; yt-dlp lets its own DownloadCancelled pass through."""


class _Upcoming(Exception):
    """Raised from `_GuardedYoutubeDL._wait_for_video`: the extractor found the media listed
    but not out yet. Not one of yt-dlp's errors, so it passes through `extract_info` as it is."""

    def __init__(self, release_timestamp: float | None) -> None:
        super().__init__("upcoming")
        self.release_timestamp = release_timestamp


OnConnect = Callable[[socket.socket], None]
"""Told of every socket a guarded request connects, e.g. so a deadline can shut it from outside
(adapters/probes.py `Probe.opened`)."""


def _guarded_connect(
    guard: UrlGuard,
    address: tuple[str, int],
    timeout: Any = None,
    source_address: Any = None,
    *,
    on_connect: OnConnect | None = None,
) -> socket.socket:
    """yt-dlp's `create_connection`, asking the guard about each address before connecting to it.

    Checking the address actually connected to (not only the URL beforehand) closes the gap a
    DNS answer that changes between check and connect would open, and covers redirect hops.
    """
    host = address[0]

    def connect(ip_addr: tuple[Any, ...], timeout: Any, source_address: Any) -> socket.socket:
        try:
            guard.check_address(host, str(ip_addr[4][0]))
        except UrlRefused as e:
            raise _RefusedRequest(e) from e
        sock: socket.socket = _socket_connect(ip_addr, timeout, source_address)
        if on_connect is not None:
            on_connect(sock)
        return sock

    sock: socket.socket = create_connection(
        address, timeout, source_address, _create_socket_func=connect
    )
    return sock


class _GuardedHTTPHandler(HTTPHandler):  # type: ignore[misc]
    """yt-dlp's urllib HTTP(S) handler whose connections open through `_guarded_connect`."""

    def __init__(
        self, guard: UrlGuard, *, on_connect: OnConnect | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._on_connect = on_connect

    def _connection(self, conn_class: type[Any], *args: Any, **kwargs: Any) -> Any:
        conn = _create_http_connection(conn_class, self._source_address, *args, **kwargs)
        conn._create_connection = functools.partial(
            _guarded_connect, self._guard, on_connect=self._on_connect
        )
        return conn

    def http_open(self, req: urllib.request.Request) -> Any:
        conn_class = self._make_conn_class(http.client.HTTPConnection, req)
        return self.do_open(functools.partial(self._connection, conn_class), req)

    def https_open(self, req: urllib.request.Request) -> Any:
        conn_class = self._make_conn_class(http.client.HTTPSConnection, req)
        return self.do_open(
            functools.partial(self._connection, conn_class), req, context=self._context
        )


class _GuardedRedirectHandler(RedirectHandler):  # type: ignore[misc]
    """yt-dlp's redirect rules, refusing a hop to a guarded URL before any connection is made."""

    def __init__(self, guard: UrlGuard) -> None:
        super().__init__()
        self._guard = guard

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> Any:
        try:
            self._guard.check_url(newurl)
        except UrlRefused as e:
            fp.close()
            raise _RefusedRequest(UrlRefused(f"{e} (redirected from {req.full_url})")) from e
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _GuardedRH(UrllibRH):  # type: ignore[misc]
    """The only request handler our YoutubeDL has: http(s) alone, no proxies, every hop guarded.

    yt-dlp follows redirects inside the handler (urllib's opener), so the guard is asked at
    three points: the request URL in `_send`, each redirect target in the redirect handler,
    and each address a socket connects to in `_guarded_connect`.
    """

    _SUPPORTED_URL_SCHEMES = ("http", "https")

    def __init__(
        self,
        *,
        guard: UrlGuard,
        cancel: threading.Event | None,
        on_connect: OnConnect | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._cancel = cancel
        self._on_connect = on_connect

    def _make_sslcontext(self, legacy_ssl_support: bool | None = None) -> ssl.SSLContext:
        if self._client_cert:
            # Never the case for us (no client certificates are configured); built per handler
            # so that a certificate can never leak into another download's context.
            context: ssl.SSLContext = super()._make_sslcontext(legacy_ssl_support)
            return context
        legacy = self.legacy_ssl_support if legacy_ssl_support is None else legacy_ssl_support
        return _ssl_context(
            verify=bool(self.verify),
            legacy=bool(legacy),
            use_certifi=not self.prefer_system_certs,
        )

    def _create_instance(
        self, proxies: Any, cookiejar: Any, legacy_ssl_support: bool | None = None
    ) -> urllib.request.OpenerDirector:
        # Like UrllibRH's opener, minus proxy, data:, ftp: and file: handlers.
        opener = urllib.request.OpenerDirector()
        for handler in (
            _GuardedHTTPHandler(
                self._guard,
                on_connect=self._on_connect,
                debuglevel=0,
                context=self._make_sslcontext(legacy_ssl_support=legacy_ssl_support),
                source_address=self.source_address,
            ),
            urllib.request.HTTPCookieProcessor(cookiejar),
            urllib.request.UnknownHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
            _GuardedRedirectHandler(self._guard),
        ):
            opener.add_handler(handler)
        opener.addheaders = []
        return opener

    def _send(self, request: Any) -> Any:
        if self._cancel is not None and self._cancel.is_set():
            raise _CancelledRequest("download cancelled")
        if any(url for key, url in self._get_proxies(request).items() if key != "no"):
            # A proxy would connect on our behalf to addresses the guard never sees.
            raise _RefusedRequest(UrlRefused("URL refused: downloads may not use a proxy"))
        try:
            self._guard.check_url(request.url)
        except UrlRefused as e:
            raise _RefusedRequest(e) from e
        return super()._send(request)


@functools.cache
def _ssl_context(*, verify: bool, legacy: bool, use_certifi: bool) -> ssl.SSLContext:
    """yt-dlp's TLS context for these settings, made once per process and shared.

    Making one loads the whole CA bundle (about 25 ms of CPU), and yt-dlp makes one per request
    handler, i.e. per download. A context holds only settings and trusted roots, which nothing
    changes after this, and OpenSSL lets threads open connections from one context at once.
    What each download must not share stays per download: its handler, opener and cookie jar,
    and the guard that checks every address it connects to.
    """
    context: ssl.SSLContext = make_ssl_context(
        verify=verify, legacy_support=legacy, use_certifi=use_certifi
    )
    return context


def _default_extractors() -> dict[str, Any]:
    """yt-dlp's default extractors by key, in its own order, worked out once per process.

    `YoutubeDL.add_default_info_extractors` rebuilds this list for every instance, and its
    de-duplication is quadratic in the ~1,800 extractors: about 60 ms of CPU per download, more
    than the rest of setting one up. The list depends only on the extractors installed and the
    plugins loaded (none: `plugin_dirs` is emptied before the first instance), so it is the same
    every time; it is asked of yt-dlp itself, on an instance that is then dropped. Worked out
    again only if an extractor is registered in the process after (a test's loopback stand-in
    for a site it cannot reach: tests/test_not_ready.py).
    """
    import_extractors()  # yt-dlp's own fill its registry first: the count below is theirs too
    return _extractors_of(len(registered_extractors.value))


@functools.cache
def _extractors_of(registered: int) -> dict[str, Any]:
    """`_default_extractors` while yt-dlp holds `registered` extractor classes."""
    holder = YoutubeDL({"quiet": True, "logger": _QuietLog(), "cachedir": False}, auto_init=False)
    YoutubeDL.add_default_info_extractors(holder)
    return dict(holder._ies)


class _GuardedYoutubeDL(YoutubeDL):  # type: ignore[misc]
    """A YoutubeDL whose request director holds `_GuardedRH` and nothing else."""

    def __init__(
        self,
        params: dict[str, Any],
        *,
        guard: UrlGuard,
        cancel: threading.Event | None,
        on_connect: OnConnect | None = None,
    ) -> None:
        self._spool_handler = functools.partial(
            _GuardedRH, guard=guard, cancel=cancel, on_connect=on_connect
        )
        # yt-dlp would import plugin code from the user's config folders (~/.config/yt-dlp/
        # plugins and the like) when its first instance is made; a server runs only the code
        # it was installed with.
        plugin_dirs.value = []
        super().__init__(params)

    def add_default_info_extractors(self) -> None:
        if self.params.get("allowed_extractors") is not None:
            super().add_default_info_extractors()
            return
        default = _default_extractors()
        # What `add_info_extractor` does for a class, for all of them at once (one call each
        # was still 6 ms a download); classes are shared, as yt-dlp shares them.
        self._ies.update(default)
        for ie in default.values():
            if not isinstance(ie, type):
                # An extractor given as an instance is bound to its YoutubeDL: a fresh one each
                # (it keeps its place: the key is there already).
                self.add_info_extractor(type(ie)())

    def _forceprint(self, key: str, info_dict: Any) -> Any:
        # yt-dlp renders the formats, thumbnails and subtitles tables at each of its print
        # points (seven per download), printed or not: a fifth of a download's CPU here. We
        # never ask it to print; if someone does, yt-dlp's own method runs.
        if any(v for k, v in self.params.items() if k.startswith(("force", "print_to_file"))):
            return super()._forceprint(key, info_dict)
        return None if info_dict is None else dict(info_dict)

    def _wait_for_video(self, ie_result: dict[str, Any] | None = None) -> None:
        # yt-dlp's own hook for media not out yet, given what the extractor found before any
        # format is chosen (with no argument, after a channel that is not live: nothing to
        # say). Its wait would hold the node's download slot for hours; Spool says so instead,
        # and the job waits outside any node (domain/not_ready.py).
        info = ie_result or {}
        if info.get("_type", "video") != "video" or info.get("formats") or info.get("url"):
            return
        release = info.get("release_timestamp")
        release = float(release) if isinstance(release, (int, float)) else None
        if info.get("live_status") == "is_upcoming" or (release and release > time.time()):
            raise _Upcoming(release)

    @functools.cached_property
    def _request_director(self) -> Any:
        # The stock director holds every registered handler (requests, curl_cffi, websockets):
        # none of them would ask the guard.
        return self.build_request_director([self._spool_handler])


class _QuietLog:
    """Takes yt-dlp's console output and sends it to our logger instead."""

    def debug(self, msg: str) -> None:
        logger.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        logger.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        logger.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        # The failure itself reaches the caller as DownloadFailed; this is only context.
        logger.info("yt-dlp: %s", msg)


# --- format choice --------------------------------------------------------------------------------


def _format_sort(max_resolution: str) -> list[str]:
    """yt-dlp's `format_sort` for a resolution cap; its `res` field is the shorter side."""
    value = max_resolution.strip().lower()
    if value in ("", "best"):
        return []
    m = _RESOLUTIONS.fullmatch(value)
    if m is None:
        raise ValueError(
            f"max_resolution must be 'best' or a number of lines, not {max_resolution!r}"
        )
    # `res:N` ranks formats whose shorter side is at most N first (best of them on top), and
    # only if none is that small, the smallest larger one: a cap, with a fallback.
    return [f"res:{int(m.group(1))}"]


def _has(fmt: dict[str, Any], codec_field: str) -> bool:
    """Whether a format carries that track; unknown codecs (direct files) count as present."""
    return fmt.get(codec_field) != "none"


def _kind(fmt: dict[str, Any]) -> FileKind:
    if not _has(fmt, "vcodec"):
        return "audio"
    if not _has(fmt, "acodec"):
        return "video"
    return "av"


def _selector(
    audio_only: bool, chosen: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], Iterator[dict[str, Any]]]:
    """A yt-dlp format selector; yielding two formats makes yt-dlp fetch two files, unmerged.

    Video: the best format with video; if that has no audio, it and the best audio-only format
    (two files for the mux stage), or, without an audio-only format, the best format with both.
    Audio only: the best audio-only format, else the best format that has audio.
    `chosen` receives the picks so progress can weigh them.
    """

    def select(ctx: dict[str, Any]) -> Iterator[dict[str, Any]]:
        # ctx["formats"] is sorted worst to best by yt-dlp, honouring `format_sort`.
        formats = [
            f
            for f in ctx["formats"]
            if determine_protocol(f) in _NATIVE_PROTOCOLS
            and (_has(f, "vcodec") or _has(f, "acodec"))
        ]
        audio = [f for f in formats if not _has(f, "vcodec")]
        picks: list[dict[str, Any]] = []
        if audio_only:
            with_audio = audio or [f for f in formats if _has(f, "acodec")]
            picks = with_audio[-1:]
        else:
            video = [f for f in formats if _has(f, "vcodec")]
            if not video:
                picks = audio[-1:]
            elif _has(video[-1], "acodec"):
                picks = [video[-1]]
            elif audio:
                picks = [video[-1], audio[-1]]
            else:
                both = [f for f in video if _has(f, "acodec")]
                picks = both[-1:] or [video[-1]]
        chosen[:] = picks
        yield from picks

    return select


class _SocketCutter:
    """Shuts every socket of one download as soon as its cancel event is set.

    yt-dlp looks at the cancel event only between chunks (the progress hook) and between
    requests: a read blocked on a source that drips or has gone silent would hold the download,
    and the process stopping under it, for up to the socket timeout. A shut socket's read
    returns at once, and the request that follows is refused by `_GuardedRH._send`.
    """

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="download-cutter", daemon=True)

    def opened(self, sock: socket.socket) -> None:
        """`OnConnect`: a socket of this download."""
        with self._lock:
            self._sockets.add(sock)
        if self._cancel.is_set():
            _shut(sock)

    def __enter__(self) -> _SocketCutter:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finished.set()

    def _watch(self) -> None:
        # A threading.Event cannot call back: look at it a few times a second, until the end.
        while not self._finished.is_set():
            if self._cancel.wait(_CUT_POLL_SECONDS):
                with self._lock:
                    sockets = list(self._sockets)
                for sock in sockets:
                    _shut(sock)
                return


_CUT_POLL_SECONDS = 0.2


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


# --- progress -------------------------------------------------------------------------------------


class _Progress:
    """Turns yt-dlp's per-chunk hook calls into at most one report a second or per 5 %."""

    def __init__(
        self,
        on_progress: Callable[[DownloadProgress], None] | None,
        cancel: threading.Event | None,
        chosen: list[dict[str, Any]],
    ) -> None:
        self._on_progress = on_progress
        self._cancel = cancel
        self._chosen = chosen
        # format_id -> [downloaded, total or None, finished]
        self._files: dict[str, list[Any]] = {}
        self._last_time = time.monotonic()
        self._last_percent = 0.0
        self._percent = 0.0

    def hook(self, d: dict[str, Any]) -> None:
        """yt-dlp progress hook: the one place a running download can be stopped."""
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled("download cancelled")
        if self._on_progress is None:
            return
        format_id = (d.get("info_dict") or {}).get("format_id")
        if format_id is None or not any(f.get("format_id") == format_id for f in self._chosen):
            return  # a subtitle: too small to weigh
        total = d.get("total_bytes") or d.get("total_bytes_estimate")
        finished = d.get("status") == "finished"
        downloaded = int(d.get("downloaded_bytes") or (total if finished else 0) or 0)
        self._files[format_id] = [downloaded, int(total) if total else None, finished]
        snapshot = self._snapshot(d)
        now = time.monotonic()
        moved = snapshot.percent is not None and snapshot.percent - self._last_percent >= (
            _PROGRESS_PERCENT
        )
        if moved or now - self._last_time >= _PROGRESS_SECONDS:
            self._last_time = now
            self._last_percent = snapshot.percent or self._last_percent
            self._emit(snapshot)

    def _snapshot(self, d: dict[str, Any]) -> DownloadProgress:
        sizes: list[int | None] = []
        fractions: list[float | None] = []
        downloaded = 0
        for fmt in self._chosen:
            done, total, finished = self._files.get(fmt["format_id"], [0, None, False])
            downloaded += done
            estimate = total or fmt.get("filesize") or fmt.get("filesize_approx")
            sizes.append(int(estimate) if estimate else None)
            if finished:
                fractions.append(1.0)
            elif fmt["format_id"] not in self._files:
                fractions.append(0.0)
            else:
                fractions.append(min(1.0, done / total) if total else None)
        known_sizes = [s for s in sizes if s is not None]
        total_bytes = sum(known_sizes) if len(known_sizes) == len(sizes) and sizes else None
        percent: float | None
        if total_bytes:
            percent = 100.0 * downloaded / total_bytes
        elif fractions and all(f is not None for f in fractions):
            # Files of unknown size weigh the same.
            percent = 100.0 * sum(f or 0.0 for f in fractions) / len(fractions)
        else:
            percent = None
        if percent is not None:
            # Never backwards (a later file's size may raise the total), never 100 before the end.
            self._percent = max(self._percent, min(percent, 99.9))
            percent = round(self._percent, 1)
        speed = d.get("speed")
        eta = d.get("eta")
        if total_bytes and speed:
            eta = max(0.0, (total_bytes - downloaded) / speed)
        return DownloadProgress(
            downloaded_bytes=downloaded,
            total_bytes=total_bytes,
            speed=float(speed) if speed else None,
            eta=float(eta) if eta is not None else None,
            percent=percent,
        )

    def finish(self, total_bytes: int, seconds: float) -> None:
        """The closing report: always 100 %."""
        self._emit(
            DownloadProgress(
                downloaded_bytes=total_bytes,
                total_bytes=total_bytes,
                speed=total_bytes / seconds if seconds > 0 else None,
                eta=0.0,
                percent=100.0,
            )
        )

    def _emit(self, progress: DownloadProgress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(progress)
        except Exception:
            # Reporting progress is a side show: a failing callback must not fail the download.
            logger.exception("progress callback failed")


# --- errors ---------------------------------------------------------------------------------------

_CONTENT_PROBLEMS = re.compile(
    r"\bprivate\b|unavailable|not available|\bremoved\b|\bdeleted\b|terminated|\bgeo|"
    r"\bcountr|\bregion|members[- ]only|premium|subscri|sign in|log ?in|\bage\b|"
    r"age[- ]restricted|copyright|blocked|does not exist",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOT_READY = re.compile(
    # What sites say of media not out yet, as yt-dlp's extractors pass it on: YouTube's
    # "This live event will begin in 3 hours", "Premieres in 2 days", "Premiere will begin
    # shortly", "This video is (still) being processed"; others' "Livestream has not yet
    # started", "Twitter Space not started yet", "This live event is scheduled for ...",
    # "This video is processing" (extractor/*.py `raise_no_formats(..., expected=True)`).
    r"\bwill begin\b|\bpremieres? in\b|\bha(?:s|ve) not (?:yet )?started\b|"
    r"\bnot started yet\b|\bis scheduled for\b|\bbeing processed\b|\bvideo is processing\b",
    re.IGNORECASE,
)
_READY_IN = re.compile(r"\bin (\d+|an?|one) (second|minute|hour|day|week)s?\b", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def _ready_at(message: str, now: float) -> float | None:
    """When a message like "will begin in 3 hours" says the media is out (seconds since the
    epoch, from `now`); None when it says no time."""
    m = _READY_IN.search(message)
    if m is None:
        return None
    count = int(m.group(1)) if m.group(1).isdigit() else 1
    return now + count * _UNIT_SECONDS[m.group(2).lower()]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every exception it wraps (yt-dlp keeps them in several places)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        inner = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
        cause = getattr(e, "cause", None)
        todo += [
            inner if isinstance(inner, BaseException) else None,
            cause if isinstance(cause, BaseException) else None,
            e.__cause__,
            e.__context__,
        ]


def _clean(message: str) -> str:
    """A yt-dlp message without its console dressing: colour, `ERROR:`, `[generic] id:`."""
    # yt-dlp writes "\r" before a "[download]" line (a console's line rewrite): not a new line.
    plain = _ANSI.sub("", message).replace("\r", "").strip()
    text = plain.splitlines()[0] if plain else ""
    text = re.sub(r"^(ERROR|WARNING):\s*", "", text)
    text = re.sub(r"^\[[\w:.-]+\]\s*(?:[^:\s]+:\s+)?", "", text)
    text = re.sub(r"\s*\(caused by .*\)$", "", text)
    text = re.sub(r";?\s*please report this issue.*$", "", text, flags=re.IGNORECASE)
    return text.strip().rstrip(".") or "unknown error"


_ENDED_EARLY = re.compile(r"Downloaded (\d+) bytes, expected (\d+) bytes")


def _without_paths(failure: DownloadFailed, dest: Path) -> DownloadFailed:
    """`failure` with every path under `dest` (the node's temp names) said in user terms."""
    reason = re.sub(re.escape(str(dest)) + r"[^\s'\"]*", "the downloaded file", str(failure))
    if isinstance(failure, NotReady):
        return NotReady(reason, ready_at=failure.ready_at)
    return DownloadFailed(reason, kind=failure.kind, retryable=failure.retryable)


def _failure(
    exc: BaseException, url: str, *, audio_only: bool, clock: Callable[[], float] = time.time
) -> DownloadFailed:
    """The user-facing DownloadFailed for whatever yt-dlp raised (`NotReady` for media not out
    yet; `clock` reads a release time said as "in 3 hours")."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, _Upcoming):
            return NotReady(
                "the source lists it as upcoming (a premiere or a live stream not started yet)",
                ready_at=e.release_timestamp,
            )
    for e in chain:
        if isinstance(e, _RefusedRequest):
            return _refusal(e.refusal)
    for e in chain:
        if isinstance(e, socket.gaierror):
            # yt-dlp's own lookup of a host (a redirect's, or one the guard had admitted by
            # name) failed: the same DNS failure as the guard's.
            return _refusal(UnresolvedHost(urllib.parse.urlsplit(url).hostname or url, e))
    for e in chain:
        if isinstance(e, ExtractorError) and _NOT_READY.search(e.orig_msg or ""):
            reason = _clean(e.orig_msg)
            return NotReady(reason, ready_at=_ready_at(reason, clock()))
    for e in chain:
        if isinstance(e, HTTPError):
            return _http_failure(e)
    for e in chain:
        if (ended := _ENDED_EARLY.search(str(e))) is not None:
            got, expected = ended.groups()
            return DownloadFailed(
                f"The source ended early: it sent {got} of {expected} bytes", retryable=True
            )
    for e in chain:
        if isinstance(e, GeoRestrictedError):
            return DownloadFailed(
                f"The source is not available in this region: {_clean(e.orig_msg)}",
                kind="warning",
                retryable=False,
            )
        if isinstance(e, (UnsupportedError, UnsupportedRequest)):
            return DownloadFailed(
                f"Unsupported URL: no downloadable media found at {url}", retryable=False
            )
    for e in chain:
        if isinstance(e, (TimeoutError, socket.timeout)) or "timed out" in str(e).lower():
            return DownloadFailed(
                f"Timed out waiting for the source at {url}; it may be slow or unreachable",
                retryable=True,
            )
    for e in chain:
        if isinstance(e, CertificateVerifyError):
            return DownloadFailed(
                f"The source's TLS certificate is not trusted at {url}: {_clean(str(e))}",
                retryable=False,
            )
    for e in chain:
        if isinstance(e, (TransportError, ConnectionError)):
            return DownloadFailed(
                f"Could not fetch from the source at {url}: {_clean(str(e))}", retryable=True
            )
    for e in chain:
        if isinstance(e, OSError) and e.filename is not None:
            # Writing on this node's disk failed (full, gone): what failed, not which temp file.
            return DownloadFailed(
                f"Could not write the download on this node: {e.strerror or 'disk error'}",
                retryable=True,
            )
    for e in chain:
        message = str(e)
        if message.startswith("Requested format is not available") or (
            isinstance(e, ExtractorError) and e.orig_msg.startswith("Requested format")
        ):
            what = "audio" if audio_only else "media"
            return DownloadFailed(f"No {what} format at {url} can be downloaded", retryable=False)
        if "ffmpeg" in message.lower():
            # yt-dlp wanted FFmpeg to fetch the stream (live HLS, or features its own HLS
            # downloader lacks); FFmpeg would fetch past the guard, so it is never given URLs.
            return DownloadFailed(
                f"The stream at {url} cannot be downloaded: it is live, or needs features "
                "only FFmpeg's downloader has, which Spool does not use for fetching",
                retryable=False,
            )
    for e in chain:
        if isinstance(e, ExtractorError) and e.expected:
            reason = _clean(e.orig_msg)
            if _CONTENT_PROBLEMS.search(reason):
                return DownloadFailed(
                    f"The media is not available: {reason}", kind="warning", retryable=False
                )
            return DownloadFailed(f"Download failed: {reason}", retryable=False)
    return DownloadFailed(f"Download failed: {_clean(str(exc))}", retryable=True)


def _refusal(refusal: UrlRefused) -> DownloadFailed:
    # A policy refusal, or a host that does not exist: retrying cannot change either. Only DNS
    # that did not answer this time is worth asking again.
    retryable = isinstance(refusal, UnresolvedHost) and not refusal.final
    return DownloadFailed(str(refusal), retryable=retryable)


def _http_failure(e: Any) -> DownloadFailed:
    status = int(e.status)
    reason = e.reason or ""
    where = getattr(getattr(e, "response", None), "url", None) or "the source"
    message = f"Source answered HTTP {status} {reason}".rstrip() + f" for {where}"
    if status in (403, 404, 410, 451):
        # Forbidden, gone, or withheld: the content is not there for us; retrying won't help.
        return DownloadFailed(message, kind="warning", retryable=False)
    if status in (408, 425, 429) or status >= 500:
        return DownloadFailed(message, retryable=True)
    return DownloadFailed(message, retryable=False)


# --- the download ---------------------------------------------------------------------------------


def _iso_date(value: Any) -> str | None:
    text = str(value) if value else ""
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else None


def _media_info(info: dict[str, Any], chosen: list[dict[str, Any]]) -> MediaInfo:
    video = next((f for f in chosen if _has(f, "vcodec")), None)
    audio = next((f for f in chosen if _has(f, "acodec")), None)
    duration = info.get("duration")
    width = video.get("width") if video else None
    height = video.get("height") if video else None
    return MediaInfo(
        title=info.get("title"),
        description=info.get("description"),
        release_date=_iso_date(info.get("release_date") or info.get("upload_date")),
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        webpage_url=info.get("webpage_url"),
        extractor=info.get("extractor"),
        video_codec=video.get("vcodec") if video else None,
        audio_codec=audio.get("acodec") if audio else None,
        width=int(width) if width else None,
        height=int(height) if height else None,
        extractor_key=_text(info.get("extractor_key")),
        item_id=_text(info.get("id")),
    )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _item_name(info: dict[str, Any], url: str) -> ItemName | None:
    """The name yt-dlp gives an extracted item (as `YoutubeDL._make_archive_id` reads it);
    None when it gives none."""
    extractor_key = _text(info.get("extractor_key") or info.get("ie_key"))
    item_id = _text(info.get("id"))
    if extractor_key is None or item_id is None:
        return None
    return ItemName(extractor_key, item_id, _text(info.get("webpage_url")) or url)


_SUBTITLE_SUFFIXES = frozenset(
    {".vtt", ".srt", ".ass", ".ssa", ".ttml", ".dfxp", ".srv1", ".srv2", ".srv3", ".json3", ".lrc"}
)
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".avif"})


def _collected_files(
    info: dict[str, Any], dest: Path, before: set[Path], *, subtitles: bool, thumbnail: bool
) -> list[DownloadedFile]:
    files: list[DownloadedFile] = []
    media: set[str] = set()
    for fmt in info.get("requested_downloads") or []:
        path = fmt.get("filepath")
        if not path or os.path.abspath(path) in media or not os.path.isfile(path):
            continue
        media.add(os.path.abspath(path))
        files.append(DownloadedFile(path, _kind(fmt), fmt.get("format_id"), os.path.getsize(path)))
    # yt-dlp writes subtitles and thumbnails under one name and then moves them to the name the
    # template gives, while its info dict keeps the first: so look for them in `dest` instead.
    for path in sorted(set(dest.iterdir()) - before):
        if os.path.abspath(path) in media or not path.is_file():
            continue
        suffix = path.suffix.lower()
        kind: FileKind | None = None
        if subtitles and suffix in _SUBTITLE_SUFFIXES:
            kind = "subtitle"
        elif thumbnail and suffix in _IMAGE_SUFFIXES:
            kind = "thumbnail"
        if kind is not None:
            files.append(DownloadedFile(str(path), kind, None, path.stat().st_size))
    return files


def _remove_new_files(dest: Path, before: set[Path]) -> None:
    """Delete what this download left in `dest` (parts, fragments, finished files)."""
    for path in sorted(dest.rglob("*"), reverse=True):
        if path in before:
            continue
        try:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        except OSError:
            logger.warning("could not remove %s after a failed download", path)


class DownloadOptions(TypedDict):
    """What `download` takes from a job's options."""

    audio_only: bool
    max_resolution: str
    download_subtitles: bool
    download_thumbnail: bool


def download_options(options: JobOptions) -> DownloadOptions:
    """A job's options as `download`'s arguments."""
    return DownloadOptions(
        audio_only=is_audio_only(options),
        max_resolution=options.max_resolution,
        download_subtitles=options.download_subtitles,
        download_thumbnail=options.download_thumbnail,
    )


def download(
    url: str,
    dest: Path,
    *,
    guard: UrlGuard,
    audio_only: bool = DEFAULTS.audio_only,
    max_resolution: str = DEFAULTS.max_resolution,
    download_subtitles: bool = DEFAULTS.download_subtitles,
    download_thumbnail: bool = DEFAULTS.download_thumbnail,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    max_seconds: int | None = None,
    too_long: Callable[[float], str] | None = None,
    already_have: Callable[[ItemName], str | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> DownloadResult:
    """Fetch `url` into `dest` (blocking): one "av" file, or separate "video" and "audio" files.

    With `max_seconds`, a source whose extractor reports a longer duration is refused before
    any media is fetched: DownloadFailed (not retryable) with `too_long(duration)` as reason.
    `already_have` is asked, once the item's info is extracted and before any media is
    fetched, what already holds it (None: nothing); an answer stops the download with
    AlreadyHave, and an error it raises ends the download with that error.
    Raises DownloadFailed with a user-facing reason (`NotReady` for media not out yet, whose
    release time `clock` reads), or DownloadCancelled once `cancel` is set; either way the
    files this call created in `dest` are removed.
    """
    format_sort = _format_sort(max_resolution)  # a bad value is the caller's bug: fail first
    try:
        # The handler checks this URL again (and every later one); asking first gives a plain
        # refusal before yt-dlp starts, e.g. for a scheme it would otherwise call unsupported.
        guard.check_url(url)
    except UrlRefused as e:
        raise _refusal(e) from None
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.rglob("*"))
    chosen: list[dict[str, Any]] = []
    progress = _Progress(on_progress, cancel, chosen)
    params: dict[str, Any] = {
        # Library use reads no configuration files; these keep it off the console and disk.
        "logger": _QuietLog(),
        "quiet": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "cachedir": False,
        "paths": {"home": str(dest), "temp": str(dest)},
        # One file per format; subtitles and thumbnail named once, so the second file of a
        # video+audio pair finds them written instead of writing a copy.
        "outtmpl": {
            "default": "media.%(format_id)s.%(ext)s",
            "subtitle": "media.%(ext)s",
            "thumbnail": "media.%(ext)s",
        },
        "restrictfilenames": True,
        "windowsfilenames": True,
        # One item, even when the URL is a playlist; a batch of episodes is made elsewhere.
        "noplaylist": True,
        "playlist_items": "1",
        "format": _selector(audio_only, chosen),
        "format_sort": format_sort,
        # Fetch HLS and DASH with yt-dlp's own downloaders, so every segment request passes the
        # guard; and point yt-dlp's FFmpeg lookup at nothing, so it can neither hand a stream to
        # FFmpeg (which would fetch URLs on its own) nor merge or "fix up" files (the mux stage
        # does that).
        "hls_prefer_native": True,
        "external_downloader": {"default": "native"},
        "ffmpeg_location": os.path.join(os.devnull, "no-ffmpeg"),
        "fixup": "never",
        "proxy": "",
        "socket_timeout": 20,
        "retries": 3,
        "fragment_retries": 3,
        "extractor_retries": 1,
        "writesubtitles": download_subtitles,
        "writethumbnail": download_thumbnail,
        "progress_hooks": [progress.hook],
    }
    # yt-dlp asks its match filter about an extracted item before fetching anything; an answer
    # other than None skips the item, and the refusal is raised once extract_info returns.
    filters: list[Callable[[dict[str, Any], bool], str | None]] = []
    refused_duration: list[float] = []
    held: list[AlreadyHave] = []
    asked: dict[ItemName, str | None] = {}
    lookup_failed: list[Exception] = []
    if already_have is not None:
        have = already_have

        def held_already(info: dict[str, Any], incomplete: bool) -> str | None:
            item = None if incomplete else _item_name(info, url)
            if item is None:
                return None
            if item not in asked:  # yt-dlp looks at an item twice: ask once
                try:
                    holder = asked[item] = have(item)
                except Exception as exc:
                    lookup_failed.append(exc)
                    return "the archive could not be read"
                if holder is not None:
                    held.append(AlreadyHave(item, holder, _text(info.get("title"))))
            return None if asked[item] is None else "already fetched"

        filters.append(held_already)
    if max_seconds is not None:

        def longer_than_allowed(info: dict[str, Any], incomplete: bool) -> str | None:
            duration = info.get("duration")
            if isinstance(duration, (int, float)) and duration > max_seconds:
                refused_duration.append(float(duration))
                return "longer than allowed"  # yt-dlp skips the entry: nothing is fetched
            return None

        filters.append(longer_than_allowed)
    if filters:

        def match_filter(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
            return next((r for f in filters if (r := f(info, incomplete)) is not None), None)

        params["match_filter"] = match_filter
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            cutter = stack.enter_context(_SocketCutter(cancel)) if cancel is not None else None
            ydl = stack.enter_context(
                _GuardedYoutubeDL(
                    params,
                    guard=guard,
                    cancel=cancel,
                    on_connect=cutter.opened if cutter is not None else None,
                )
            )
            info = ydl.extract_info(url, download=True)
    except BaseException as exc:
        cancelled = (cancel is not None and cancel.is_set()) or any(
            isinstance(e, (_Cancelled, _CancelledRequest)) for e in _chain(exc)
        )
        _remove_new_files(dest, before)
        if cancelled:
            raise DownloadCancelled(f"download of {url} cancelled") from None
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit: not ours to translate
        failure = _failure(exc, url, audio_only=audio_only, clock=clock)
        raise _without_paths(failure, dest) from None
    if cancel is not None and cancel.is_set():
        _remove_new_files(dest, before)
        raise DownloadCancelled(f"download of {url} cancelled")
    if lookup_failed or held:
        _remove_new_files(dest, before)
        raise lookup_failed[0] if lookup_failed else held[0]
    if refused_duration:
        _remove_new_files(dest, before)
        seconds_long = refused_duration[0]
        raise DownloadFailed(
            too_long(seconds_long) if too_long else f"The media is {seconds_long:g} s long"
        )
    if info is None:
        _remove_new_files(dest, before)
        raise DownloadFailed(f"Download failed: nothing could be fetched from {url}")
    if info.get("_type") == "playlist":
        entries = [e for e in info.get("entries") or [] if e]
        if not entries:
            _remove_new_files(dest, before)
            raise DownloadFailed(f"Download failed: the playlist at {url} has no media")
        info = entries[0]
    files = _collected_files(
        info, dest, before, subtitles=download_subtitles, thumbnail=download_thumbnail
    )
    if not any(f.kind in ("video", "audio", "av") for f in files):
        _remove_new_files(dest, before)
        raise DownloadFailed(f"Download failed: no media file was fetched from {url}")
    seconds = time.monotonic() - started
    total = sum(f.size for f in files)
    progress.finish(total, seconds)
    return DownloadResult(
        files=files, info=_media_info(info, chosen), total_bytes=total, seconds=seconds
    )
