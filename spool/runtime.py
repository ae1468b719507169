"""Wiring: settings -> servers (embedded where unset) -> migrations -> pool, store, runner."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from arq.connections import ArqRedis

from adapters import cluster_identity
from adapters.database import check_reachable, create_pool, migrate
from adapters.event_store import EventStore
from adapters.log_redaction import remember
from adapters.queue import connect
from adapters.settings import Settings
from adapters.storage import ObjectStorage, storage_from_url
from reactors.projection import ProjectionRunner
from reactors.projections import all_projections
from spool.embedded import EmbeddedPostgres, EmbeddedRedis
from spool.keys import ensure_admin_key

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
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, need_redis: bool = False, run_migrations: bool = True
) -> AsyncIterator[Runtime]:
    """Start what `settings` leave unset, migrate, and yield the wired parts; stop all on exit."""
    remember(settings.api_key, settings.secret_key, settings.metrics_token)
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    pool: asyncpg.Pool | None = None
    redis: ArqRedis | None = None
    storage: ObjectStorage | None = None
    try:
        database_url = settings.database_url
        if database_url is None:
            pg = EmbeddedPostgres(settings.data_dir)
            embedded.append(pg)
            database_url = pg.start()
        await check_reachable(database_url)
        redis_url = settings.redis_url
        if redis_url is None and need_redis:
            local_redis = EmbeddedRedis(settings.data_dir)
            embedded.append(local_redis)
            redis_url = local_redis.start()
        if redis_url is not None and need_redis:
            # Before the migrations: a Redis that is not there is said at once, not after them.
            redis = await connect(redis_url)
        if run_migrations:
            await migrate(database_url)
        pool = await create_pool(database_url, max_size=20)
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections())
        storage = storage_from_url(settings.storage_url, data_dir=settings.data_dir)
        if redis is not None:
            await cluster_identity.join(pool, redis)
        runtime = Runtime(
            settings, database_url, redis_url, pool, store, runner, storage, redis, embedded
        )
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
        for server in reversed(embedded):
            server.stop()
