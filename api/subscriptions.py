"""Subscriptions (issue 25): a feed, playlist or channel checked every so often, whose new
entries become jobs (domain/subscription.py); create, list, read, change, pause, resume,
delete, and each one's check history. The job API's surface: `{"error": ...}`, the caller's
own subscriptions only (anyone else's is a 404)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter

from spool.adapters.event_store import EventStore
from spool.adapters.read_models import subscriptions as subscription_rows
from spool.adapters.settings import Settings
from spool.api.auth import Principal
from spool.api.batches import job_storage
from spool.api.bodies import READS_BODY
from spool.api.errors import JobApiError
from spool.api.job_filters import time_param
from spool.api.job_requests import CreateJobBody, decode_strictly, validate_create_job
from spool.api.jobs import playlist_of
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.api.targets import refuse_forbidden_target
from spool.application import subscriptions as commands
from spool.application.jobs import NewJob
from spool.domain.job_options import AskedOptions
from spool.domain.subscription import (
    Retention,
    Schedule,
    SubscriptionState,
    check_retention,
    check_schedule,
)

DEFAULT_MAX_ITEMS = 10


class RetentionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which items keep their file: the last `keep_last` (by when their job finished), and
    those that finished within `keep_days` days; an item's file is deleted when either says
    so. At least one is given."""

    keep_last: int | None = None
    keep_days: int | None = None


class CreateSubscriptionBody(AskedOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /subscriptions`: the URL to watch, how often (`interval` seconds, plus up to
    `jitter`), from when (`since`: ISO 8601 or ms since the epoch), how many new items a check
    takes at most (`max_items`), which items keep their file (`retention`), and what `POST
    /jobs` takes for each item: its options, `storage` and `labels`."""

    url: str
    interval: int
    jitter: int = 0
    since: str | int | None = None
    max_items: int = DEFAULT_MAX_ITEMS
    retention: RetentionBody | None = None
    storage: dict[str, Any] | None = None
    labels: dict[str, str] | None = None


class ChangeSubscriptionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`PATCH /subscriptions/{id}`: each field given replaces the subscription's (`since: null`
    and `retention: null` clear theirs; `options` replaces the items' options whole, as `POST
    /jobs` takes them, and `retention` its retention whole)."""

    interval: int | None = None
    jitter: int | None = None
    since: str | int | msgspec.UnsetType | None = msgspec.UNSET
    max_items: int | None = None
    retention: RetentionBody | msgspec.UnsetType | None = msgspec.UNSET
    options: dict[str, Any] | None = None
    labels: dict[str, str] | None = None


class CheckView(msgspec.Struct, omit_defaults=False):
    """One check; times are ms since the epoch."""

    check_id: str
    status: str
    """`running`, `finished` or `abandoned` (its process went silent and another took over)."""
    started_at: int
    finished_at: int | None
    seen: int | None
    new: int | None
    job_ids: list[str]
    error: str | None


class LastCheckView(msgspec.Struct, omit_defaults=False):
    check_id: str
    started_at: int
    finished_at: int | None
    seen: int
    new: int
    error: str | None


class RetentionView(msgspec.Struct, omit_defaults=False):
    keep_last: int | None
    keep_days: int | None


class SubscriptionView(msgspec.Struct, omit_defaults=False):
    """A subscription; times are ms since the epoch."""

    subscription_id: str
    url: str
    status: str
    """`active` or `paused`."""
    interval: int
    jitter: int
    since: int | None
    max_items: int
    retention: RetentionView | None
    """Which items keep their file (null: all of them)."""
    options: dict[str, Any]
    labels: dict[str, str]
    own_storage: bool
    """Whether its items go to a storage of their own (given at creation), not the account's."""
    created_at: int
    next_check_at: int | None
    checking: bool
    """Whether a check runs now."""
    last_check: LastCheckView | None
    checks: int
    items: int
    """Jobs its checks created."""


class SubscriptionPage(msgspec.Struct):
    subscriptions: list[SubscriptionView]
    next_cursor: str | None


class CheckPage(msgspec.Struct):
    subscription_id: str
    checks: list[CheckView]
    next_cursor: str | None


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def view(state: SubscriptionState) -> SubscriptionView:
    """The public view of a subscription."""
    created = _ms(state.created_at)
    assert created is not None
    last = state.last
    return SubscriptionView(
        subscription_id=state.subscription_id,
        url=state.url,
        status=state.status,
        interval=state.schedule.interval,
        jitter=state.schedule.jitter,
        since=_ms(state.schedule.since),
        max_items=state.schedule.max_items,
        retention=None
        if state.retention is None
        else RetentionView(
            keep_last=state.retention.keep_last, keep_days=state.retention.keep_days
        ),
        options=msgspec.to_builtins(state.options),
        labels=state.labels,
        own_storage=state.storage is not None,
        created_at=created,
        next_check_at=_ms(state.next_check_at),
        checking=state.running is not None,
        last_check=None
        if last is None
        else LastCheckView(
            check_id=last.check_id,
            started_at=_ms(last.started_at) or 0,
            finished_at=_ms(last.finished_at),
            seen=last.seen,
            new=last.new,
            error=last.error,
        ),
        checks=state.checks,
        items=state.items,
    )


def _since(raw: str | int | None) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise JobApiError(status_code=400, detail="since must be an ISO 8601 time or ms")
    at = time_param("since", raw)
    assert at is not None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _retention(body: RetentionBody | None) -> Retention | None:
    """The retention asked for, if Spool can keep to it (a 400 naming the field else)."""
    if body is None:
        return None
    return check_retention(Retention(keep_last=body.keep_last, keep_days=body.keep_days))


def _cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def _parse_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|", 1)
        return datetime.fromisoformat(at), key
    except (ValueError, UnicodeDecodeError):
        raise JobApiError(status_code=400, detail="Invalid cursor") from None


def _bounds(settings: Settings) -> commands.Bounds:
    return commands.Bounds(
        settings.subscription_min_interval,
        settings.subscription_max_items,
        settings.max_subscriptions,
    )


def _job_body(url: str, options: AskedOptions, labels: dict[str, str] | None) -> CreateJobBody:
    asked = {name: getattr(options, name) for name in AskedOptions.__struct_fields__}
    return CreateJobBody(url=url, labels=labels, **asked)


_create_decoder = msgspec.json.Decoder(CreateSubscriptionBody)
_change_decoder = msgspec.json.Decoder(ChangeSubscriptionBody)
_options_decoder = msgspec.json.Decoder(AskedOptions)


class SubscriptionsController(Controller):
    path = "/subscriptions"
    tags = ["subscriptions"]

    @post("/", status_code=201)
    async def create_subscription(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        data: CreateSubscriptionBody,
        principal: Principal,
    ) -> SubscriptionView:
        """Watch a feed, playlist or channel: every `interval` seconds (at least 5 minutes
        unless an admin allowed the account less) its new entries become jobs, each with the
        options, `storage` and `labels` given here, titled from its entry. The first check runs
        at once; with no `since` it takes only the newest `max_items` entries."""
        body = decode_strictly(_create_decoder, await request.body())
        valid = validate_create_job(_job_body(body.url, body, body.labels))
        if body.storage is not None and not body.storage:
            raise JobApiError(status_code=400, detail="storage must name a provider")
        await refuse_forbidden_target(services, valid.url)
        if valid.options.webhook_url is not None:
            await refuse_forbidden_target(services, valid.options.webhook_url, what="webhook_url")
        schedule = Schedule(
            interval=body.interval,
            jitter=body.jitter,
            since=_since(body.since),
            max_items=body.max_items,
        )
        settings: Settings = services.settings
        bounds = _bounds(settings)
        limits = await commands.limits_of(services.store, principal.account_id, bounds)
        check_schedule(schedule, limits)  # refused (400) before the source is read
        retention = _retention(body.retention)
        if await playlist_of(services, principal, valid.url) is None:
            raise JobApiError(
                status_code=400,
                detail="The URL lists no entries: subscribe to a feed, playlist or channel",
            )
        storage = (
            await job_storage(request, services, principal, body.storage) if body.storage else None
        )
        new = NewJob(url=valid.url, options=valid.options, storage=storage, labels=valid.labels)
        meta = command_metadata(request, principal.key_id)
        state = await commands.create_subscription(
            services.store, principal.account_id, new, schedule, bounds, meta, retention
        )
        return view(state)

    @get("/")
    async def list_subscriptions(
        self,
        services: Services,
        principal: Principal,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        cursor: str | None = None,
    ) -> SubscriptionPage:
        """The caller's subscriptions, newest first; `next_cursor` as `cursor` for the next
        page."""
        found = await subscription_rows.page(
            services.pool, principal.account_id, after=_parse_cursor(cursor), limit=limit
        )
        return SubscriptionPage(
            subscriptions=[view(s) for s in found.states],
            next_cursor=_cursor(*found.last) if found.more and found.last else None,
        )

    @get("/{subscription_id:str}")
    async def get_subscription(
        self, services: Services, principal: Principal, subscription_id: str
    ) -> SubscriptionView:
        """One subscription: its settings, its last check and when the next is due."""
        store: EventStore = services.store
        return view(await commands.owned_subscription(store, principal.account_id, subscription_id))

    @patch("/{subscription_id:str}", status_code=200, opt=READS_BODY)
    async def change_subscription(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        subscription_id: str,
    ) -> SubscriptionView:
        """Change `interval`, `jitter`, `since` (null: none), `max_items`, `retention`
        (replaced whole; null: none), the items' `options` (replaced whole) or `labels`; what
        is left out stays. A retention lowered applies at the next retention pass."""
        body = decode_strictly(_change_decoder, await request.body() or b"{}")
        store: EventStore = services.store
        state = await commands.owned_subscription(store, principal.account_id, subscription_id)
        options = None
        labels = body.labels
        if body.options is not None or body.labels is not None:
            asked = (
                _options_decoder.decode(msgspec.json.encode(body.options))
                if body.options is not None
                else AskedOptions(**msgspec.structs.asdict(state.options))
            )
            valid = validate_create_job(_job_body(state.url, asked, body.labels))
            if valid.options.webhook_url is not None:
                hook = valid.options.webhook_url
                await refuse_forbidden_target(services, hook, what="webhook_url")
            options = valid.options if body.options is not None else None
            labels = valid.labels if body.labels is not None else None
        since = body.since
        retention = body.retention
        change = commands.Change(
            interval=body.interval,
            jitter=body.jitter,
            since=None if isinstance(since, msgspec.UnsetType) else _since(since),
            clear_since=since is None,
            max_items=body.max_items,
            options=options,
            labels=labels,
            retention=None if isinstance(retention, msgspec.UnsetType) else _retention(retention),
            clear_retention=retention is None,
        )
        settings: Settings = services.settings
        meta = command_metadata(request, principal.key_id)
        changed = await commands.change_subscription(
            store, principal.account_id, subscription_id, change, _bounds(settings), meta
        )
        return view(changed)

    @delete("/{subscription_id:str}", status_code=200)
    async def delete_subscription(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        subscription_id: str,
    ) -> dict[str, Any]:
        """Stop watching for good; the jobs its checks created stay."""
        meta = command_metadata(request, principal.key_id)
        state = await commands.delete_subscription(
            services.store, principal.account_id, subscription_id, meta
        )
        return {"subscription_id": state.subscription_id, "deleted": True}

    @post("/{subscription_id:str}/pause", status_code=200)
    async def pause_subscription(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        subscription_id: str,
    ) -> SubscriptionView:
        """No check starts until it is resumed (one running ends creating no jobs)."""
        meta = command_metadata(request, principal.key_id)
        return view(
            await commands.pause_subscription(
                services.store, principal.account_id, subscription_id, meta
            )
        )

    @post("/{subscription_id:str}/resume", status_code=200)
    async def resume_subscription(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        subscription_id: str,
    ) -> SubscriptionView:
        """Check again; a check whose time passed while paused runs at once."""
        meta = command_metadata(request, principal.key_id)
        return view(
            await commands.resume_subscription(
                services.store, principal.account_id, subscription_id, meta
            )
        )

    @get("/{subscription_id:str}/checks")
    async def subscription_checks(
        self,
        services: Services,
        principal: Principal,
        subscription_id: str,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        cursor: str | None = None,
    ) -> CheckPage:
        """The subscription's checks, newest first: when each ran, the entries it saw, the
        jobs it created and its error."""
        store: EventStore = services.store
        state = await commands.owned_subscription(store, principal.account_id, subscription_id)
        found, more = await subscription_rows.checks(
            services.pool, state.subscription_id, after=_parse_cursor(cursor), limit=limit
        )
        return CheckPage(
            subscription_id=state.subscription_id,
            checks=[
                CheckView(
                    check_id=c.check_id,
                    status=c.status,
                    started_at=_ms(c.started_at) or 0,
                    finished_at=_ms(c.finished_at),
                    seen=c.seen,
                    new=c.new,
                    job_ids=c.job_ids,
                    error=c.error,
                )
                for c in found
            ],
            next_cursor=_cursor(found[-1].started_at, found[-1].check_id)
            if more and found
            else None,
        )
