"""Alembic environment: runs migrations over asyncpg, one migrator at a time."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from spool.adapters.read_models import metadata

# Any number of `spool up` may start at once: an advisory lock lets one migrate at a time.
_MIGRATION_LOCK = 0x5B001


def _run(connection: Connection) -> None:
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    context.configure(connection=connection, target_metadata=metadata)
    context.run_migrations()


async def _main(url: str) -> None:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


url = context.config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url must be set by the caller"
connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_main(url))
