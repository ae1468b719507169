"""The per-account download archive: what names an item, and the account's removals from it.

An item is named as yt-dlp's `--download-archive` names it: `"<extractor key, lowercased>
<id>"` (`YoutubeDL._make_archive_id`), e.g. `youtube dQw4w9WgXcQ`. Items of yt-dlp's `generic`
extractor (a direct file, an HLS or DASH manifest at a plain URL) are the exception: yt-dlp
gives them the file name's stem as id, which two different URLs share (`/a/clip.mp4` and
`/b/clip.mp4` are both `generic clip`), so they are named by their URL, normalised
(`normalised_url`): `generic https://host/a/clip.mp4`.

The archive's items come from the jobs' own events (a completed download's `archive_id`, see
`domain/job.py` `DownloadCompleted`); the archive's stream, `archive-<account_id>`, holds only
what the account removed from it (`ArchiveItemRemoved`), so that an item may be fetched again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.events import Event, event

GENERIC: Final = "generic"
"""yt-dlp's extractor for media at a plain URL, whose ids are file name stems."""

MAX_ARCHIVE_ID_LENGTH: Final = 9000
"""Longer than any archive id Spool makes (a generic item's holds a URL of at most 8,192
characters): what `DELETE /archive/{archive_id}` accepts."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalised_url(url: str) -> str:
    """`url` as a generic item's name: scheme and host lowercased, the scheme's default port
    and the fragment dropped, an empty path as `/`; the path and query kept as they are (they
    may name another file)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def archive_id(extractor_key: str, item_id: str, url: str) -> str:
    """The archive id of an item yt-dlp extracted with `extractor_key` (`Youtube`, `Generic`)
    as `item_id` from `url` (its `webpage_url`)."""
    extractor = extractor_key.lower()
    if extractor == GENERIC:
        return f"{GENERIC} {normalised_url(url)}"
    return f"{extractor} {item_id}"


# -- the account's removals ------------------------------------------------------------------


@event
class ArchiveItemRemoved(Event, frozen=True, kw_only=True):
    """The account removed an item from its archive (`DELETE /archive/{archive_id}`): the next
    job of it downloads again."""

    account_id: str
    archive_id: str


class ArchiveState(msgspec.Struct, frozen=True, kw_only=True):
    """An account's archive stream folded: how many removals it holds, and the latest."""

    account_id: str
    removals: int
    last_removed: str
    last_removed_at: datetime


def stream_id(account_id: str) -> str:
    """The stream of one account's archive removals."""
    return f"archive-{account_id}"


def remove(account_id: str, item: str) -> list[Event]:
    """The fact that the account removed `item` (an archive id it holds) from its archive."""
    return [ArchiveItemRemoved(account_id=account_id, archive_id=item)]


def evolve(state: ArchiveState | None, ev: Event, at: datetime, version: int) -> ArchiveState:
    """Apply one event of an account's archive stream."""
    assert isinstance(ev, ArchiveItemRemoved)
    return ArchiveState(
        account_id=ev.account_id,
        removals=(state.removals if state else 0) + 1,
        last_removed=ev.archive_id,
        last_removed_at=at,
    )


AGGREGATE: Aggregate[ArchiveState] = Aggregate(
    name="archive",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(ArchiveItemRemoved,),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types
