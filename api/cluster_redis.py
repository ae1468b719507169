"""The API process's Redis: given to `create_app(redis=...)`, else opened from settings."""

from __future__ import annotations

from arq.connections import ArqRedis

from spool.adapters.settings import Settings
from spool.api.services import Services


def open_redis(settings: Settings) -> ArqRedis | None:
    """A Redis client for `settings.redis_url` (None without one); it connects on first use."""
    url = settings.redis_url
    if url is None:
        return None
    # Fails fast: a Redis that is down must not stall requests (arq's create_pool would retry
    # for seconds).
    redis: ArqRedis = ArqRedis.from_url(url, socket_connect_timeout=1.0)
    return redis


async def close_redis(services: Services) -> None:
    """Close the Redis the app opened (a given one belongs to the caller)."""
    if services.owns_redis and services.redis is not None:
        await services.redis.aclose()
