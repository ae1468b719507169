"""Which waiting job starts next: accounts take turns, so one account's flood cannot starve
another's job; within an account, higher priority first; only what the nodes can start soon is
sent to Redis, the rest waits in PostgreSQL's line.

Real parts only: PostgreSQL, Redis, moto's S3 server, FFmpeg and the loopback media server.
"""

from __future__ import annotations

from typing import Any

from spool.adapters.read_models.jobs import jobs
from spool.domain import job
from spool.keys import issue
from spool.reactors.pipeline import PipelineReactor, Ticks
from tests.fixtures.cluster import Cluster, StartCluster
from tests.fixtures.media import MediaServer
from tests.fixtures.waiting import until


async def _download_starts(cluster: Cluster) -> list[str]:
    """The jobs whose download started, in the log's order."""
    rows = await cluster.pool.fetch(
        "SELECT stream_id FROM events WHERE type = 'StageStarted' "
        "AND data->>'stage' = 'download' ORDER BY position"
    )
    return [r[0].removeprefix("job-") for r in rows]


async def _create(cluster: Cluster, key: str, url: str, **options: Any) -> str:
    answer = await cluster.client.post(
        "/jobs", json={"url": url, **options}, headers=cluster.headers(key)
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


async def _in_redis(cluster: Cluster) -> int:
    count: int = await cluster.redis.zcard("spool:queue:download")
    return count


async def _waiting(cluster: Cluster) -> int:
    count: int = await cluster.pool.fetchval("SELECT count(*) FROM dispatch_waiting")
    return count


async def _all_completed(cluster: Cluster, job_ids: list[str]) -> None:
    async def done() -> bool:
        statuses = await cluster.pool.fetch(
            f"SELECT status FROM {jobs.name} WHERE job_id = ANY($1)", job_ids
        )
        return len(statuses) == len(job_ids) and all(r[0] == "Completed" for r in statuses)

    await until(done, seconds=120)


async def test_another_accounts_job_runs_before_a_flood_is_done(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, download_concurrency=1) as cluster:
        url = media_server.url("clip.mp4")
        flood = [await _create(cluster, cluster.key, url, filename=f"a{i}") for i in range(10)]
        # With no node online only a couple are sent to Redis; the rest wait in line.
        await until(lambda: _waiting_is(cluster, 8), seconds=30)
        assert await _in_redis(cluster) == 2
        other = await issue(cluster.store, name="other", admin=False)
        await cluster.runner.wait_until("api_keys", other.at)
        theirs = await _create(cluster, other.key, url, filename="b")
        cluster.start_node(download_concurrency=1)
        await _all_completed(cluster, [*flood, theirs])
        order = await _download_starts(cluster)
        # Sent ahead before it came: the two in Redis; then the accounts take turns.
        assert order.index(theirs) <= 3, order
        assert sum(1 for j in flood if order.index(j) > order.index(theirs)) >= 6


async def _waiting_is(cluster: Cluster, n: int) -> bool:
    return await _waiting(cluster) == n


async def test_a_high_priority_job_starts_before_the_accounts_older_normal_ones(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, download_concurrency=1) as cluster:
        url = media_server.url("clip.mp4")
        normal = [await _create(cluster, cluster.key, url, filename=f"n{i}") for i in range(6)]
        await until(lambda: _waiting_is(cluster, 4), seconds=30)
        urgent = await _create(cluster, cluster.key, url, filename="h", priority="high")
        assert (await cluster.job(urgent))["priority"] == "high"
        assert (await cluster.job(normal[0]))["priority"] is None
        await until(lambda: _waiting_is(cluster, 5), seconds=30)
        cluster.start_node(download_concurrency=1)
        await _all_completed(cluster, [*normal, urgent])
        order = await _download_starts(cluster)
        # Two were sent before it came; it goes before every normal job still in line.
        assert order.index(urgent) == 2, order
        assert order[3:] == normal[2:]


async def test_a_priority_that_is_no_word_nor_number_in_range_is_refused(
    cluster: Cluster, media_server: MediaServer
) -> None:
    url = media_server.url("clip.mp4")
    for bad in ("urgentest", 101, True):
        answer = await cluster.client.post(
            "/jobs", json={"url": url, "priority": bad}, headers=cluster.headers()
        )
        assert answer.status_code == 400, answer.text
        assert "priority" in answer.text
    count = await cluster.pool.fetchval(f"SELECT count(*) FROM {jobs.name}")
    assert count == 0


async def test_a_cancelled_waiting_job_leaves_the_line_and_never_starts(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, download_concurrency=1) as cluster:
        url = media_server.url("clip.mp4")
        made = [await _create(cluster, cluster.key, url, filename=f"c{i}") for i in range(4)]
        await until(lambda: _waiting_is(cluster, 2), seconds=30)
        cancelled = made[3]
        answer = await cluster.client.delete(f"/jobs/{cancelled}", headers=cluster.headers())
        assert answer.status_code == 200, answer.text
        await until(lambda: _waiting_is(cluster, 1), seconds=30)
        cluster.start_node(download_concurrency=1)
        await _all_completed(cluster, made[:3])
        assert cancelled not in await _download_starts(cluster)
        assert job.StageStarted.__name__ not in await cluster.event_types(cancelled)


async def test_an_admin_weight_gives_an_account_more_of_the_slots(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, download_concurrency=1) as cluster:
        url = media_server.url("clip.mp4")
        other = await issue(cluster.store, name="heavy", admin=False)
        await cluster.runner.wait_until("api_keys", other.at)
        answer = await cluster.client.put(
            f"/admin/accounts/{other.account_id}/share",
            json={"weight": 3},
            headers=cluster.headers(cluster.admin_key),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["share"] == {"weight": 3, "default_priority": "normal"}
        light = [await _create(cluster, cluster.key, url, filename=f"l{i}") for i in range(8)]
        await until(lambda: _waiting_is(cluster, 6), seconds=30)
        heavy = [await _create(cluster, other.key, url, filename=f"h{i}") for i in range(8)]
        cluster.start_node(download_concurrency=1)
        await _all_completed(cluster, [*light, heavy[0]])
        order = await _download_starts(cluster)
        # Past the two sent before anyone else waited: three of heavy's for each of light's.
        window = order[2:10]
        assert sum(1 for j in window if j in heavy) >= 5, (order, heavy)


async def test_a_line_whose_counts_went_wrong_is_mended_and_moves_again(
    start_cluster: StartCluster, media_server: MediaServer
) -> None:
    async with start_cluster(with_node=False, download_concurrency=1) as cluster:
        url = media_server.url("clip.mp4")
        made = [await _create(cluster, cluster.key, url, filename=f"m{i}") for i in range(4)]
        await until(lambda: _waiting_is(cluster, 2), seconds=30)
        # As if an event had been missed: the account seems to have nothing waiting.
        await cluster.pool.execute("UPDATE dispatch_accounts SET waiting = 0")
        ticks = Ticks(PipelineReactor(cluster.redis, cluster.store), cluster.store)
        await ticks.pass_once()  # the first pass of a process mends
        assert await cluster.pool.fetchval("SELECT waiting FROM dispatch_accounts") == 2
        assert await _in_redis(cluster) == 2  # no room yet: no node is online
        cluster.start_node(download_concurrency=1)
        await _all_completed(cluster, made)
