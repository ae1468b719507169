"""Wiring: settings -> servers (embedded where unset) -> migrations -> pool, store, runner."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from adapters.database import create_pool, migrate
from adapters.event_store import EventStore
from adapters.settings import Settings
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
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, *, need_redis: bool = False, run_migrations: bool = True
) -> AsyncIterator[Runtime]:
    """Start what `settings` leave unset, migrate, and yield the wired parts; stop all on exit."""
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    pool: asyncpg.Pool | None = None
    try:
        database_url = settings.database_url
        if database_url is None:
            pg = EmbeddedPostgres(settings.data_dir)
            embedded.append(pg)
            database_url = pg.start()
        redis_url = settings.redis_url
        if redis_url is None and need_redis:
            redis = EmbeddedRedis(settings.data_dir)
            embedded.append(redis)
            redis_url = redis.start()
        if run_migrations:
            await migrate(database_url)
        pool = await create_pool(database_url)
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections())
        runtime = Runtime(settings, database_url, redis_url, pool, store, runner, embedded)
        if settings.api_key:
            await runner.catch_up("api_keys")
            if await ensure_admin_key(store, settings.api_key):
                log.info("created the admin key given in SPOOL_API_KEY")
            await runner.catch_up("api_keys")
        yield runtime
    finally:
        if pool is not None:
            await pool.close()
        for server in reversed(embedded):
            server.stop()
