"""Wiring: settings -> servers (embedded where unset) -> migrations -> pool, store, runner."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis

from spool.adapters import cluster_identity
from spool.adapters.database import check_reachable, create_pool, migrate
from spool.adapters.event_store import EventStore
from spool.adapters.log_redaction import remember
from spool.adapters.queue import connect
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.adapters.storage import ObjectStorage, storage_from_url
from spool.embedded import Role, embedded_servers
from spool.keys import ensure_admin_key
from spool.reactors.projection import ProjectionRunner

log = logging.getLogger("spool")


@dataclass
class Runtime:
    """The running parts of one spool process."""

    settings: Settings
    database_url: str
    redis_url: str | None
    pool: asyncpg.Pool
    store: EventStore
    runner: ProjectionRunner
    storage: ObjectStorage
    redis: ArqRedis | None = None


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    need_redis: bool = False,
    run_migrations: bool = True,
    embedded: Role = "borrow",
) -> AsyncIterator[Runtime]:
    """Find or start what `settings` leave unset (as `embedded` says: spool/embedded.py),
    migrate, and yield the wired parts; stop all this process started on exit."""
    remember(settings.api_key, settings.secret_key, settings.metrics_token)
    servers = contextlib.ExitStack()
    pool: asyncpg.Pool | None = None
    redis: ArqRedis | None = None
    storage: ObjectStorage | None = None
    try:
        urls = servers.enter_context(
            embedded_servers(settings, need_redis=need_redis, role=embedded)
        )
        database_url, redis_url = urls.database_url, urls.redis_url
        await check_reachable(database_url)
        if redis_url is not None and need_redis:
            # Before the migrations: a Redis that is not there is said at once, not after them.
            redis = await connect(redis_url)
        if run_migrations:
            await migrate(database_url)
        pool = await create_pool(
            database_url,
            max_size=settings.database_pool_size,
            peer_timeout=settings.database_peer_timeout,
        )
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections())
        storage = storage_from_url(settings.storage_url, data_dir=settings.data_dir)
        if redis is not None:
            await cluster_identity.join(pool, redis)
        runtime = Runtime(settings, database_url, redis_url, pool, store, runner, storage, redis)
        if settings.api_key:
            await runner.catch_up("api_keys")
            created = await ensure_admin_key(store, settings.api_key)
            if created is not None:
                await runner.wait_until("api_keys", created.at)
                log.info("created the admin key given in SPOOL_API_KEY")
        yield runtime
    finally:
        if redis is not None:
            await redis.aclose()
        if storage is not None:
            await storage.close()
        if pool is not None:
            await pool.close()
        servers.close()
