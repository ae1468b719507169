"""Which cluster a database and a Redis belong to: a process refuses to join two clusters.

The database holds the cluster's id (migration 0013). Redis is claimed with it under
`CLUSTER_KEY` by the first process that starts; every later process compares. A worker pointed
at the right Redis but at another cluster's database would otherwise take that cluster's queued
units and, finding none of their jobs, drop them.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

CLUSTER_KEY = "spool:cluster"
"""The Redis key that names the cluster whose queues this Redis holds."""


class ClusterMismatch(RuntimeError):
    """The database and Redis belong to different clusters."""


async def cluster_id(pool: asyncpg.Pool) -> str:
    """This database's cluster id."""
    found: str | None = await pool.fetchval("SELECT cluster_id FROM cluster_identity")
    if found is None:  # a database migrated, then emptied by hand
        raise ClusterMismatch("the database has no cluster id: run `spool migrate` on it")
    return found


async def join(pool: asyncpg.Pool, redis: Redis) -> str:
    """Claim `redis` for this database's cluster, or raise ClusterMismatch if another holds it.

    An emptied Redis (FLUSHALL, a restart without persistence) is claimed again by the next
    process that starts.
    """
    ours = await cluster_id(pool)
    await redis.set(CLUSTER_KEY, ours, nx=True)
    held = await redis.get(CLUSTER_KEY)
    theirs = held.decode() if isinstance(held, bytes) else held
    if theirs is not None and theirs != ours:
        raise ClusterMismatch(
            f"the Redis in use (SPOOL_REDIS_URL) holds the queues of cluster {theirs}, but the "
            f"database (SPOOL_DATABASE_URL) is cluster {ours}: point both at one cluster's "
            "servers (or give this cluster a Redis, or a Redis database number, of its own)"
        )
    return ours
