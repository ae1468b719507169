"""Spool as a user runs it, for benchmarks: a migrated database of the bench's own, an embedded
Redis, and `spool` children over them (`tests.fixtures.processes`); all stopped and dropped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from spool.adapters.database import create_database, drop_database, migrate
from spool.embedded import EmbeddedRedis
from tests.fixtures.processes import AS_PRODUCTION, SpoolProcesses


@dataclass
class Cluster:
    database_url: str
    redis_url: str
    key: str
    """An admin API key."""
    procs: SpoolProcesses
    """The children, configured with the database and Redis; logs under `procs.root`."""
    api_url: str = ""

    def start_api(self, processes: int) -> str:
        """`spool api --processes N` with the admin key; its URL once it answers."""
        self.api_url = self.procs.api("--processes", str(processes), SPOOL_API_KEY=self.key)
        return self.api_url


@contextlib.asynccontextmanager
async def spool_cluster(server_url: str, label: str) -> AsyncIterator[Cluster]:
    """A migrated database `spool_bench_<hex>_<label>` and a Redis; `spool` children on demand.

    A child's log is printed if the bench fails, before the folder is removed.
    """
    name = f"spool_bench_{secrets.token_hex(4)}_{label}"
    root = Path(tempfile.mkdtemp(prefix=f"spool-bench-{label}-"))
    redis = EmbeddedRedis(root)
    url = await create_database(server_url, name)
    procs: SpoolProcesses | None = None
    try:
        await migrate(url)
        redis_url = redis.start()
        env = {
            "SPOOL_DATABASE_URL": url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_DATA_DIR": str(root / "data"),
            **AS_PRODUCTION,
        }
        procs = SpoolProcesses(root, env)
        with procs.kept_logs():
            yield Cluster(url, redis_url, "sk_" + secrets.token_urlsafe(24), procs)
    finally:
        if procs is not None:
            await asyncio.to_thread(procs.stop_all)
        redis.stop()
        await drop_database(server_url, name)
        shutil.rmtree(root, ignore_errors=True)
