"""A process that vanishes mid-transaction (its machine died, its link went down) must not hold
the cluster's projections back: an event becomes readable only once every older transaction
has ended, so PostgreSQL is told to let such a client go (`SPOOL_DATABASE_PEER_TIMEOUT`,
adapters/database.py `peer_settings`)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner


async def _gone(pool: asyncpg.Pool, pid: int, seconds: float) -> bool:
    """Whether the server ended backend `pid` within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_client_gone_quiet_mid_transaction_holds_projections_back_only_until_its_timeout(
    fresh_database_url: str,
) -> None:
    vanishing = await create_pool(fresh_database_url, min_size=1, max_size=1, peer_timeout=1.0)
    pool = await create_pool(fresh_database_url)
    try:
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections())
        conn = await vanishing.acquire()
        pid = conn.get_server_pid()
        left_open = conn.transaction()
        await left_open.start()
        await conn.fetchval("SELECT pg_current_xact_id()")  # a write's transaction id
        # The client says nothing more, as one whose link went down: a key issued now is
        # readable only once that transaction has ended.
        issued = await issue(store, name="after-the-cut", admin=False)

        await runner.wait_until("api_keys", issued.at, within=20)

        assert await _gone(pool, pid, 5)
        assert (
            await pool.fetchval("SELECT count(*) FROM api_keys WHERE name = 'after-the-cut'") == 1
        )
    finally:
        vanishing.terminate()
        await pool.close()


def test_the_peer_timeout_is_read_from_the_environment() -> None:
    settings = Settings.from_env({"SPOOL_DATABASE_PEER_TIMEOUT": "12.5"})
    assert settings.database_peer_timeout == 12.5
