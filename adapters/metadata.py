"""What a media URL holds, without downloading it: yt-dlp's `extract_info(download=False)`.

The extraction runs through the downloader's guarded YoutubeDL, so every request it makes (the
page, manifests, each redirect hop, each socket's address) passes the same `UrlGuard` as a
download does. `extract` is blocking; the API runs it as a probe (adapters/probes.py), which
bounds its total time and stops it at the deadline.

Of a direct media file (a URL to an .mp4, .mkv, .webm... rather than a page), yt-dlp knows only
the URL and container; FFmpeg then reads its duration, codecs, resolution and bitrate from the
file's first bytes (and, for an MP4 indexed at its end, the tail) through the same guarded
networking, capped in bytes and time (adapters/remote_probe.py).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import msgspec
from yt_dlp.globals import plugin_dirs
from yt_dlp.networking import Request

from spool.adapters import remote_probe

# The downloader's guarded networking and its error translation are reused, not copied: one
# place decides what a request may reach and how yt-dlp's failures read to a user.
from spool.adapters.downloader import (
    DownloadFailed,
    _failure,
    _GuardedYoutubeDL,
    _iso_date,
    _QuietLog,
    _refusal,
)
from spool.adapters.probes import Probe
from spool.adapters.ssrf import UrlGuard, UrlRefused

PER_READ_TIMEOUT = 20.0
"""Seconds one socket operation may take when `extract` runs outside a probe."""

FFMPEG_SHARE = 0.8
"""The share of the time left that FFmpeg may take to read a direct file: the rest is for the
answer, so that what yt-dlp found is still told when FFmpeg runs out of time."""


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
        formats=[_format(f) for f in _formats(info, playlist) if isinstance(f, dict)],
    )


def _formats(info: dict[str, Any], playlist: bool) -> list[Any]:
    """The source's formats; a result of one format (a file served without a media type) keeps
    that format's fields in the result itself."""
    formats = info.get("formats")
    if formats:
        return list(formats)
    return [info] if not playlist and _str(info.get("url")) else []


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
            facts = _probe_direct(info, params, guard, probe) if isinstance(info, dict) else None
    except Exception as exc:
        failure = _failure(exc, url, audio_only=False)
        raise MetadataFailed(_reworded(failure)) from None
    if not isinstance(info, dict):
        raise MetadataFailed(f"Could not read metadata: nothing found at {url}")
    return _with_facts(_metadata(ydl.sanitize_info(info)), facts)


def _probe_direct(
    info: dict[str, Any], params: dict[str, Any], guard: UrlGuard, probe: Probe | None
) -> remote_probe.MediaFacts | None:
    """FFmpeg's reading of a direct media file, through the guarded networking (`params` are
    the extraction's); None for anything else, or when FFmpeg could not tell."""
    formats = info.get("formats") or []
    media_url = formats[0].get("url") if len(formats) == 1 else info.get("url")
    if not info.get("direct") or not isinstance(media_url, str):
        return None
    seconds = (probe.remaining() if probe else PER_READ_TIMEOUT) * FFMPEG_SHARE
    deadline = time.monotonic() + seconds
    # The relay's connections outlive FFmpeg's requests (a read blocked on a slow source): they
    # are shut as soon as FFmpeg is done, as a probe's are at its deadline (adapters/probes.py).
    relay = Probe(deadline)

    def on_connect(sock: socket.socket) -> None:
        relay.opened(sock)
        if probe is not None:
            probe.opened(sock)

    with _GuardedYoutubeDL(
        {**params, "socket_timeout": seconds},
        guard=guard,
        cancel=relay.cancel,
        on_connect=on_connect,
    ) as source:

        def open_source(headers: dict[str, str]) -> Any:
            return source.urlopen(Request(media_url, headers=headers))

        try:
            return remote_probe.probe(
                open_source, PurePosixPath(urlsplit(media_url).path).name, deadline=deadline
            )
        except OSError:
            return None  # FFmpeg could not be started: the answer is yt-dlp's alone
        finally:
            relay.stop()
            relay.release()


def _with_facts(meta: MediaMetadata, facts: remote_probe.MediaFacts | None) -> MediaMetadata:
    """`meta` with what FFmpeg read of its one format filled in."""
    if facts is None or len(meta.formats) != 1:
        return meta
    [f] = meta.formats
    width, height = f.width or facts.width, f.height or facts.height
    probed = msgspec.structs.replace(
        f,
        vcodec=facts.video_codec or f.vcodec,
        acodec=facts.audio_codec or f.acodec,
        width=width,
        height=height,
        resolution=f"{width}x{height}" if width and height else f.resolution,
        fps=f.fps or facts.fps,
        tbr=f.tbr or facts.bitrate_kbps,
    )
    return msgspec.structs.replace(meta, duration=meta.duration or facts.duration, formats=[probed])


def _reworded(failure: DownloadFailed) -> str:
    """The downloader's reason, minus words that say a download was attempted."""
    message = str(failure)
    for prefix in ("Download failed: ",):
        if message.startswith(prefix):
            return "Could not read metadata: " + message.removeprefix(prefix)
    return message
