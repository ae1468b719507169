"""Fair shares: how long a small account waits behind a flood, and what a deep line costs.

Spool runs as a user runs it (`spool reactors` and one no-op node of `bench.pipeline_noop`,
each stage doing nothing), over a database of the bench's own. Jobs are appended as the API
appends them (`JobCreated`), for two accounts:

* **B alone**: account B submits `--small` jobs on the idle cluster; seconds from B's first
  `JobCreated` to B's last `JobCompleted` (median of `--rounds`).
* **B behind a flood**: account A submits `--flood` jobs in bulk, then B its `--small`; the same
  span for B's jobs, and A's jobs/s. Run twice, side by side: with the line as shipped
  (`SPOOL_DISPATCH_AHEAD` 1.0) and with first come, first served (every job sent to Redis at
  once, as before the line: `SPOOL_DISPATCH_AHEAD` large), each on a cluster of its own.
* **A deep line**: `--deep` jobs of one account wait (no node) beside a few of nine others; the
  milliseconds a dispatch pass takes (`dispatch_queue.lines`, `fair_share.plan`,
  `dispatch_queue.send` of `--concurrency` jobs, rolled back, with the reactors stopped so that
  nothing else contends; the pipeline's `ZCOUNT` of Redis aside), against the same with 100 jobs
  waiting, and the pipeline's time to put the deep line's jobs in line.

    python -m bench.fairness                                  # about 3 minutes
    python -m bench.fairness --flood 500 --deep 20000 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Sequence

import asyncpg

from bench.arguments import add_database_url
from bench.cluster import Cluster, spool_cluster
from bench.pipeline_noop import job_span, start_workers, wait_nodes
from spool.adapters import dispatch_queue, queue
from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore, StreamAppend
from spool.domain import fair_share, job
from spool.domain.events import NewEvent

SUBMITTERS = 8


BULK = 500
"""Jobs a bulk submission appends in one transaction, as `POST /jobs/bulk` does."""


def _created(account: str) -> tuple[str, StreamAppend]:
    jid = str(uuid.uuid4())
    created = job.create(
        job_id=jid, account_id=account, url=f"https://media.test/{jid}", options=job.JobOptions()
    )
    return jid, StreamAppend(job.stream_id(jid), [NewEvent(e) for e in created], 0)


async def submit(store: EventStore, account: str, n: int, *, bulk: bool = False) -> list[str]:
    """`n` jobs of `account`: one by one from `SUBMITTERS` at once, or (`bulk`) `BULK` to a
    transaction; their ids."""
    ids: list[str] = []
    if bulk:
        for start in range(0, n, BULK):
            made = [_created(account) for _ in range(min(BULK, n - start))]
            await store.append_many([a for _, a in made])
            ids += [jid for jid, _ in made]
        return ids

    async def one_by_one(k: int) -> None:
        for _ in range(k):
            jid, append = _created(account)
            await store.append(append.stream_id, append.events, 0)
            ids.append(jid)

    await asyncio.gather(
        *(one_by_one(n // SUBMITTERS + (i < n % SUBMITTERS)) for i in range(SUBMITTERS))
    )
    return ids


async def wait_done(pool: asyncpg.Pool, ids: Sequence[str], within: float = 900) -> None:
    streams = [job.stream_id(i) for i in ids]
    deadline = time.monotonic() + within
    while await pool.fetchval(
        "SELECT count(*) FROM events WHERE stream_id = ANY($1::text[]) AND type = $2",
        streams,
        job.JobCompleted.__name__,
    ) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids)} jobs did not complete within {within} s")
        await asyncio.sleep(0.05)


async def flood_run(
    args: argparse.Namespace, ahead: float, burst: float = 1.0
) -> dict[str, list[float]]:
    """B alone, then B behind A's flood, `args.rounds` times, with `SPOOL_DISPATCH_AHEAD=ahead`
    and `SPOOL_DISPATCH_BURST=burst`."""
    found: dict[str, list[float]] = {"alone": [], "behind": [], "a_rate": []}
    async with spool_cluster(args.database_url, "fairness") as cluster:
        cluster.procs.start(
            "reactors",
            "reactors",
            SPOOL_DISPATCH_AHEAD=str(ahead),
            SPOOL_DISPATCH_BURST=str(burst),
        )
        start_workers("spool-node", cluster, 1, args.concurrency)
        pool = await create_pool(cluster.database_url, max_size=10)
        store = EventStore(pool)
        try:
            await wait_nodes(pool, 1)
            await wait_done(pool, await submit(store, "warm-up", args.small))
            for r in range(args.rounds):
                alone = await submit(store, f"b{r}", args.small)
                await wait_done(pool, alone)
                found["alone"].append(await job_span(pool, alone))
                flood = await submit(store, f"a{r}", args.flood, bulk=True)
                if args.settled:  # B comes once the flood is taken in, not while it is
                    while await pool.fetchval(
                        "SELECT count(*) FROM jobs WHERE account_id = $1", f"a{r}"
                    ) < len(flood):
                        await asyncio.sleep(0.01)
                behind = await submit(store, f"b{r}", args.small)
                await wait_done(pool, behind)
                found["behind"].append(await job_span(pool, behind))
                if args.why:
                    print(await where_time_went(pool, cluster.redis_url, behind), flush=True)
                await wait_done(pool, flood)
                found["a_rate"].append(args.flood / await job_span(pool, flood))
                print(
                    f"  ahead {ahead:g}, burst {burst:g}, round {r + 1}: "
                    f"B alone {found['alone'][-1]:.3f} s, "
                    f"behind the flood {found['behind'][-1]:.3f} s; A "
                    f"{found['a_rate'][-1]:.0f} jobs/s",
                    flush=True,
                )
        finally:
            await pool.close()
    return found


async def where_time_went(pool: asyncpg.Pool, redis_url: str, ids: Sequence[str]) -> str:
    """When the jobs' events of each type were first and last recorded, and their downloads
    sent to Redis by the line, in ms after their first `JobCreated`."""
    redis = await queue.connect(redis_url)
    try:
        sent = [await queue.enqueued_at(redis, job.arq_job_id(i, 1, "download", 1)) for i in ids]
    finally:
        await redis.aclose()
    created = await pool.fetchval(
        "SELECT min(recorded_at) FROM events WHERE stream_id = ANY($1::text[]) "
        "AND type = 'JobCreated'",
        [job.stream_id(i) for i in ids],
    )
    sent_ms = sorted((t - created).total_seconds() * 1000 for t in sent if t is not None)
    rows = await pool.fetch(
        "WITH e AS (SELECT type, recorded_at FROM events WHERE stream_id = ANY($1::text[])) "
        "SELECT type, extract(epoch FROM min(recorded_at) - (SELECT min(recorded_at) FROM e "
        "WHERE type = 'JobCreated'))::float8 * 1000 AS first_ms, "
        "extract(epoch FROM max(recorded_at) - (SELECT min(recorded_at) FROM e "
        "WHERE type = 'JobCreated'))::float8 * 1000 AS last_ms "
        "FROM e GROUP BY type ORDER BY last_ms",
        [job.stream_id(i) for i in ids],
    )
    went = [f"{r[0]} {r[1]:.0f}-{r[2]:.0f}" for r in rows]
    if sent_ms:
        went.insert(1, f"sent {sent_ms[0]:.0f}-{sent_ms[-1]:.0f}")
    return "    " + ", ".join(went)


async def pass_ms(pool: asyncpg.Pool, free: int, reps: int = 20) -> float:
    """Median ms of one dispatch pass sending `free` jobs, each rolled back."""
    times = []
    async with pool.acquire() as conn:
        for _ in range(reps):
            tx = conn.transaction()
            await tx.start()
            try:
                t0 = time.perf_counter()
                lines = await dispatch_queue.lines(conn)
                decided = fair_share.plan(free, lines)
                sent = await dispatch_queue.send(conn, decided.order, decided.served)
                times.append(time.perf_counter() - t0)
                assert len(sent) == free
            finally:
                await tx.rollback()
    return statistics.median(times) * 1000


async def waiting(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM dispatch_waiting")
    return count


async def deep_run(args: argparse.Namespace, cluster: Cluster) -> dict[str, float]:
    cluster.procs.start("reactors", "reactors")
    pool = await create_pool(cluster.database_url, max_size=10)
    store = EventStore(pool)
    try:
        others = [await submit(store, f"other-{k}", 10) for k in range(9)]
        shallow = await submit(store, "deep", 10)
        n = sum(map(len, others)) + len(shallow)
        while await waiting(pool) < n - 2:  # MIN_AHEAD are sent, no node being online
            await asyncio.sleep(0.05)
        cluster.procs.stop("reactors")
        shallow_ms = await pass_ms(pool, args.concurrency)
        cluster.procs.start("reactors", "reactors")
        t0 = time.monotonic()
        await submit(store, "deep", args.deep, bulk=True)
        appended = time.monotonic() - t0
        while await waiting(pool) < n + args.deep - 2:
            await asyncio.sleep(0.1)
        lined = time.monotonic() - t0
        # Measured alone: the cluster's own passes and its projections, still taking the
        # 100,000 jobs in, would contend with it for locks and CPU.
        cluster.procs.stop("reactors")
        deep_ms = await pass_ms(pool, args.concurrency)
        return {
            "shallow_ms": shallow_ms,
            "deep_ms": deep_ms,
            "appended_s": appended,
            "lined_s": lined,
        }
    finally:
        await pool.close()


def report(
    args: argparse.Namespace, runs: dict[str, dict[str, list[float]]], deep: dict[str, float]
) -> str:
    m = statistics.median
    lines = [
        f"{args.small} jobs of B; A's flood {args.flood} jobs; one node, {args.concurrency} "
        f"of each stage; {args.rounds} round(s); medians",
        "",
        "| dispatch | B alone, s | B behind the flood, s | ratio | A jobs/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, found in runs.items():
        alone, behind = m(found["alone"]), m(found["behind"])
        lines.append(
            f"| {name} | {alone:.3f} | {behind:.3f} | {behind / alone:.2f}x | "
            f"{m(found['a_rate']):.0f} |"
        )
    lines += [
        "",
        f"A dispatch pass sending {args.concurrency} jobs: {deep['shallow_ms']:.2f} ms with 100 "
        f"jobs waiting, {deep['deep_ms']:.2f} ms with {args.deep + 100:,} waiting. The deep "
        f"line's {args.deep:,} jobs: appended in {deep['appended_s']:.1f} s, all in line "
        f"{deep['lined_s']:.1f} s after the first append.",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    runs = {
        f"fair line (ahead {a:g}, burst {b:g})": await flood_run(args, a, b)
        for a in args.ahead
        for b in args.burst
    }
    if not args.no_fcfs:
        runs["first come, first served"] = await flood_run(args, 1_000_000.0, 0.0)
    async with spool_cluster(args.database_url, "deep") as cluster:
        deep = await deep_run(args, cluster)
    print()
    print(report(args, runs, deep))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--flood", type=int, default=2000, help="account A's jobs")
    p.add_argument("--small", type=int, default=20, help="account B's jobs")
    p.add_argument("--deep", type=int, default=100_000, help="jobs waiting in the deep line")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=20, help="units of each stage at once")
    p.add_argument(
        "--settled",
        action="store_true",
        help="B submits once the cluster has taken A's flood in (its jobs projected), not at once",
    )
    p.add_argument(
        "--ahead",
        type=float,
        nargs="+",
        default=[1.0],
        help="SPOOL_DISPATCH_AHEAD values to run the line with (each a cluster of its own)",
    )
    p.add_argument(
        "--burst",
        type=float,
        nargs="+",
        default=[1.0],
        help="SPOOL_DISPATCH_BURST values to run the line with (each a cluster of its own)",
    )
    p.add_argument(
        "--why",
        action="store_true",
        help="print, for each round, when B's events of each type were first and last recorded",
    )
    p.add_argument(
        "--no-fcfs", action="store_true", help="leave out the first come, first served run"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parse_args()))
