"""Clip timecodes: read what a user writes (`HH:MM:SS`, `MM:SS` or seconds) and normalise it.

Pure and shared: the job API validates `clip_start` / `clip_end` with it, and the mux stage
reads the stored value back with the same function, so both sides agree on what a value means.
"""

from __future__ import annotations

import math
import re

MAX_SECONDS = 1_000_000_000
"""The largest timecode accepted (about 31.7 years).

Far past the length of any media, yet small enough that every value kept to the millisecond is
exact in a float, so a stored value reads back to the same number.
"""

_MAX_TEXT = 64
# Longer text is garbage anyway, and the cap keeps `int()` away from its huge-number limit.

_FORMAT_HINT = "expected HH:MM:SS, MM:SS or a number of seconds"

# [0-9], not \d: \d also matches other scripts' digits, which int() would accept silently.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MINUTES_SECONDS = re.compile(r"([0-9]+):([0-9]{1,2}(?:\.[0-9]+)?)")
_HOURS_MINUTES_SECONDS = re.compile(r"([0-9]+):([0-9]{1,2}):([0-9]{1,2}(?:\.[0-9]+)?)")


def _checked(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS} seconds")
    # -0.0 would print as "-0"; it is plain zero.
    return 0.0 if seconds == 0 else float(seconds)


def _parse_text(text: str) -> float:
    if _SECONDS.fullmatch(text):
        return float(text)
    if match := _HOURS_MINUTES_SECONDS.fullmatch(text):
        hours, minutes, seconds = int(match[1]), int(match[2]), float(match[3])
        if minutes >= 60 or seconds >= 60:
            raise ValueError("minutes and seconds must be below 60")
        return hours * 3600 + minutes * 60 + seconds
    if match := _MINUTES_SECONDS.fullmatch(text):
        # The leading unit is open-ended, as hours are in HH:MM:SS: "90:00" is 90 minutes.
        minutes, seconds = int(match[1]), float(match[2])
        if seconds >= 60:
            raise ValueError("minutes and seconds must be below 60")
        return minutes * 60 + seconds
    raise ValueError(_FORMAT_HINT)


def parse_timecode(value: str | int | float) -> float:
    """Seconds from `"HH:MM:SS"`, `"MM:SS"` or seconds (a number, or text such as `"12.5"`).

    Any last part may carry a fraction (`"00:01:02.5"`). Minutes and seconds after the leading
    part must be below 60. Surrounding whitespace is ignored.

    Raises:
        ValueError: with a short reason (no field name: callers add it), for garbage, a
            negative, non-finite or too large value, or minutes / seconds of 60 or more.
    """
    # bool is an int subclass; `true` as a timecode is a client bug, not one second.
    if isinstance(value, bool):
        raise ValueError(_FORMAT_HINT)
    if isinstance(value, int):
        # Compare as int first: float() of a huge JSON integer would overflow.
        if value > MAX_SECONDS:
            raise ValueError(f"must be at most {MAX_SECONDS} seconds")
        return _checked(float(value))
    if isinstance(value, float):
        return _checked(value)
    if not isinstance(value, str):
        raise ValueError(_FORMAT_HINT)
    text = value.strip()
    if not text or len(text) > _MAX_TEXT:
        raise ValueError(_FORMAT_HINT)
    if text.startswith("-"):
        # Report a well-formed negative as negative, not as garbage.
        magnitude = _parse_text(text[1:])
        return _checked(-magnitude)
    return _checked(_parse_text(text))


def format_seconds(seconds: float) -> str:
    """Seconds as a plain decimal string, kept to the millisecond: `90`, `12.5`, `0.001`."""
    text = f"{round(seconds, 3):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def normalize_timecode(value: str | int | float) -> str:
    """A timecode in the one stored form: seconds as a decimal string (`"00:01:30"` -> `"90"`).

    The stored form is itself a valid timecode, so `parse_timecode` reads it back unchanged.

    Raises:
        ValueError: as `parse_timecode` does.
    """
    return format_seconds(parse_timecode(value))
