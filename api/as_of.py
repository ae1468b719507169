"""The `as_of` query parameter: read a job, batch or task as it stood at an earlier point."""

from __future__ import annotations

from datetime import UTC, datetime

from spool.adapters.history import AsOf


class BadAsOf(ValueError):
    """`as_of` is neither an event position nor an ISO 8601 time."""


def parse_as_of(raw: str) -> AsOf:
    """A position (digits: that event and those before it) or an ISO 8601 time (naive is UTC)."""
    text = raw.strip()
    if text.isdigit():
        position = int(text)
        if position < 1:
            raise BadAsOf("as_of: an event position starts at 1")
        return position
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        hint = " (a '+' in a query string must be sent as %2B)" if " " in text else ""
        raise BadAsOf(
            f"as_of: expected an event position (an integer >= 1) or an ISO 8601 time such as "
            f"2026-12-01T10:00:00Z, got {raw!r}{hint}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
