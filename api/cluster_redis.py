"""The API process's Redis: given to `create_app(redis=...)`, else opened once from settings."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from litestar.datastructures import State

_lock = asyncio.Lock()


async def redis_of(state: State) -> ArqRedis | None:
    """The Redis to use for rate limits and pings; None when no Redis is configured."""
    redis: ArqRedis | None = state.get("redis")
    if redis is not None:
        return redis
    url = state.settings.redis_url
    if url is None:
        return None
    async with _lock:
        if state.get("redis") is None:
            # Connects on first use and fails fast: a Redis that is down must not stall requests
            # (arq's create_pool would retry for seconds).
            state["redis"] = ArqRedis.from_url(url, socket_connect_timeout=1.0)
            state["redis_owned"] = True  # opened here, so closed here at shutdown
    opened: ArqRedis = state["redis"]
    return opened


async def close_redis(state: State) -> None:
    """Close the Redis this module opened (a given one belongs to the caller)."""
    if state.get("redis_owned"):
        redis: Any = state.pop("redis", None)
        state["redis_owned"] = False
        if redis is not None:
            await redis.aclose()
