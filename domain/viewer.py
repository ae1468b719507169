"""Viewers: every live connection to the cluster, as a stream of its own (`viewer-<id>`).

A viewer is connected, reports its byte counts now and then, may change state, and ends with a
goodbye or, when it vanished without one, by a timeout. Health is a pure function of the
measured bandwidth against the media's bitrate.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Literal

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import DomainError
from spool.domain.events import Event, event

HARNESS_TYPES: tuple[str, ...] = (
    "STORM_MSE_VIEWER",
    "STORM_HLS_VIEWER",
    "CLUSTER_DATA_CLIENT",
    "GENERIC_HLS_VIEWER",
    "GENERIC_DASH_VIEWER",
    "RTMP_VIEWER",
    "RTMP_PUSH",
    "TRANSCODER",
    "FILE_WRITER",
    # Spool's one added value: a plain (Range) download of a finished output through /media.
    "GENERIC_PROGRESSIVE_VIEWER",
)
"""The seed's harness types, in its order, and Spool's one addition at the end."""

SYSTEM_HARNESS_TYPES: frozenset[str] = frozenset({"TRANSCODER", "FILE_WRITER"})
"""The cluster's own stage sessions: what `systemClients=false` hides."""

INGEST_HARNESS_TYPES: frozenset[str] = frozenset({"RTMP_PUSH"})
"""Harnesses whose media flows in (a publisher): their health is measured on `in` bytes."""

DEVICE_TYPES: tuple[str, ...] = ("MOBILE", "TABLET", "DESKTOP")

DisconnectReason = Literal["closed", "timeout"]

_STATE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TEXT = 256
"""Longest stream key, application id, address or user agent a viewer may carry."""


class InvalidViewer(DomainError):
    """A viewer event that cannot be recorded as given; the message names the field."""


class ViewerNotFound(DomainError):
    """No viewer stream with that id."""


class ViewerClosed(DomainError):
    """The viewer has already disconnected: it takes no further events."""


class ViewerExists(DomainError):
    """A viewer with that id is already connected."""


def new_viewer_id() -> str:
    """A fresh id in the seed's shape (`v_` and 16 lower-case letters and digits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "v_" + "".join(secrets.choice(alphabet) for _ in range(16))


def stream_id(viewer_id: str) -> str:
    """The event stream that holds one viewer."""
    return f"viewer-{viewer_id}"


@event
class ViewerConnected(Event, frozen=True, kw_only=True):
    """A connection began. Client facts (device, OS, browser, country) are resolved at connect."""

    viewer_id: str
    harness_type: str
    state: str
    application_id: str = ""
    stream_key: str = ""
    remote_address: str = ""
    user_agent: str = ""
    device_type: str = ""
    os_name: str = ""
    browser_name: str = ""
    country_code: str = ""
    country_name: str = ""
    started_at: int
    """Unix ms when the connection began (the reporter's clock for external sessions)."""
    bitrate: int = 0
    """The media's bitrate in bits/s; 0 when unknown (health is then "No Data")."""
    node_id: str = ""
    """The node (or API host) that holds the connection, so a dead host's viewers can time out."""


@event
class ViewerStats(Event, frozen=True, kw_only=True):
    """A measurement: bandwidth over the last interval and the totals so far."""

    viewer_id: str
    in_bandwidth: int
    out_bandwidth: int
    in_total_bytes: int
    out_total_bytes: int
    bitrate: int | None = None
    """Set when the bitrate became known after connect (an HLS playlist read, say)."""


@event
class ViewerStateChanged(Event, frozen=True, kw_only=True):
    viewer_id: str
    state: str


@event
class ViewerDisconnected(Event, frozen=True, kw_only=True):
    viewer_id: str
    reason: DisconnectReason
    in_total_bytes: int
    out_total_bytes: int


ViewerEvent = ViewerConnected | ViewerStats | ViewerStateChanged | ViewerDisconnected


class ViewerState(msgspec.Struct, frozen=True, kw_only=True):
    """One viewer folded from its events."""

    viewer_id: str
    harness_type: str
    state: str
    started_at: int
    bitrate: int = 0
    in_bandwidth: int = 0
    out_bandwidth: int = 0
    in_total_bytes: int = 0
    out_total_bytes: int = 0
    measured: bool = False
    closed: bool = False
    version: int = 0


def evolve(state: ViewerState | None, ev: Event, at: datetime, version: int) -> ViewerState | None:
    """The viewer after one more event at stream `version`; a stream holds nothing before its
    ViewerConnected, and events of other types leave it as it is."""
    if isinstance(ev, ViewerConnected):
        return ViewerState(
            viewer_id=ev.viewer_id,
            harness_type=ev.harness_type,
            state=ev.state,
            started_at=ev.started_at,
            bitrate=ev.bitrate,
            version=version,
        )
    if state is None:
        return None
    if isinstance(ev, ViewerStats):
        return msgspec.structs.replace(
            state,
            in_bandwidth=ev.in_bandwidth,
            out_bandwidth=ev.out_bandwidth,
            in_total_bytes=ev.in_total_bytes,
            out_total_bytes=ev.out_total_bytes,
            bitrate=state.bitrate if ev.bitrate is None else ev.bitrate,
            measured=True,
            version=version,
        )
    if isinstance(ev, ViewerStateChanged):
        return msgspec.structs.replace(state, state=ev.state, version=version)
    if isinstance(ev, ViewerDisconnected):
        return msgspec.structs.replace(
            state,
            in_total_bytes=ev.in_total_bytes,
            out_total_bytes=ev.out_total_bytes,
            closed=True,
            version=version,
        )
    return state


AGGREGATE: Aggregate[ViewerState] = Aggregate(
    name="viewer",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(ViewerConnected, ViewerStats, ViewerStateChanged, ViewerDisconnected),
)

EVENT_TYPES: frozenset[str] = AGGREGATE.event_types

fold = AGGREGATE.fold
"""A viewer from its whole stream, oldest event first."""


# -- decisions -----------------------------------------------------------------------------


def connect(existing: ViewerState | None, connected: ViewerConnected) -> list[Event]:
    """Open a viewer with `connected`: InvalidViewer when a field cannot be recorded as given,
    ViewerExists when the id already has a viewer."""
    if not _ID.match(connected.viewer_id):
        raise InvalidViewer("id must be 1-64 letters, digits, '_', '.', ':' or '-'")
    if connected.harness_type not in HARNESS_TYPES:
        raise InvalidViewer(f"harnessType must be one of: {', '.join(HARNESS_TYPES)}")
    _require_state_word(connected.state)
    if connected.device_type and connected.device_type not in DEVICE_TYPES:
        raise InvalidViewer(f"deviceType must be one of: {', '.join(DEVICE_TYPES)}")
    for name, value in (
        ("applicationId", connected.application_id),
        ("streamKey", connected.stream_key),
        ("remoteAddress", connected.remote_address),
        ("userAgent", connected.user_agent),
        ("osName", connected.os_name),
        ("browserName", connected.browser_name),
        ("countryName", connected.country_name),
    ):
        if len(value) > MAX_TEXT:
            raise InvalidViewer(f"{name} must be at most {MAX_TEXT} characters")
    if connected.country_code and not re.fullmatch(r"[A-Z]{2}", connected.country_code):
        raise InvalidViewer("countryCode must be two upper-case letters (ISO 3166-1 alpha-2)")
    if connected.started_at < 0:
        raise InvalidViewer("startTime must be a Unix time in milliseconds")
    if connected.bitrate < 0:
        raise InvalidViewer("bitrate must not be negative")
    if existing is not None:
        raise ViewerExists(f"viewer {connected.viewer_id} already exists")
    return [connected]


def change_state(existing: ViewerState | None, viewer_id: str, state: str) -> list[Event]:
    """Move a connected viewer to `state`, an upper-case word such as PLAYING."""
    _require_open(viewer_id, existing)
    _require_state_word(state)
    return [ViewerStateChanged(viewer_id=viewer_id, state=state)]


def report_stats(
    existing: ViewerState | None,
    viewer_id: str,
    *,
    in_bandwidth: int,
    out_bandwidth: int,
    in_total_bytes: int,
    out_total_bytes: int,
    bitrate: int | None = None,
) -> list[Event]:
    """A connected viewer's counters: never negative, and totals never go down."""
    current = _require_open(viewer_id, existing)
    _require_counters(current, in_bandwidth, out_bandwidth, in_total_bytes, out_total_bytes)
    if bitrate is not None and bitrate < 0:
        raise InvalidViewer("bitrate must not be negative")
    return [
        ViewerStats(
            viewer_id=viewer_id,
            in_bandwidth=in_bandwidth,
            out_bandwidth=out_bandwidth,
            in_total_bytes=in_total_bytes,
            out_total_bytes=out_total_bytes,
            bitrate=bitrate,
        )
    ]


def disconnect(
    existing: ViewerState | None,
    viewer_id: str,
    *,
    reason: DisconnectReason = "closed",
    in_total_bytes: int | None = None,
    out_total_bytes: int | None = None,
) -> list[Event]:
    """End a connected viewer; totals left out stay at the last ones recorded, and follow the
    same rule as stats (never negative, never down)."""
    current = _require_open(viewer_id, existing)
    in_total = current.in_total_bytes if in_total_bytes is None else in_total_bytes
    out_total = current.out_total_bytes if out_total_bytes is None else out_total_bytes
    _require_counters(current, 0, 0, in_total, out_total)
    return [
        ViewerDisconnected(
            viewer_id=viewer_id,
            reason=reason,
            in_total_bytes=in_total,
            out_total_bytes=out_total,
        )
    ]


def _require_state_word(state: str) -> None:
    if not _STATE.match(state):
        raise InvalidViewer("state must be an upper-case word such as PLAYING (A-Z, 0-9, _)")


def _require_open(viewer_id: str, existing: ViewerState | None) -> ViewerState:
    if existing is None:
        raise ViewerNotFound(f"viewer {viewer_id} not found")
    if existing.closed:
        raise ViewerClosed(f"viewer {viewer_id} has disconnected")
    return existing


def _require_counters(
    current: ViewerState, in_bandwidth: int, out_bandwidth: int, in_total: int, out_total: int
) -> None:
    for name, value in (
        ("inBandwidth", in_bandwidth),
        ("outBandwidth", out_bandwidth),
        ("inTotalBytes", in_total),
        ("outTotalBytes", out_total),
    ):
        if value < 0:
            raise InvalidViewer(f"{name} must not be negative")
    if in_total < current.in_total_bytes or out_total < current.out_total_bytes:
        raise InvalidViewer("inTotalBytes and outTotalBytes never go down")


# -- health --------------------------------------------------------------------------------


def bitrate(size: int | None, duration: float | None) -> int:
    """A media file's average bitrate in bits/s; 0 when its size or length is unknown."""
    if not size or not duration or duration <= 0:
        return 0
    return int(size * 8 / duration)


NO_DATA = "No Data"

_GRADES: tuple[tuple[int, str], ...] = (
    (90, "Very Good"),
    (75, "Good"),
    (50, "Fair"),
    (25, "Bad"),
    (0, "Very Bad"),
)


def health(
    harness_type: str, bitrate: int, in_bandwidth: int, out_bandwidth: int, measured: bool
) -> tuple[int, str]:
    """Score 0-100 and grade: the bandwidth the connection moves against the media's bitrate.

    A viewer that moves media at least as fast as it plays scores 100; half as fast, 50.
    Without a bitrate or a measurement there is nothing to judge: (0, "No Data").
    """
    if bitrate <= 0 or not measured:
        return 0, NO_DATA
    if harness_type in INGEST_HARNESS_TYPES:
        moved = in_bandwidth
    elif harness_type in SYSTEM_HARNESS_TYPES:
        moved = max(in_bandwidth, out_bandwidth)
    else:
        moved = out_bandwidth
    score = min(100, (moved * 8 * 100) // bitrate)
    return score, grade(score)


def grade(score: int) -> str:
    """The grade word for a score."""
    for floor, word in _GRADES:
        if score >= floor:
            return word
    return _GRADES[-1][1]
