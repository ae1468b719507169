"""Text a source controls, made safe to record before it becomes an event.

A page's title, its description, a codec string from a manifest, an HTTP reason phrase that
ends up in a failure's reason: a source writes these, and the event log must take whatever it
writes. PostgreSQL's jsonb refuses NUL (`\\u0000`), the JSON encoder refuses lone surrogates
(which an HTML entity such as `&#xD800;` decodes to), and nothing stopped a 100 KB title from
riding along in every read of the job. `made_safe` fixes all three, on a whole event at once.

Bounds, in characters (a longer text keeps its start and ends with `…`):

- `title`: 1,000
- `description`: 20,000
- `reason` (why a stage or job failed, often quoting the source): 2,000
- codec names (`video_codec`, `audio_codec`, `native_video_codec`, `native_audio_codec`): 100
- each text in a task's result (`result_data`): 262,144, as much as an `http_request` task
  keeps of a response body
- any other text (URLs, paths, dictionary keys and values, items of lists): 8,192
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

REPLACEMENT = "\ufffd"
"""What stands in for a NUL or a lone surrogate: Unicode's own replacement character."""

TRUNCATED = "…"
"""The last character of a text cut at its bound."""

BOUNDS: Mapping[str, int] = {
    "title": 1_000,
    "description": 20_000,
    "reason": 2_000,
    "video_codec": 100,
    "audio_codec": 100,
    "native_video_codec": 100,
    "native_audio_codec": 100,
    "result_data": 262_144,
}
"""The longest text each field may hold, by field name, in characters."""

DEFAULT_BOUND = 8_192
"""The longest any other text may be, in characters."""

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

T = TypeVar("T")


def safe_text(text: str, bound: int = DEFAULT_BOUND) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD and cut to `bound` characters.

    Two surrogates that form a pair (`&#xD83D;&#xDE00;` in a page) are joined into the one
    character they spell; only those left alone are replaced.
    """
    if _UNSAFE.search(text):
        text = text.replace("\x00", REPLACEMENT)
        if _SURROGATE.search(text):
            # Through UTF-16 and back: a pair decodes to its character, a lone surrogate is an
            # error of the decoder, which "replace" turns into U+FFFD.
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if len(text) > bound:
        text = text[: bound - len(TRUNCATED)] + TRUNCATED
    return text


def made_safe(value: T) -> T:
    """A copy of `value` whose every text is safe to record (see `safe_text` and `BOUNDS`).

    `value` is an event or any msgspec Struct, list, tuple or dict of them: texts are found
    at any depth, each bounded by the name of the field that holds it (directly, or as an item
    of a list, tuple or dict in that field). What needs no change is returned as it is.
    """
    safe: T = _safe(value, DEFAULT_BOUND)
    return safe


def _safe(value: Any, bound: int) -> Any:
    if isinstance(value, str):
        return safe_text(value, bound)
    if isinstance(value, msgspec.Struct):
        changes: dict[str, Any] = {}
        for name in value.__struct_fields__:
            old = getattr(value, name)
            new = _safe(old, BOUNDS.get(name, DEFAULT_BOUND))
            if new is not old:
                changes[name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, list | tuple):
        items = [_safe(item, bound) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            return items
        # A named tuple is built from its fields, a plain tuple from an iterable.
        return value._make(items) if hasattr(value, "_make") else tuple(items)
    if isinstance(value, dict):
        pairs = [(_safe(k, DEFAULT_BOUND), _safe(v, bound)) for k, v in value.items()]
        if all(
            k is old_k and v is old_v
            for (k, v), (old_k, old_v) in zip(pairs, value.items(), strict=True)
        ):
            return value
        return dict(pairs)
    return value
