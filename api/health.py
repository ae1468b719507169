"""`GET /health`: the API, PostgreSQL, Redis and the task scheduler, each really checked."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg
from litestar import Request, Response, get

from spool.api.auth import lookup, presented_key
from spool.api.envelope import timestamp
from spool.api.services import Services

PROCESS_HEADER = "x-spool-process"
"""The id of the API process that answered `/health`."""

CHECK_TIMEOUT = 2.0
"""A component that takes longer than this to answer counts as unhealthy."""

SCHEDULER = "scheduler"
"""The scheduler reactor's checkpoint row."""

SCHEDULER_STALE_SECONDS = 30.0
"""Task events waiting this long past the scheduler's checkpoint mean it is stuck or down."""

# Unapplied task events older than the threshold, looked for among the log's newest events
# only: the check stays cheap however long the log is.
_SCHEDULER_LAG = """
WITH cp AS (SELECT tx, position, updated_at FROM checkpoints WHERE name = $1),
head AS (SELECT coalesce(max(position), 0) AS position FROM events)
SELECT cp.updated_at,
       extract(epoch FROM now() - cp.updated_at)::float8 AS checkpoint_age,
       (SELECT extract(epoch FROM now() - min(e.recorded_at))::float8 FROM events e
        WHERE e.position > greatest(cp.position, head.position - 100000)
          AND (e.tx, e.position) > (cp.tx::text::xid8, cp.position)
          AND e.stream_id LIKE 'task-%') AS oldest_pending_age
FROM cp, head
"""


async def _timed(check: Any) -> tuple[str, float, str | None]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check
    except Exception as exc:  # any failure to answer is the component being unhealthy
        return "unhealthy", (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"
    return "healthy", (time.perf_counter() - started) * 1000, None


async def _database(pool: asyncpg.Pool) -> None:
    if await pool.fetchval("SELECT 1") != 1:
        raise RuntimeError("SELECT 1 did not answer 1")


async def _redis(services: Services) -> None:
    redis = services.redis
    if redis is None:
        raise RuntimeError("no Redis configured")
    if not await redis.ping():
        raise RuntimeError("PING was not answered")


async def _scheduler(pool: asyncpg.Pool) -> tuple[str, dict[str, Any]]:
    """`unknown` if the scheduler never ran; `unhealthy` if task events wait on it too long."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            row = await pool.fetchrow(_SCHEDULER_LAG, SCHEDULER)
    except Exception as exc:
        return "unhealthy", {"error": f"{type(exc).__name__}: {exc}"}
    if row is None:
        return "unknown", {"reason": "the scheduler has never run (no checkpoint)"}
    pending = row["oldest_pending_age"]
    details = {
        "checkpoint_age_seconds": round(row["checkpoint_age"], 3),
        "oldest_pending_task_event_seconds": round(pending, 3) if pending is not None else None,
    }
    if pending is not None and pending > SCHEDULER_STALE_SECONDS:
        return "unhealthy", {**details, "reason": "task events are waiting on the scheduler"}
    return "healthy", details


async def _admin_asks(request: Request[Any, Any, Any], services: Services) -> bool:
    """Whether the caller presents an admin key; False when that cannot be told (database down)."""
    key = presented_key(request)
    if key is None:
        return False
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            principal = await lookup(services.keys, key)
    except Exception:  # the database is what is down: nobody is known to be an admin now
        return False
    return principal is not None and principal.admin


@get("/health", tags=["cluster"])
async def health(request: Request[Any, Any, Any], services: Services) -> Response[dict[str, Any]]:
    """200 `healthy` when every component is; 503 `unhealthy` (database or Redis down) or
    `degraded` (the scheduler missing or behind) otherwise."""
    pool: asyncpg.Pool = services.pool
    (
        (db, db_ms, db_error),
        (redis, redis_ms, redis_error),
        (sched, sched_details),
    ) = await asyncio.gather(_timed(_database(pool)), _timed(_redis(services)), _scheduler(pool))
    components = {
        "api": "healthy",
        "database": db,
        "redis": redis,
        "scheduler": sched,
        # The seed's own names for the same parts.
        "cluster_server": "healthy" if db == redis == "healthy" else "unhealthy",
        "task_scheduler": sched,
    }
    if db != "healthy" or redis != "healthy":
        status = "unhealthy"
    elif sched != "healthy":
        status = "degraded"
    else:
        status = "healthy"
    if not await _admin_asks(request, services):
        # The drivers' own words name hosts, ports, databases and roles: an admin's to read.
        db_error = db_error and "unreachable"
        redis_error = redis_error and "unreachable"
        sched_details.pop("error", None)
    details: dict[str, Any] = {
        "database": {"latency_ms": round(db_ms, 2), "error": db_error},
        "redis": {"latency_ms": round(redis_ms, 2), "error": redis_error},
        "scheduler": sched_details,
    }
    body = {
        "status": status,
        "timestamp": timestamp(),
        "components": components,
        "details": details,
    }
    # Which API process answered: `spool api --processes N` runs several behind one port.
    return Response(
        body,
        status_code=200 if status == "healthy" else 503,
        headers={PROCESS_HEADER: str(os.getpid())},
    )
