"""What a media URL holds, without downloading it: yt-dlp's `extract_info(download=False)`.

The extraction runs through the downloader's guarded YoutubeDL, so every request it makes (the
page, manifests, each redirect hop, each socket's address) passes the same `UrlGuard` as a
download does. `extract` is blocking; the API runs it as a probe (adapters/probes.py), which
bounds its total time and stops it at the deadline.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from yt_dlp.globals import plugin_dirs

# The downloader's guarded networking and its error translation are reused, not copied: one
# place decides what a request may reach and how yt-dlp's failures read to a user.
from adapters.downloader import (
    DownloadFailed,
    _failure,
    _GuardedYoutubeDL,
    _iso_date,
    _QuietLog,
    _refusal,
)
from adapters.probes import Probe
from adapters.ssrf import UrlGuard, UrlRefused

PER_READ_TIMEOUT = 20.0
"""Seconds one socket operation may take when `extract` runs outside a probe."""


class Thumbnail(msgspec.Struct, frozen=True):
    url: str
    width: int | None
    height: int | None


class Subtitle(msgspec.Struct, frozen=True):
    url: str
    ext: str | None


class Format(msgspec.Struct, frozen=True):
    """One format the source offers. Codecs are yt-dlp's: "none" = no such track, null = unknown.

    `tbr` is the total bitrate in kbit/s; `filesize` is exact (null when the source does not
    say), `filesize_approx` yt-dlp's estimate from bitrate and duration.
    """

    format_id: str
    ext: str | None
    vcodec: str | None
    acodec: str | None
    width: int | None
    height: int | None
    resolution: str | None
    fps: float | None
    tbr: float | None
    filesize: int | None
    filesize_approx: int | None
    protocol: str | None


class MediaMetadata(msgspec.Struct, frozen=True):
    """What a URL holds. For a playlist or feed, `is_playlist` and `entries` (how many items);
    its formats, subtitles and duration are then empty, as they belong to each item."""

    title: str | None
    duration: float | None
    description: str | None
    uploader: str | None
    release_date: str | None  # ISO date
    webpage_url: str | None
    extractor: str | None
    is_live: bool
    is_playlist: bool
    entries: int | None
    thumbnails: list[Thumbnail]
    subtitles: dict[str, list[Subtitle]]
    formats: list[Format]


class MetadataFailed(Exception):
    """Extraction did not succeed; str() is the reason a user can act on."""


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _format(f: dict[str, Any]) -> Format:
    return Format(
        format_id=str(f.get("format_id")),
        ext=_str(f.get("ext")),
        vcodec=_str(f.get("vcodec")),
        acodec=_str(f.get("acodec")),
        width=_int(f.get("width")),
        height=_int(f.get("height")),
        resolution=_str(f.get("resolution")),
        fps=_float(f.get("fps")),
        tbr=_float(f.get("tbr")),
        filesize=_int(f.get("filesize")),
        filesize_approx=_int(f.get("filesize_approx")),
        protocol=_str(f.get("protocol")),
    )


def _metadata(info: dict[str, Any]) -> MediaMetadata:
    playlist = info.get("_type") in ("playlist", "multi_video")
    entries = info.get("entries")
    thumbnails = [
        Thumbnail(url=t["url"], width=_int(t.get("width")), height=_int(t.get("height")))
        for t in info.get("thumbnails") or []
        if isinstance(t, dict) and _str(t.get("url"))
    ]
    subtitles = {
        str(lang): [
            Subtitle(url=s["url"], ext=_str(s.get("ext")))
            for s in tracks
            if isinstance(s, dict) and _str(s.get("url"))
        ]
        for lang, tracks in (info.get("subtitles") or {}).items()
        if isinstance(tracks, list)
    }
    return MediaMetadata(
        title=_str(info.get("title")),
        duration=_float(info.get("duration")),
        description=_str(info.get("description")),
        uploader=_str(info.get("uploader")),
        release_date=_iso_date(info.get("release_date") or info.get("upload_date")),
        webpage_url=_str(info.get("webpage_url")),
        extractor=_str(info.get("extractor_key") or info.get("extractor")),
        is_live=bool(info.get("is_live")),
        is_playlist=playlist,
        entries=len(list(entries)) if playlist and entries is not None else None,
        thumbnails=thumbnails,
        subtitles={lang: tracks for lang, tracks in subtitles.items() if tracks},
        formats=[_format(f) for f in info.get("formats") or [] if isinstance(f, dict)],
    )


def _any_format(ctx: dict[str, Any]) -> Any:
    """A format selector that picks one format, whatever there is.

    `extract_info` runs format selection even without downloading; yt-dlp's default selector
    wants FFmpeg to merge separate video and audio and would fail on a DASH manifest for want
    of it. We only want the list, which yt-dlp has sorted and completed by now.
    """
    yield from ctx["formats"][-1:]


def extract(url: str, *, guard: UrlGuard, probe: Probe | None = None) -> MediaMetadata:
    """What `url` holds (blocking); nothing is downloaded but pages and manifests.

    Raises MetadataFailed with a user-facing reason (a refused URL, an HTTP error, an
    unsupported page). Under a `probe`, each socket operation is bounded by the time left and
    the probe's `stop` ends the extraction at once (its sockets shut, no further request).
    """
    try:
        # A plain refusal before yt-dlp starts; the handler asks again on every request.
        guard.check_url(url)
    except UrlRefused as e:
        raise MetadataFailed(str(_refusal(e))) from None
    params: dict[str, Any] = {
        "logger": _QuietLog(),
        "quiet": True,
        "noprogress": True,
        "color": {"stdout": "no_color", "stderr": "no_color"},
        "cachedir": False,
        "skip_download": True,
        # A playlist or feed answers with its item count; resolving each item would cost one
        # page fetch per episode.
        "extract_flat": "in_playlist",
        "format": _any_format,
        # As in the downloader: yt-dlp may neither find FFmpeg (which fetches URLs past the
        # guard) nor use a proxy.
        "ffmpeg_location": os.path.join(os.devnull, "no-ffmpeg"),
        "hls_prefer_native": True,
        "proxy": "",
        "socket_timeout": probe.remaining() if probe else PER_READ_TIMEOUT,
        "extractor_retries": 0,
        "retries": 0,
    }
    plugin_dirs.value = []  # run only the extractors we were installed with
    try:
        with _GuardedYoutubeDL(
            params,
            guard=guard,
            cancel=probe.cancel if probe else None,
            on_connect=probe.opened if probe else None,
        ) as ydl:
            info = ydl.extract_info(url, download=False)
    except Exception as exc:
        failure = _failure(exc, url, audio_only=False)
        raise MetadataFailed(_reworded(failure)) from None
    if not isinstance(info, dict):
        raise MetadataFailed(f"Could not read metadata: nothing found at {url}")
    return _metadata(ydl.sanitize_info(info))


def _reworded(failure: DownloadFailed) -> str:
    """The downloader's reason, minus words that say a download was attempted."""
    message = str(failure)
    for prefix in ("Download failed: ",):
        if message.startswith(prefix):
            return "Could not read metadata: " + message.removeprefix(prefix)
    return message
