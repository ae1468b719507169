"""A cluster knows itself: its database holds an id that its Redis is claimed with, a process
whose database and Redis belong to different clusters refuses to start, and a unit of a job
the database does not know is left queued for its owner, never done in its name."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from arq.constants import retry_key_prefix
from arq.jobs import Job

from spool.adapters import cluster_identity
from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.queue import Dispatch, connect, dispatch
from tests.fixtures.cluster import StartCluster
from tests.fixtures.processes import start_module


@pytest.fixture
async def other_cluster(server_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A database migrated on its own: another cluster, with an id of its own."""
    name = f"spool_other_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    await migrate(url)
    pool = await create_pool(url, max_size=2)
    try:
        yield url, pool
    finally:
        await pool.close()
        await drop_database(server_url, name)


async def test_a_redis_serves_the_first_cluster_that_claims_it_until_emptied(
    pool: asyncpg.Pool, other_cluster: tuple[str, asyncpg.Pool], redis_url: str
) -> None:
    _, other = other_cluster
    redis = await connect(redis_url)
    try:
        await redis.delete(cluster_identity.CLUSTER_KEY)
        ours = await cluster_identity.join(pool, redis)
        assert await cluster_identity.join(pool, redis) == ours  # every process of it joins
        with pytest.raises(cluster_identity.ClusterMismatch, match=ours):
            await cluster_identity.join(other, redis)
        await redis.flushdb()  # an emptied Redis is claimed again by whoever starts first
        theirs = await cluster_identity.join(other, redis)
        assert theirs != ours
    finally:
        await redis.delete(cluster_identity.CLUSTER_KEY)
        await redis.aclose()


async def test_a_worker_beside_another_clusters_redis_refuses_to_start(
    pool: asyncpg.Pool,
    other_cluster: tuple[str, asyncpg.Pool],
    redis_url: str,
    tmp_path: Path,
) -> None:
    redis = await connect(redis_url)
    try:
        await redis.delete(cluster_identity.CLUSTER_KEY)
        ours = await cluster_identity.join(pool, redis)
        log = tmp_path / "worker.log"
        worker = start_module(
            "spool",
            "worker",
            env={
                "SPOOL_DATABASE_URL": other_cluster[0],
                "SPOOL_REDIS_URL": redis_url,
                "SPOOL_DATA_DIR": str(tmp_path / "data"),
                "SPOOL_NODE_ID": "stray",
            },
            log=log,
        )
        try:
            code = await asyncio.to_thread(worker.wait, 120)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        said = log.read_text()
        assert code != 0, said
        assert f"holds the queues of cluster {ours}" in said
        assert await cluster_identity.join(pool, redis) == ours  # the claim is untouched
    finally:
        await redis.delete(cluster_identity.CLUSTER_KEY)
        await redis.aclose()


async def test_a_unit_of_a_job_this_database_does_not_know_stays_queued(
    start_cluster: StartCluster,
) -> None:
    async with start_cluster() as cluster:
        unit = Dispatch(str(uuid.uuid4()), 1, "download", 1)
        assert await dispatch(cluster.redis, unit)
        queued = Job(unit.unit_id, cluster.redis)
        # The node takes it, finds no such job, and hands it back for a later try.
        for _ in range(600):
            tries = await cluster.redis.get(retry_key_prefix + unit.unit_id)
            if tries is not None and int(tries) >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the node never took the unit")
        assert await queued.result_info() is None  # never recorded as done
