"""Adaptive HLS packages of a job's output, planned: the renditions, their segment length and
the master playlist's text.

All pure: adapters/hls.py runs FFmpeg once per rendition (H.264 and AAC in MPEG-TS segments,
`-hls_playlist_type vod`) and writes the master playlist this module words. A package is
bounded whatever the media's length: at most `MAX_RENDITIONS` renditions of at most
`MAX_SEGMENTS` segments each (a longer video gets longer segments), so a job stores at most
`1 + MAX_RENDITIONS * (MAX_SEGMENTS + 1)` objects for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Final, Protocol, TypeVar

import msgspec

HEIGHTS: Final = (2160, 1440, 1080, 720, 480, 360)
"""The heights a rendition may have: `max_resolution`'s values."""
MAX_RENDITIONS: Final = 4
SEGMENT_SECONDS: Final = 6.0
"""Every segment's length (the last one's at most), unless the video is long."""
MAX_SEGMENTS: Final = 600
"""At most this many segments per rendition: an hour at 6 s; a longer video gets longer ones."""
VIDEO_BITRATES: Final[dict[int, str]] = {
    2160: "14000k",
    1440: "8000k",
    1080: "5000k",
    720: "2800k",
    480: "1400k",
    360: "800k",
}
"""A rendition's H.264 bitrate when it names none."""
VIDEO_BITRATE_RANGE: Final = (100, 60000)
"""The `video_bitrate` a rendition may ask for, in kbit/s."""
AUDIO_BITRATE: Final = "128k"
"""A rendition's AAC bitrate when it names none."""
LEVELS: Final[dict[int, int]] = {2160: 51, 1440: 50, 1080: 40, 720: 31, 480: 30, 360: 30}
"""The H.264 level each height is encoded at (High profile), which the master names in CODECS."""

FOLDER_SUFFIX: Final = ".hls"
"""A package lies beside the output in `<stem>.hls/`."""
MASTER_NAME: Final = "master.m3u8"
MEDIA_NAME: Final = "index.m3u8"

_BITRATE = re.compile(r"^([1-9][0-9]*)k$")


class Tall(Protocol):
    """Anything with a height: a job's rendition (domain/job_options.py, `HlsRendition`)."""

    @property
    def height(self) -> int: ...


T = TypeVar("T", bound=Tall)


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    """A rendition as packaged, for the master playlist: its frame, its peak and average bits
    a second as measured from its segments, its codecs and its media playlist's relative URI."""

    uri: str
    width: int
    height: int
    bandwidth: int
    average_bandwidth: int
    codecs: str


def folder(height: int) -> str:
    """A rendition's folder in the package, which its media playlist and segments share."""
    return f"{height}p"


def kbits(bitrate: str) -> int | None:
    """`2500k` as 2500; None if it is not a whole number of kbit/s."""
    found = _BITRATE.match(bitrate)
    return int(found.group(1)) if found else None


def segment_seconds(duration: float | None) -> float:
    """The segment length for a video of `duration` seconds: `SEGMENT_SECONDS`, or whole
    seconds more when that would make more than `MAX_SEGMENTS`."""
    if not duration or duration <= SEGMENT_SECONDS * MAX_SEGMENTS:
        return SEGMENT_SECONDS
    return float(math.ceil(duration / MAX_SEGMENTS))


def frame(source_width: int, source_height: int, height: int) -> tuple[int, int]:
    """A rendition's frame: `height` with the source's shape, both sides even (as 4:2:0 H.264
    wants), at least 2 pixels."""
    width = max(2, round(source_width * height / source_height / 2) * 2)
    return width, max(2, height // 2 * 2)


def fitting(renditions: Iterable[T], source_height: int) -> list[T]:
    """The renditions a video `source_height` tall can give, tallest first: none is upscaled."""
    return sorted((r for r in renditions if r.height <= source_height), key=lambda r: -r.height)


def codecs(height: int, has_audio: bool) -> str:
    """The RFC 6381 CODECS of a rendition: H.264 High at its level (`LEVELS`), AAC-LC."""
    video = f"avc1.6400{LEVELS[height]:02x}"
    return f"{video},mp4a.40.2" if has_audio else video


def level(height: int) -> str:
    """The H.264 level a rendition is encoded at, as FFmpeg takes it (`3.1`)."""
    return f"{LEVELS[height] / 10:.1f}"


def bandwidths(segments: Sequence[tuple[float, int]]) -> tuple[int, int]:
    """The peak and average bits a second of a media playlist's `(seconds, bytes)` segments, as
    the master playlist's BANDWIDTH and AVERAGE-BANDWIDTH say them (RFC 8216, 4.3.4.2)."""
    timed = [(s, n) for s, n in segments if s > 0]
    if not timed:
        return 0, 0
    peak = max(math.ceil(n * 8 / s) for s, n in timed)
    average = math.ceil(sum(n for _, n in timed) * 8 / sum(s for s, _ in timed))
    return peak, average


_EXTINF = re.compile(r"^#EXTINF:([0-9.]+),?.*\n([^#\n][^\n]*)$", re.M)


def segments(media_playlist: str) -> list[tuple[float, str]]:
    """Each segment of a media playlist: its seconds and its URI, in order."""
    return [(float(m.group(1)), m.group(2).strip()) for m in _EXTINF.finditer(media_playlist)]


def master_playlist(variants: Sequence[Variant]) -> str:
    """The master playlist of a package: each variant's stream, tallest first, with its
    BANDWIDTH, AVERAGE-BANDWIDTH, RESOLUTION and CODECS and its media playlist's relative
    URI (so the package plays from wherever its master playlist is read)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: -v.height):
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth},AVERAGE-BANDWIDTH={v.average_bandwidth},"
            f'RESOLUTION={v.width}x{v.height},CODECS="{v.codecs}"'
        )
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
