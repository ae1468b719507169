"""Podcast feeds of a scope's completed jobs: open (or rotate) a scope's feed, close it, and
find what a token opens.

A feed shows a *scope*: a batch or a subscription; each kind is one entry in `SOURCES`, a
function that finds the account's scope and says which jobs are its. Whatever is
wrong (no such scope, another account's, a wrong or rotated-out token, a closed feed) a public
read answers the one `NotFound`, so a token guesser learns nothing.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from spool.adapters.event_store import EventStore
from spool.adapters.feed_store import feeds, load_feed, mint
from spool.adapters.job_store import load_job
from spool.adapters.read_models import jobs as job_rows
from spool.application.batches import owned_batch
from spool.application.subscriptions import owned_subscription
from spool.domain import feed, job
from spool.domain.errors import NotFound
from spool.domain.events import Metadata
from spool.domain.feed import FeedScope
from spool.domain.job_query import JobQuery

BATCH = "batch"
SUBSCRIPTION = "subscription"


class FeedSource(NamedTuple):
    """A scope as its feed shows it: title, link, and which of its account's jobs are its."""

    scope: FeedScope
    account_id: str
    title: str
    link: str | None
    jobs: JobQuery
    """The scope's jobs (the feed lists the Completed ones)."""
    holds: Callable[[job.JobState], bool]
    """Whether a job is the scope's: an enclosure names no other."""


SourceOf = Callable[[EventStore, str, str], Awaitable[FeedSource]]
"""`(store, account_id, scope_id)`: the account's scope; NotFound for anyone else's."""


async def _batch(store: EventStore, account_id: str, batch_id: str) -> FeedSource:
    state = await owned_batch(store, account_id, batch_id)
    return FeedSource(
        scope=FeedScope(BATCH, state.batch_id),
        account_id=account_id,
        title=state.title or f"Spool batch {state.batch_id}",
        link=state.source_url,
        jobs=JobQuery(batch_id=state.batch_id),
        holds=lambda j: j.batch_id == state.batch_id,
    )


async def _subscription(store: EventStore, account_id: str, subscription_id: str) -> FeedSource:
    state = await owned_subscription(store, account_id, subscription_id)
    # Not the subscription's URL, which may hold a secret of the source's: only its host.
    host = urlsplit(state.url).hostname or "a feed"
    return FeedSource(
        scope=FeedScope(SUBSCRIPTION, state.subscription_id),
        account_id=account_id,
        title=f"Spool subscription to {host}",
        link=None,
        jobs=JobQuery(subscription_id=state.subscription_id),
        holds=lambda j: j.subscription_id == state.subscription_id,
    )


SOURCES: dict[str, SourceOf] = {BATCH: _batch, SUBSCRIPTION: _subscription}
"""Each kind of scope a feed may show."""


class OpenedFeed(NamedTuple):
    """A feed just opened or rotated: its token, in clear this once."""

    source: FeedSource
    token: str
    state: feed.FeedState


async def open_feed(
    store: EventStore, account_id: str, kind: str, scope_id: str, meta: Metadata
) -> OpenedFeed:
    """Open the account's scope's feed with a new token; the token before it stops at once."""
    source = await SOURCES[kind](store, account_id, scope_id)
    token = mint()
    opened = await feeds(store).execute(
        source.scope.feed_id, lambda _: feed.issue(source.scope, account_id, token), meta
    )
    assert opened.state is not None
    return OpenedFeed(source, token, opened.state)


async def close_feed(
    store: EventStore, account_id: str, kind: str, scope_id: str, meta: Metadata
) -> None:
    """Close the account's scope's feed: no token opens it until a new one is issued.
    NotFound when it is not open."""
    source = await SOURCES[kind](store, account_id, scope_id)
    await feeds(store).execute(
        source.scope.feed_id, lambda state: feed.revoke(state, source.scope, account_id), meta
    )


_NO_FEED = "Feed not found"


async def source_by_token(store: EventStore, kind: str, raw_id: str, token: str) -> FeedSource:
    """The scope whose feed `token` opens; NotFound, always in the same words, otherwise."""
    sourced = SOURCES.get(kind)
    try:
        scope = FeedScope(kind, str(uuid.UUID(raw_id)))
    except ValueError:
        raise NotFound(_NO_FEED) from None
    if sourced is None or not token.startswith(feed.TOKEN_PREFIX):
        raise NotFound(_NO_FEED)
    state = await load_feed(store, scope)
    if (
        state is None
        or state.token_hash is None
        or state.account_id is None
        or not hmac.compare_digest(state.token_hash, feed.hash_token(token))
    ):
        raise NotFound(_NO_FEED)
    try:
        return await sourced(store, state.account_id, scope.scope_id)
    except NotFound:
        raise NotFound(_NO_FEED) from None


async def episodes(store: EventStore, source: FeedSource) -> list[job.JobState]:
    """The scope's completed jobs whose file is still stored, the latest finished first, at
    most `feed.MAX_EPISODES`."""
    return await job_rows.completed(
        store.pool, source.account_id, source.jobs, limit=feed.MAX_EPISODES
    )


async def episode(store: EventStore, source: FeedSource, raw_id: str) -> job.JobState:
    """One completed job of the scope, its file still stored; NotFound otherwise."""
    try:
        job_id = str(uuid.UUID(raw_id))
    except ValueError:
        raise NotFound("Episode not found") from None
    state = await load_job(store, job_id)
    if (
        state is None
        or state.account_id != source.account_id
        or not source.holds(state)
        or state.status != "Completed"
        or state.key is None
        or state.file_deleted
    ):
        raise NotFound("Episode not found")
    return state
