"""Metadata for what a reactor decides on a stream: the correlation of the stream's latest
event, caused by that event (see `domain.events.Metadata`)."""

from __future__ import annotations

from spool.adapters.event_store import EventStore
from spool.domain.events import Metadata


async def following(
    store: EventStore, stream_id: str, version: int, *, actor: str, node_id: str | None = None
) -> Metadata:
    """Metadata for an event decided on `stream_id` as it stood at `version`."""
    last = await store.read_stream(stream_id, version, limit=1)
    if not last:
        return Metadata(actor=actor, node_id=node_id)
    return last[0].causes(actor=actor, node_id=node_id)
