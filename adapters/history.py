"""Streams as they stood at an earlier point of the log: an event position or a recorded time."""

from __future__ import annotations

from datetime import datetime
from itertools import takewhile

from spool.adapters.event_store import EventStore
from spool.domain.events import RecordedEvent

AsOf = int | datetime
"""A global event position (that event included), or a time (events recorded at or before it)."""


async def read_stream_as_of(store: EventStore, stream_id: str, as_of: AsOf) -> list[RecordedEvent]:
    """The stream's events, in version order, that the log held at `as_of`."""
    if isinstance(as_of, int):
        return await store.read_stream(stream_id, up_to_position=as_of)
    # A prefix, always: a fold needs every event before the last one it takes.
    return list(takewhile(lambda e: e.recorded_at <= as_of, await store.read_stream(stream_id)))
