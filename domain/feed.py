"""Podcast feeds: a scope's completed jobs (a batch's now, a subscription's later) as an RSS
feed, opened by a token in its URL that the owner issues and may rotate or revoke.

Only the token's SHA-256 digest and a short hint are kept. Every event states the whole feed
(its scope, account and the token in force), so the state after a stream's last event is the
state after all of them: `adapters/feed_store.py` reads that one event, however often the
token was rotated.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import NamedTuple

import msgspec

from spool.domain.aggregate import Aggregate
from spool.domain.errors import NotFound
from spool.domain.events import Event, event

TOKEN_PREFIX = "feed_"

MAX_EPISODES = 500
"""The newest completed jobs a feed lists: podcast apps read the whole feed on every refresh."""


class FeedScope(NamedTuple):
    """What a feed shows the jobs of: `kind` ("batch"; subscriptions add theirs) and its id."""

    kind: str
    scope_id: str

    @property
    def feed_id(self) -> str:
        """The feed's aggregate id: one feed per scope."""
        return f"{self.kind}-{self.scope_id}"


@event
class FeedTokenIssued(Event, frozen=True, kw_only=True):
    """The feed's token is now this one (its digest): a first issue or a rotation, which ends
    the token before it at once."""

    kind: str
    scope_id: str
    account_id: str
    token_hash: str
    hint: str


@event
class FeedTokenRevoked(Event, frozen=True, kw_only=True):
    """The feed is off: no token opens it until a new one is issued."""

    kind: str
    scope_id: str
    account_id: str


class FeedState(msgspec.Struct, frozen=True, kw_only=True):
    """A scope's feed: the token in force (its digest), if any."""

    kind: str | None = None
    scope_id: str | None = None
    account_id: str | None = None
    token_hash: str | None = None
    hint: str | None = None
    issued_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.token_hash is not None


NO_FEED = FeedState()
"""A scope whose feed was never issued: what a first issue decides on."""


def stream_id(feed_id: str) -> str:
    """The event stream of one scope's feed (`FeedScope.feed_id`)."""
    return f"feed-{feed_id}"


def hash_token(token: str) -> str:
    """Digest of a feed token: 256 random bits, so a plain SHA-256 cannot be brute-forced."""
    return hashlib.sha256(token.encode()).hexdigest()


def hint(token: str) -> str:
    """A masked form of a token that is safe to show: `feed_…abcd`."""
    return f"{TOKEN_PREFIX}…{token[-4:]}"


def issue(scope: FeedScope, account_id: str, token: str) -> list[Event]:
    """Open the scope's feed with `token`, ending any token before it."""
    return [
        FeedTokenIssued(
            kind=scope.kind,
            scope_id=scope.scope_id,
            account_id=account_id,
            token_hash=hash_token(token),
            hint=hint(token),
        )
    ]


def revoke(state: FeedState, scope: FeedScope, account_id: str) -> list[Event]:
    """Close the feed; NotFound when it is not open."""
    if not state.open:
        raise NotFound("Feed not found")
    return [FeedTokenRevoked(kind=scope.kind, scope_id=scope.scope_id, account_id=account_id)]


def evolve(state: FeedState | None, ev: Event, at: datetime, version: int) -> FeedState | None:
    """The feed after one event: each event states it whole, whatever came before."""
    if isinstance(ev, FeedTokenIssued):
        return FeedState(
            kind=ev.kind,
            scope_id=ev.scope_id,
            account_id=ev.account_id,
            token_hash=ev.token_hash,
            hint=ev.hint,
            issued_at=at,
        )
    if isinstance(ev, FeedTokenRevoked):
        return FeedState(kind=ev.kind, scope_id=ev.scope_id, account_id=ev.account_id)
    return state


AGGREGATE: Aggregate[FeedState] = Aggregate(
    name="feed",
    stream_id=stream_id,
    evolve=evolve,
    event_classes=(FeedTokenIssued, FeedTokenRevoked),
    initial=NO_FEED,
)
EVENT_TYPES: frozenset[str] = AGGREGATE.event_types
