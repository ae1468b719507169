"""Feeds through the repository, each read from its stream's last event alone (every feed
event states the whole feed: domain/feed.py), so a check costs the same however often the
token was rotated."""

from __future__ import annotations

import secrets

from spool.adapters.event_store import EventStore
from spool.adapters.repository import Executor, Loaded, Repository
from spool.domain import feed


async def _latest(store: EventStore, feed_id: str, executor: Executor) -> Loaded[feed.FeedState]:
    # Feed events are never appended in a caller's transaction: read through the pool.
    stream = feed.stream_id(feed_id)
    head = await store.stream_version(stream)
    if head == 0:
        return Loaded(None, 0)
    # A rotation landing between the two reads only adds events after `head`: the last one
    # read is the feed as it stands.
    events = await store.read_stream(stream, head)
    last = events[-1]
    return Loaded(feed.evolve(None, last.data, last.recorded_at, last.version), last.version)


def feeds(store: EventStore) -> Repository[feed.FeedState]:
    """The feeds' repository: each read is one event, the stream's last."""
    return Repository(store, feed.AGGREGATE, loader=_latest)


async def load_feed(store: EventStore, scope: feed.FeedScope) -> feed.FeedState | None:
    """The scope's feed as it stands; None if it was never issued."""
    return await feeds(store).load(scope.feed_id)


def mint() -> str:
    """A new feed token: `feed_` and 256 random bits."""
    return feed.TOKEN_PREFIX + secrets.token_urlsafe(32)
