"""Orchestration overhead of the pipeline: no-op stages, Spool against raw arq no-op functions.

What Spool adds around the media work is events and dispatch: `JobCreated` appended, the
pipeline reactor reading it and enqueueing the download unit, the node recording
`StageStarted` / `DownloadCompleted`, the reactor enqueueing mux on that node, and so on to
`JobCompleted`. Here every stage is a no-op (`NoopNode`: `reactors.worker.Node` whose stage
execution returns its completion event at once, without touching media), so all that is left is
that orchestration. Spool runs as a user runs it: `spool reactors` and `--workers` node
processes, over a database of the bench's own and an embedded Redis.

The baseline is the same three stages as raw arq functions that do nothing but enqueue the
next one (download on a shared queue, mux and upload on the node's own queue, as Spool routes
them), in as many worker processes, with Spool's arq options (poll delay 0.2 s, the same
`max_jobs`). No PostgreSQL, no events.

Two measures per side, each round running both sides:

* latency: `--latency-jobs` jobs one at a time, each submitted once the previous completed;
  median ms from submit to completion (Spool: `JobCreated` to `JobCompleted` recorded_at);
* throughput: `--jobs` submitted at once (8 submitters); jobs/s from the first submit to the last
  completion, and ms per job (the reciprocal: what each job costs the cluster).

Targets (issue 10): under 10 ms per job; Spool jobs/s >= 0.5x raw arq.

    python -m bench.pipeline_noop                            # about 3 minutes
    python -m bench.pipeline_noop --jobs 100 --rounds 1      # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, func

from bench.arguments import add_database_url
from bench.cluster import Cluster, spool_cluster
from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.queue import connect
from spool.adapters.settings import Settings
from spool.assembly import NODE, assemble
from spool.domain import job
from spool.domain.events import Event, NewEvent
from spool.reactors.worker import Node, RunningUnit
from spool.runtime import open_runtime
from spool.serve import stop_on_signals

ARQ_DOWNLOAD = "bench:noop:download"
ARQ_DONE = "bench:noop:done"


# -- Spool's node with no-op stages (a child process) -------------------------------------------


class NoopNode(Node):
    """A real node (arq workers, heartbeat, events) whose stages do no media work."""

    async def _execute(self, unit: RunningUnit, workdir: Path) -> Event | str:
        common: dict[str, Any] = {"run": unit.run, "attempt": unit.attempt, "node_id": self.node_id}
        if unit.stage == "download":
            media = job.MediaFile(path=str(workdir / "source.mp4"), kind="video", size=1)
            return job.DownloadCompleted(files=[media], bytes=1, seconds=0.0, **common)
        if unit.stage == "mux":
            out = job.MediaFile(path=str(workdir / "out.mp4"), kind="video", size=1)
            return job.MuxCompleted(output=out, seconds=0.0, **common)
        return job.JobCompleted(
            key=f"media/{unit.job_id}.mp4", storage="local", size=1, seconds=0.0, **common
        )


async def spool_node(args: argparse.Namespace) -> None:
    """`spool worker`'s node (spool/assembly.py), its stages no-ops."""
    settings = Settings.from_env(None, **_concurrency(args.concurrency))
    stop = stop_on_signals()
    async with open_runtime(settings, need_redis=True, run_migrations=False) as rt:
        assert rt.redis is not None
        parts = assemble(
            store=rt.store,
            redis=rt.redis,
            storage=rt.storage,
            settings=settings,
            projections=rt.runner,
            parts=(NODE,),
            node_type=NoopNode,
        )
        await parts[NODE].run(stop)


# -- raw arq no-op functions (a child process) --------------------------------------------------


def _arq_node_queue(node_id: str) -> str:
    return f"bench:noop:node:{node_id}"


async def arq_download(ctx: dict[str, Any], job_id: str, submitted: float) -> None:
    redis: ArqRedis = ctx["redis"]
    await redis.enqueue_job(
        "mux", job_id, submitted, _job_id=f"{job_id}:mux", _queue_name=ctx["node_queue"]
    )


async def arq_mux(ctx: dict[str, Any], job_id: str, submitted: float) -> None:
    redis: ArqRedis = ctx["redis"]
    await redis.enqueue_job(
        "upload", job_id, submitted, _job_id=f"{job_id}:upload", _queue_name=ctx["node_queue"]
    )


async def arq_upload(ctx: dict[str, Any], job_id: str, submitted: float) -> None:
    redis: ArqRedis = ctx["redis"]
    await redis.rpush(ARQ_DONE, f"{job_id} {submitted!r} {time.time()!r}")


async def arq_node(args: argparse.Namespace) -> None:
    settings = Settings.from_env(None, **_concurrency(args.concurrency))
    assert settings.redis_url is not None
    stop = stop_on_signals()
    redis = await connect(settings.redis_url)
    common: dict[str, Any] = {
        "redis_pool": redis,
        "handle_signals": False,
        "ctx": {"node_queue": _arq_node_queue(settings.node_id)},
        "keep_result": 7 * 24 * 3600,
        "poll_delay": 0.2,
        "max_tries": 1000,
    }
    workers = [
        Worker(
            [func(arq_download, name="download")],
            queue_name=ARQ_DOWNLOAD,
            max_jobs=settings.download_concurrency,
            **common,
        ),
        Worker(
            [func(arq_mux, name="mux"), func(arq_upload, name="upload")],
            queue_name=_arq_node_queue(settings.node_id),
            max_jobs=settings.mux_concurrency + settings.upload_concurrency + 1,
            **common,
        ),
    ]
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    await stop.wait()
    for w in workers:
        await w.close()
    for t in tasks:
        t.cancel()
    await redis.aclose()


def _concurrency(n: int) -> dict[str, int]:
    """Each stage's concurrency: n, or (0) the node defaults (download=2, mux=1, upload=2)."""
    if n == 0:
        return {}
    return {f"{stage}_concurrency": n for stage in ("download", "mux", "upload")}


# -- the two sides, driven from here ------------------------------------------------------------


class SpoolSide:
    name = "spool"

    def __init__(self, cluster: Cluster, store: EventStore) -> None:
        self.cluster = cluster
        self.store = store

    async def submit(self) -> str:
        jid = str(uuid.uuid4())
        created = job.create(
            job_id=jid,
            account_id="bench",
            url=f"https://media.test/{jid}",
            options=job.JobOptions(),
        )
        await self.store.append(job.stream_id(jid), [NewEvent(e) for e in created], 0)
        return jid

    async def completed(self, ids: Sequence[str]) -> dict[str, float]:
        """Seconds from JobCreated to JobCompleted of each of `ids` that completed."""
        rows = await self.store.pool.fetch(
            "SELECT c.stream_id, extract(epoch FROM d.recorded_at - c.recorded_at)::float8 "
            "FROM events c JOIN events d ON d.stream_id = c.stream_id AND d.type = $3 "
            "WHERE c.stream_id = ANY($1::text[]) AND c.type = $2",
            [job.stream_id(i) for i in ids],
            job.JobCreated.__name__,
            job.JobCompleted.__name__,
        )
        return {r[0].removeprefix("job-"): r[1] for r in rows}

    async def span(self, ids: Sequence[str]) -> float:
        """Seconds from the first JobCreated to the last JobCompleted of `ids`."""
        seconds: float = await self.store.pool.fetchval(
            "SELECT extract(epoch FROM max(recorded_at) FILTER (WHERE type = $3) "
            "- min(recorded_at) FILTER (WHERE type = $2))::float8 "
            "FROM events WHERE stream_id = ANY($1::text[])",
            [job.stream_id(i) for i in ids],
            job.JobCreated.__name__,
            job.JobCompleted.__name__,
        )
        return seconds


class ArqSide:
    name = "raw arq"

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self.done: dict[str, tuple[float, float]] = {}

    async def submit(self) -> str:
        jid = str(uuid.uuid4())
        await self.redis.enqueue_job(
            "download", jid, time.time(), _job_id=f"{jid}:download", _queue_name=ARQ_DOWNLOAD
        )
        return jid

    async def _drain(self) -> None:
        while line := await self.redis.lpop(ARQ_DONE):
            jid, submitted, finished = line.decode().split()
            self.done[jid] = (float(submitted), float(finished))

    async def completed(self, ids: Sequence[str]) -> dict[str, float]:
        await self._drain()
        return {i: self.done[i][1] - self.done[i][0] for i in ids if i in self.done}

    async def span(self, ids: Sequence[str]) -> float:
        await self._drain()
        return max(self.done[i][1] for i in ids) - min(self.done[i][0] for i in ids)


Side = SpoolSide | ArqSide


async def wait_completed(side: Side, ids: Sequence[str], within: float) -> dict[str, float]:
    deadline = time.monotonic() + within
    while len(done := await side.completed(ids)) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: {len(ids) - len(done)} jobs did not complete")
        await asyncio.sleep(0.005)
    return done


async def latency(side: Side, n: int) -> list[float]:
    seconds: list[float] = []
    for _ in range(n):
        jid = await side.submit()
        seconds.append((await wait_completed(side, [jid], 60))[jid])
    return seconds


async def throughput(side: Side, n: int) -> tuple[float, float]:
    """(jobs/s, seconds) for `n` jobs submitted at once by 8 submitters."""
    ids: list[str] = []

    async def submitter(k: int) -> None:
        for _ in range(k):
            ids.append(await side.submit())

    await asyncio.gather(*(submitter(n // 8 + (i < n % 8)) for i in range(8)))
    await wait_completed(side, ids, 600)
    seconds = await side.span(ids)
    return n / seconds, seconds


def start_workers(kind: str, cluster: Cluster, n: int, concurrency: int) -> None:
    """`n` nodes of `kind` (this module's children), configured as `spool worker` is; the
    cluster stops them with its `spool` children."""
    for name in (f"{kind}-{i}" for i in range(n)):
        cluster.procs.start(
            name, kind, "--concurrency", str(concurrency), module="bench.pipeline_noop",
            SPOOL_NODE_ID=name, SPOOL_DATA_DIR=str(cluster.procs.root / name),
        )  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, list[float]]] = {
        s: {"latency": [], "rate": []} for s in ("spool", "raw arq")
    }
    async with spool_cluster(args.database_url, "noop") as cluster:
        cluster.procs.start("reactors", "reactors")
        start_workers("spool-node", cluster, args.workers, args.concurrency)
        start_workers("arq-node", cluster, args.workers, args.concurrency)
        pool = await create_pool(cluster.database_url, max_size=10)
        redis = await connect(cluster.redis_url)
        try:
            deadline = time.monotonic() + 120
            while await pool.fetchval("SELECT count(*) FROM nodes") < args.workers:
                assert time.monotonic() < deadline, "the nodes did not register"
                await asyncio.sleep(0.2)
            sides: list[Side] = [SpoolSide(cluster, EventStore(pool)), ArqSide(redis)]
            for side in sides:  # warm up
                await latency(side, 3)
                await throughput(side, 16)
            for r in range(args.rounds):
                for side in sides[r % 2 :] + sides[: r % 2]:
                    lat = await latency(side, args.latency_jobs)
                    rate, seconds = await throughput(side, args.jobs)
                    results[side.name]["latency"].extend(lat)
                    results[side.name]["rate"].append(rate)
                    print(
                        f"  round {r + 1} {side.name}: latency median "
                        f"{statistics.median(lat) * 1000:.1f} ms; {args.jobs} jobs in "
                        f"{seconds:.2f} s = {rate:.1f} jobs/s",
                        flush=True,
                    )
        finally:
            await redis.aclose()
            await pool.close()
    print()
    print(report(args, results))


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    spool, arq = results["spool"], results["raw arq"]
    ratios = [s / a for s, a in zip(spool["rate"], arq["rate"], strict=True)]
    lines = [
        "| side | latency median ms (p90) | jobs/s | ms per job at throughput |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        lat = sorted(r["latency"])
        rate = statistics.median(r["rate"])
        p90 = lat[int(len(lat) * 0.9)]
        lines.append(
            f"| {name} | {statistics.median(lat) * 1000:.1f} ({p90 * 1000:.1f}) "
            f"| {rate:.1f} | {1000 / rate:.1f} |"
        )
    lines.append(
        f"\nSpool / raw arq jobs/s: {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f}; target >= 0.5x), {args.workers} worker "
        f"process(es), stage concurrency {args.concurrency or 'default'}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what")
    for kind in ("spool-node", "arq-node"):
        child = sub.add_parser(kind, help="(internal) one worker process, set up by SPOOL_*")
        child.add_argument("--concurrency", type=int, required=True)
    add_database_url(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes per side")
    p.add_argument("--jobs", type=int, default=200, help="jobs per throughput run")
    p.add_argument("--latency-jobs", type=int, default=20, help="jobs one at a time per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="units of each stage a worker runs at once (0: the node defaults 2/1/2, under "
        "which arq's 0.2 s poll cadence caps both sides at ~10 jobs/s)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if parsed.what == "spool-node":
            asyncio.run(spool_node(parsed))
        elif parsed.what == "arq-node":
            asyncio.run(arq_node(parsed))
        else:
            asyncio.run(run(parsed))
