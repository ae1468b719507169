"""Podcast feeds of a batch's or a subscription's completed jobs: the owner opens, rotates and
closes a feed with a key (`POST` / `DELETE /batch/{id}/feed`, `/subscriptions/{id}/feed`); a
podcast app reads it with the token in its URL (`GET /batch/{id}/feed.xml?token=...`, and the
same under `/subscriptions/{id}`), no key.

An enclosure names Spool, not the storage: `/batch/{id}/feed/{job_id}.{ext}?token=...`
answers a redirect to a fresh link to the file (`adapters/file_links.py`: the storage's own
presigned URL, or a signed `/files/...` link for a local folder). So an enclosure works for as
long as the feed's token does, however long ago the app read the feed, and stops with it.

Any refusal of a public read (no such batch, another account's, a wrong or rotated-out token,
a closed feed, a job not the batch's) is the same 404 (application/feeds.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, delete, get, head, post
from litestar.response import Redirect

from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.file_links import file_link
from spool.adapters.settings import Settings
from spool.adapters.storage import StorageError
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.media import media_type
from spool.api.podcast_rss import Channel, Episode, rss
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application import feeds as commands
from spool.application.feeds import BATCH, SUBSCRIPTION, FeedSource
from spool.domain import job

RSS_TYPE = "application/rss+xml; charset=utf-8"

_SCOPE_PATHS = {BATCH: "/batch", SUBSCRIPTION: "/subscriptions"}
"""Where each kind of scope's routes are."""


class FeedView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A feed just opened or rotated: `feed_url` holds its token, shown this once."""

    batch_id: str | None = None
    subscription_id: str | None = None
    feed_url: str
    token_hint: str
    issued_at: int
    """ms since the epoch."""


def _scope_url(settings: Settings, source: FeedSource) -> str:
    kind, scope_id = source.scope
    return f"{settings.resolved_public_url()}{_SCOPE_PATHS[kind]}/{quote(scope_id, safe='')}"


def feed_url(settings: Settings, source: FeedSource, token: str) -> str:
    """The URL a podcast app reads the feed from."""
    return f"{_scope_url(settings, source)}/feed.xml?token={quote(token, safe='')}"


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def enclosure_url(settings: Settings, source: FeedSource, state: job.JobState, token: str) -> str:
    """The stable URL of a job's file in the feed: the file's extension at its end, as some
    podcast apps want."""
    assert state.key is not None
    name = quote(state.job_id + _extension(state.key), safe="")
    return f"{_scope_url(settings, source)}/feed/{name}?token={quote(token, safe='')}"


def _episode(settings: Settings, source: FeedSource, state: job.JobState, token: str) -> Episode:
    assert state.key is not None
    return Episode(
        guid=state.job_id,
        title=state.title or state.options.filename or state.key.rsplit("/", 1)[-1],
        published=state.finished_at or state.updated_at,
        url=enclosure_url(settings, source, state, token),
        length=state.file_size or 0,
        media_type=media_type(state.key),
        duration=state.duration,
        description=state.description,
    )


async def _feed(services: Services, kind: str, scope_id: str, token: str) -> Response[bytes]:
    store: EventStore = services.store
    settings: Settings = services.settings
    source = await commands.source_by_token(store, kind, scope_id, token)
    jobs = await commands.episodes(store, source)
    channel = Channel(
        title=source.title,
        link=source.link or _scope_url(settings, source),
        description=f"What Spool fetched for {source.title}",
        self_url=feed_url(settings, source, token),
        built_at=datetime.now(UTC),
    )
    body = rss(channel, [_episode(settings, source, j, token) for j in jobs])
    return Response(
        body,
        media_type=RSS_TYPE,
        headers={"Cache-Control": "private, no-cache", "X-Robots-Tag": "noindex"},
    )


def _job_id(name: str) -> str:
    """The job id of an enclosure's last segment, `<job_id>.<ext>`."""
    return name.split(".", 1)[0]


async def _enclosure(
    services: Services, kind: str, scope_id: str, name: str, token: str
) -> job.JobState:
    store: EventStore = services.store
    source = await commands.source_by_token(store, kind, scope_id, token)
    return await commands.episode(store, source, _job_id(name))


@get(
    "/batch/{batch_id:str}/feed.xml",
    summary="A batch's podcast feed (RSS 2.0), opened by its token",
    media_type=RSS_TYPE,
)
async def batch_feed(services: Services, batch_id: str, token: str = "") -> Response[bytes]:
    """The batch's completed jobs, the latest finished first (at most 500), each an item
    whose enclosure downloads its file. No key: the feed's `token` (from `POST
    /batch/{id}/feed`) opens it; anything else answers 404."""
    return await _feed(services, BATCH, batch_id, token)


async def _redirect(
    services: Services, kind: str, scope_id: str, name: str, token: str
) -> Redirect:
    """A redirect (302) to a link to the episode's file that lasts 24 h, made now."""
    state = await _enclosure(services, kind, scope_id, name, token)
    assert state.key is not None
    storages: AccountStorages = services.storages
    settings: Settings = services.settings
    try:
        storage = await storages.for_job(state.account_id, state.storage_override)
        url = await file_link(
            storage,
            job_id=state.job_id,
            kind="media",
            object_key=state.key,
            public_url=settings.resolved_public_url(),
            key=services.links_key,
            now=time.time(),
        )
    except StorageError as exc:
        raise JobApiError(status_code=502, detail=f"Storage refused the link: {exc}") from None
    return Redirect(url, status_code=302, headers={"Cache-Control": "no-store"})


async def _head(
    services: Services, kind: str, scope_id: str, name: str, token: str
) -> Response[None]:
    """The episode's size and type as its job recorded them: a presigned link answers only
    the method it was signed for, so a HEAD is not redirected."""
    state = await _enclosure(services, kind, scope_id, name, token)
    assert state.key is not None
    return Response(
        None,
        media_type=media_type(state.key),
        headers={"Content-Length": str(state.file_size or 0), "Cache-Control": "no-store"},
    )


@get(
    "/batch/{batch_id:str}/feed/{episode:str}",
    summary="An episode's file: a redirect to a fresh link to it",
    status_code=302,
)
async def batch_feed_episode(
    services: Services, batch_id: str, episode: str, token: str = ""
) -> Redirect:
    """A redirect (302) to a link to the job's file that lasts 24 h, made at each request, so
    the enclosure itself never expires while the feed's token is in force."""
    return await _redirect(services, BATCH, batch_id, episode, token)


@head("/batch/{batch_id:str}/feed/{episode:str}", summary="An episode's size and type")
async def batch_feed_episode_head(
    services: Services, batch_id: str, episode: str, token: str = ""
) -> Response[None]:
    """The size and type of the episode's file, with no body and no redirect."""
    return await _head(services, BATCH, batch_id, episode, token)


@get(
    "/subscriptions/{subscription_id:str}/feed.xml",
    summary="A subscription's podcast feed (RSS 2.0), opened by its token",
    media_type=RSS_TYPE,
)
async def subscription_feed(
    services: Services, subscription_id: str, token: str = ""
) -> Response[bytes]:
    """The subscription's completed jobs, as a batch's feed lists a batch's."""
    return await _feed(services, SUBSCRIPTION, subscription_id, token)


@get(
    "/subscriptions/{subscription_id:str}/feed/{episode:str}",
    summary="An episode's file: a redirect to a fresh link to it",
    status_code=302,
)
async def subscription_feed_episode(
    services: Services, subscription_id: str, episode: str, token: str = ""
) -> Redirect:
    """A redirect (302) to a link to the job's file that lasts 24 h, made at each request."""
    return await _redirect(services, SUBSCRIPTION, subscription_id, episode, token)


@head("/subscriptions/{subscription_id:str}/feed/{episode:str}", summary="An episode's size")
async def subscription_feed_episode_head(
    services: Services, subscription_id: str, episode: str, token: str = ""
) -> Response[None]:
    """The size and type of the episode's file, with no body and no redirect."""
    return await _head(services, SUBSCRIPTION, subscription_id, episode, token)


FEED_ROUTES = [
    batch_feed,
    batch_feed_episode,
    batch_feed_episode_head,
    subscription_feed,
    subscription_feed_episode,
    subscription_feed_episode_head,
]
"""The routes a podcast app calls, with the feed's token and no key (the MEDIA surface)."""


async def _open(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    kind: str,
    scope_id: str,
) -> FeedView:
    meta = command_metadata(request, principal.key_id)
    store: EventStore = services.store
    opened = await commands.open_feed(store, principal.account_id, kind, scope_id, meta)
    settings: Settings = services.settings
    issued = opened.state.issued_at or datetime.now(UTC)
    named = {"batch_id" if kind == BATCH else "subscription_id": opened.source.scope.scope_id}
    return FeedView(
        **named,
        feed_url=feed_url(settings, opened.source, opened.token),
        token_hint=opened.state.hint or "",
        issued_at=int(issued.timestamp() * 1000),
    )


async def _close(
    request: Request[Any, Any, Any],
    services: Services,
    principal: Principal,
    kind: str,
    scope_id: str,
) -> None:
    meta = command_metadata(request, principal.key_id)
    store: EventStore = services.store
    await commands.close_feed(store, principal.account_id, kind, scope_id, meta)


class BatchFeedController(Controller):
    """The owner's side of a batch's feed (the job API, with a key)."""

    path = "/batch"
    tags = ["feeds"]

    @post("/{batch_id:str}/feed", status_code=201)
    async def open_batch_feed(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> FeedView:
        """Open the batch's podcast feed with a new token, or rotate it: the URL answered
        holds the token (shown only now); the URL before it answers 404 from now on."""
        return await _open(request, services, principal, BATCH, batch_id)

    @delete("/{batch_id:str}/feed", status_code=204)
    async def close_batch_feed(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        batch_id: str,
        principal: Principal,
    ) -> None:
        """Close the batch's feed: its URL answers 404 until a new token is issued. 404 when
        the feed is not open."""
        await _close(request, services, principal, BATCH, batch_id)


class SubscriptionFeedController(Controller):
    """The owner's side of a subscription's feed (the job API, with a key)."""

    path = "/subscriptions"
    tags = ["feeds"]

    @post("/{subscription_id:str}/feed", status_code=201)
    async def open_subscription_feed(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        subscription_id: str,
        principal: Principal,
    ) -> FeedView:
        """Open the subscription's podcast feed with a new token, or rotate it (as a batch's)."""
        return await _open(request, services, principal, SUBSCRIPTION, subscription_id)

    @delete("/{subscription_id:str}/feed", status_code=204)
    async def close_subscription_feed(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        subscription_id: str,
        principal: Principal,
    ) -> None:
        """Close the subscription's feed; 404 when it is not open."""
        await _close(request, services, principal, SUBSCRIPTION, subscription_id)
