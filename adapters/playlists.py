"""Is a URL a playlist or feed? yt-dlp lists the entries of one without fetching any media."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import msgspec
from yt_dlp.utils import unsmuggle_url

from spool.adapters.downloader import DownloadFailed, _failure, _GuardedYoutubeDL, _QuietLog
from spool.adapters.probes import Probe
from spool.adapters.ssrf import UrlGuard

# A URL ending in one of these is a single piece of media (or its manifest): no need to ask
# yt-dlp, which would cost a request per POST /jobs.
MEDIA_SUFFIXES = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mkv",
        ".webm",
        ".mov",
        ".avi",
        ".flv",
        ".ts",
        ".m4a",
        ".mp3",
        ".aac",
        ".ogg",
        ".oga",
        ".opus",
        ".wav",
        ".flac",
        ".m3u8",
        ".mpd",
    }
)


class Entry(msgspec.Struct, frozen=True):
    url: str
    title: str | None
    key: str | None = None
    """What names the entry in its feed whatever its URL: a feed item's guid, else the id
    yt-dlp gives it (None: neither; its URL names it)."""
    published: datetime | None = None


class Playlist(msgspec.Struct, frozen=True):
    title: str | None
    entries: list[Entry]


def looks_like_media(url: str) -> bool:
    """Whether the URL's path names a media file or manifest by its suffix."""
    return PurePosixPath(urlsplit(url).path).suffix.lower() in MEDIA_SUFFIXES


def extract_playlist(
    url: str, *, guard: UrlGuard, probe: Probe | None = None, limit: int = 500
) -> Playlist | None:
    """The entries of a playlist or feed at `url`, or None if it is a single item (blocking).

    Raises DownloadFailed with yt-dlp's reason when the URL cannot be read at all. Under a
    `probe`, each socket operation is bounded by the time left and the probe's `stop` ends the
    extraction at once.
    """
    params: dict[str, Any] = {
        "logger": _QuietLog(),
        "quiet": True,
        "noprogress": True,
        "cachedir": False,
        "extract_flat": "in_playlist",
        "playlistend": limit,
        "ffmpeg_location": os.path.join(os.devnull, "no-ffmpeg"),
        "proxy": "",
        "socket_timeout": probe.remaining() if probe else 20.0,
        "extractor_retries": 1,
    }
    try:
        with _GuardedYoutubeDL(
            params,
            guard=guard,
            cancel=probe.cancel if probe else None,
            on_connect=probe.opened if probe else None,
        ) as ydl:
            info = ydl.extract_info(url, download=False, process=True)
    except DownloadFailed:
        raise
    except Exception as exc:
        raise _failure(exc, url, audio_only=False) from None
    if not info or info.get("_type") != "playlist":
        return None
    entries = [
        _entry(e) for e in info.get("entries") or [] if e and (e.get("url") or e.get("webpage_url"))
    ]
    return Playlist(title=info.get("title"), entries=entries)


def _entry(info: dict[str, Any]) -> Entry:
    # yt-dlp smuggles extractor hints (a feed item's guid) into a URL fragment; the job wants
    # the plain URL.
    url, hints = unsmuggle_url(str(info.get("url") or info.get("webpage_url")))
    key = (hints or {}).get("force_videoid") or info.get("id")
    stamp = info.get("timestamp")
    published = None
    if isinstance(stamp, int | float):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            published = datetime.fromtimestamp(stamp, UTC)
    return Entry(
        url=url,
        title=info.get("title"),
        key=str(key) if key is not None else None,
        published=published,
    )
