"""What handlers work with: one typed object, built once per app by `api.app.create_app`.

Handlers, dependencies and websockets take it as the app-level dependency `services`
(`Provide`). Code Litestar gives no dependencies (the ASGI middleware, a route's own ASGI
middleware) reads it through `services_of`, the one place that knows where the app keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncpg
    from arq.connections import ArqRedis
    from litestar import Litestar

    from spool.adapters.account_storage import AccountStorages
    from spool.adapters.event_store import EventStore
    from spool.adapters.probes import ProbePool
    from spool.adapters.settings import Settings
    from spool.adapters.ssrf import UrlGuard
    from spool.adapters.storage import ObjectStorage
    from spool.adapters.viewer_sessions import ViewerRecorder
    from spool.api.auth import VerifiedKeys
    from spool.api.cluster_ws import ClusterFeed
    from spool.api.dashboard import StatsCache
    from spool.api.health_ws import LogBuffer
    from spool.api.media import Media

STATE_KEY = "services"
"""Where `create_app` keeps the services in the app's state."""


class Services:
    """The connections, settings and per-process parts every surface of one app shares.

    Read-only: each attribute is `Final`, so mypy refuses a reassignment. A plain class, not a
    dataclass: Litestar checks each injected value against its annotation with msgspec, which
    passes an instance of a plain class through as it is but would evaluate a dataclass's field
    types, and those name API modules that import this one.
    """

    __slots__ = (
        "dashboard_stats",
        "feed",
        "guard",
        "keys",
        "links_key",
        "log_buffer",
        "media",
        "owns_redis",
        "pool",
        "probes",
        "projection_types",
        "redis",
        "settings",
        "started_at",
        "storage",
        "storages",
        "store",
        "token_key",
        "viewers",
    )

    pool: Final[asyncpg.Pool]
    store: Final[EventStore]
    settings: Final[Settings]
    storage: Final[ObjectStorage]
    """The cluster's default storage."""
    storages: Final[AccountStorages]
    """Each account's storage, the default where it configured none."""
    guard: Final[UrlGuard]
    probes: Final[ProbePool]
    viewers: Final[ViewerRecorder]
    """This process's live connections, recorded as viewers."""
    keys: Final[VerifiedKeys]
    redis: Final[ArqRedis | None]
    """Rate limits and pings; None when no Redis is configured."""
    owns_redis: Final[bool]
    """Whether the app opened `redis` (and so closes it), rather than being given it."""
    feed: Final[ClusterFeed]
    media: Final[Media]
    log_buffer: Final[LogBuffer]
    dashboard_stats: Final[StatsCache]
    token_key: Final[bytes]
    """Signs and verifies the health token (`api/tokens.py`) and `?token=` playback."""
    links_key: Final[bytes]
    """Signs `/files/...` links (`adapters/file_links.py`)."""
    started_at: Final[float]
    projection_types: Final[Mapping[str, frozenset[str]]]
    """The event types each projection follows, for `/metrics`' lag; empty when not given."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        store: EventStore,
        settings: Settings,
        storage: ObjectStorage,
        storages: AccountStorages,
        guard: UrlGuard,
        probes: ProbePool,
        viewers: ViewerRecorder,
        keys: VerifiedKeys,
        redis: ArqRedis | None,
        owns_redis: bool,
        feed: ClusterFeed,
        media: Media,
        log_buffer: LogBuffer,
        dashboard_stats: StatsCache,
        token_key: bytes,
        links_key: bytes,
        started_at: float,
        projection_types: Mapping[str, frozenset[str]],
    ) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.storage = storage
        self.storages = storages
        self.guard = guard
        self.probes = probes
        self.viewers = viewers
        self.keys = keys
        self.redis = redis
        self.owns_redis = owns_redis
        self.feed = feed
        self.media = media
        self.log_buffer = log_buffer
        self.dashboard_stats = dashboard_stats
        self.token_key = token_key
        self.links_key = links_key
        self.started_at = started_at
        self.projection_types = projection_types


def services_of(app: Litestar) -> Services:
    """The services of `app`, for code that Litestar's dependency injection does not reach."""
    services: Services = app.state[STATE_KEY]
    return services
