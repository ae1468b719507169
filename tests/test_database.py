"""The connection pool: what a connection carries back into it, and what it must not."""

from __future__ import annotations

import asyncpg
import pytest

from spool.adapters.database import create_pool


async def test_a_connection_that_listened_comes_back_listening_to_nothing(
    fresh_database_url: str,
) -> None:
    pool = await create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        # Released still listening (asyncpg warns): the pool must clean up after it.
        with pytest.warns(asyncpg.InterfaceWarning):
            async with pool.acquire() as conn:
                await conn.add_listener("spool_probe", lambda *_: None)
                assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 1
        async with pool.acquire() as again:  # the pool's only connection: the same one
            assert await again.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    finally:
        await pool.close()


async def test_an_abandoned_transaction_and_its_locks_end_on_release(
    fresh_database_url: str,
) -> None:
    pool = await create_pool(fresh_database_url, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        tx = conn.transaction()
        await tx.start()
        assert await conn.fetchval("SELECT pg_try_advisory_xact_lock(42)")
        await conn.execute("SET LOCAL statement_timeout = 1234")
        await pool.release(conn)  # never committed: the pool rolls it back

        other = await create_pool(fresh_database_url, min_size=1, max_size=1)
        try:  # a second session can take the lock: it was released with the transaction
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock(42)")
        finally:
            await other.close()
        async with pool.acquire() as again:
            assert await again.fetchval("SHOW statement_timeout") == "0"
    finally:
        await pool.close()
