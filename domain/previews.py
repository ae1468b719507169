"""Previews of a job's video, planned: a storyboard (a sprite sheet of thumbnails and the WebVTT
file that maps times to its tiles) and a short silent preview clip.

All pure: the storyboard's shape, the preview's window and filter (adapters/previews.py runs
FFmpeg) and the WebVTT text. Both are bounded whatever the media's length: a storyboard holds at
most `MAX_TILES` tiles (a longer video gets a longer interval), a preview lasts at most
`MAX_PREVIEW_SECONDS`.
"""

from __future__ import annotations

import math
import re
from typing import Final
from urllib.parse import quote

import msgspec

TILE_WIDTH: Final = 160
"""Every tile's width in pixels; its height follows the video's shape."""
COLUMNS: Final = 10
"""Tiles per row of the sprite sheet (fewer when there are fewer tiles)."""
MAX_TILES: Final = 400
"""At most this many tiles: 1,600 px wide, 40 rows."""
INTERVAL: Final = 10.0
"""Seconds between tiles when a job names no `storyboard_interval`."""
INTERVAL_RANGE: Final = (1.0, 600.0)
"""The `storyboard_interval` a job may ask for, in seconds."""

PREVIEW_SECONDS: Final = 3.0
"""A preview clip's length when a job names none."""
MAX_PREVIEW_SECONDS: Final = 10.0
PREVIEW_FORMATS: Final = ("mp4", "webp")
PREVIEW_WIDTH: Final = 480
"""A preview clip's widest frame in pixels (a narrower video keeps its own)."""
PREVIEW_WEBP_FPS: Final = 12
"""An animated WebP's frame rate: every frame is a whole picture, so fewer keep it small."""

SPRITE_NAME: Final = "storyboard.jpg"
"""The sprite's name in the work folder, and in the WebVTT file until the upload names it."""

STORYBOARD: Final = "storyboard"
STORYBOARD_VTT: Final = "storyboard_vtt"
PREVIEW: Final = "preview"
KINDS: Final = (STORYBOARD, STORYBOARD_VTT, PREVIEW)
"""The previews a job may have, by the kind its files and stored objects go by."""


class Storyboard(msgspec.Struct, frozen=True, kw_only=True):
    """A storyboard's shape: a tile every `interval_ms` from the start, `count` of them, laid
    out left to right, top to bottom, `columns` to a row."""

    interval_ms: int
    count: int
    columns: int
    rows: int
    tile_width: int
    tile_height: int
    duration_ms: int

    @property
    def width(self) -> int:
        """The sprite sheet's width in pixels."""
        return self.columns * self.tile_width

    @property
    def height(self) -> int:
        return self.rows * self.tile_height


def plan_storyboard(duration: float, interval: float, width: int, height: int) -> Storyboard:
    """The storyboard of a `duration` s video of `width` x `height`: a tile every `interval`
    seconds, or every more seconds when that would make more than `MAX_TILES`."""
    if duration <= 0 or width <= 0 or height <= 0 or interval <= 0:
        raise ValueError("a storyboard needs a video with a length and a frame size")
    duration_ms = max(1, round(duration * 1000))
    interval_ms = max(1, round(interval * 1000))
    # Whole seconds when widened, so the cues stay easy to read.
    interval_ms = max(interval_ms, math.ceil(duration_ms / MAX_TILES / 1000) * 1000)
    count = math.ceil(duration_ms / interval_ms)
    columns = min(COLUMNS, count)
    # Even, as the JPEG encoder's 4:2:0 wants; at least 2 pixels however wide the video.
    tile_height = max(2, round(TILE_WIDTH * height / width / 2) * 2)
    return Storyboard(
        interval_ms=interval_ms,
        count=count,
        columns=columns,
        rows=math.ceil(count / columns),
        tile_width=TILE_WIDTH,
        tile_height=tile_height,
        duration_ms=duration_ms,
    )


def storyboard_vtt(board: Storyboard, sprite: str = SPRITE_NAME) -> str:
    """The WebVTT file of a storyboard: one cue per tile, back to back from 0 to the video's end,
    each naming its tile with the media fragment `sprite#xywh=x,y,w,h` seek previews read.
    `sprite` is the sheet's name relative to this file (URL-encoded here)."""
    lines = ["WEBVTT", ""]
    target = quote(sprite)
    for n in range(board.count):
        start = n * board.interval_ms
        end = min((n + 1) * board.interval_ms, board.duration_ms)
        x = (n % board.columns) * board.tile_width
        y = (n // board.columns) * board.tile_height
        lines += [
            f"{_timestamp(start)} --> {_timestamp(end)}",
            f"{target}#xywh={x},{y},{board.tile_width},{board.tile_height}",
            "",
        ]
    return "\n".join(lines)


_FRAGMENT = re.compile(r"^[^\s#]+(?=#xywh=)", re.M)


def with_sprite(vtt: str, sprite: str) -> str:
    """A storyboard's WebVTT text with its tiles in the sheet named `sprite` (its stored name,
    relative to the WebVTT file's: both lie side by side)."""
    target = quote(sprite)
    return _FRAGMENT.sub(lambda _: target, vtt)


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def preview_window(
    start: float | None, length: float, duration: float | None
) -> tuple[float, float]:
    """Where a preview clip starts and how long it is, in seconds of the video: from `start`,
    else a tenth of the way in (past a black or title opening), for `length` (at most
    `MAX_PREVIEW_SECONDS`), moved earlier or cut short to end within a known `duration`."""
    length = min(length, MAX_PREVIEW_SECONDS)
    if duration is None or duration <= 0:
        return (start or 0.0), length
    length = min(length, duration)
    begin = duration / 10 if start is None else start
    return max(0.0, min(begin, duration - length)), length


def preview_filter(fmt: str) -> str:
    """The video filter of a preview clip: at most `PREVIEW_WIDTH` wide (even sides, square
    pixels); an animated WebP also at `PREVIEW_WEBP_FPS` frames a second."""
    scale = f"scale='trunc(min(iw,{PREVIEW_WIDTH})/2)*2':-2,setsar=1"
    return f"fps={PREVIEW_WEBP_FPS},{scale}" if fmt == "webp" else scale
