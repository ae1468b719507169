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
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from arq.connections import ArqRedis
from arq.worker import Worker, func

from bench.arguments import add_database_url
from bench.cluster import Cluster, spool_cluster
from spool.adapters.database import create_pool
from spool.adapters.event_store import Checkpoint, EventStore
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
        self.finished: set[str] = set()
        self.cursor = Checkpoint()

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
        """Seconds from JobCreated to JobCompleted of each of `ids` that completed.

        Completions are read from the log as a projection reads it, from where the last look
        ended: the bench's own polling must not cost the database more than the cluster it
        measures.
        """
        if any(i not in self.finished for i in ids):
            while True:  # what completed since the last look, as a projection reads the log
                batch = await self.store.read_batch(
                    self.cursor, 1000, types={job.JobCompleted.__name__}
                )
                self.finished.update(e.stream_id.removeprefix("job-") for e in batch.events)
                self.cursor = batch.horizon
                if len(batch.events) < 1000:
                    break
        done = [i for i in ids if i in self.finished]
        if len(done) < len(ids):
            return dict.fromkeys(done, 0.0)
        rows = await self.store.pool.fetch(
            "SELECT c.stream_id, extract(epoch FROM d.recorded_at - c.recorded_at)::float8 "
            "FROM events c JOIN events d ON d.stream_id = c.stream_id AND d.type = $3 "
            "WHERE c.stream_id = ANY($1::text[]) AND c.type = $2",
            [job.stream_id(i) for i in ids],
            job.JobCreated.__name__,
            job.JobCompleted.__name__,
        )
        return {r[0].removeprefix("job-"): r[1] for r in rows}

    async def commits(self, ids: Sequence[str]) -> tuple[float, float]:
        """(transactions, durable commits) per job that wrote the jobs' events, progress aside.

        Transactions are counted from the log (distinct `tx`); a transaction whose only event
        is a StageStarted is the node's start of a unit, which commits without waiting for its
        WAL flush (reactors/worker/stages_runner.py `_start`): the rest are durable.
        """
        rows = await self.store.pool.fetch(
            "SELECT stream_id, tx, array_agg(type) AS types FROM events "
            "WHERE stream_id = ANY($1::text[]) AND type <> $2 GROUP BY stream_id, tx",
            [job.stream_id(i) for i in ids],
            job.StageProgressed.__name__,
        )
        started = job.StageStarted.__name__
        durable = [r for r in rows if list(r["types"]) != [started]]
        return len(rows) / len(ids), len(durable) / len(ids)

    async def gaps(self, ids: Sequence[str]) -> dict[str, float]:
        """Median ms of each step of the jobs' lives, by their events' `recorded_at`: where a
        job's time goes (waiting for a unit to be taken, or in the stages' own appends)."""
        steps = {
            "created -> download started": (job.JobCreated, job.StageStarted, "download"),
            "download started -> done": (job.StageStarted, job.DownloadCompleted, "download"),
            "download done -> mux started": (job.DownloadCompleted, job.StageStarted, "mux"),
            "mux started -> done": (job.StageStarted, job.MuxCompleted, "mux"),
            "mux done -> upload started": (job.MuxCompleted, job.StageStarted, "upload"),
            "upload started -> completed": (job.StageStarted, job.JobCompleted, "upload"),
        }
        rows = await self.store.pool.fetch(
            "SELECT stream_id, type, data->>'stage' AS stage, "
            "extract(epoch FROM recorded_at)::float8 AS at FROM events "
            "WHERE stream_id = ANY($1::text[])",
            [job.stream_id(i) for i in ids],
        )
        at: dict[tuple[str, str, str | None], float] = {}
        for r in rows:
            stage = r["stage"] if r["type"] == job.StageStarted.__name__ else None
            at[(r["stream_id"], r["type"], stage)] = r["at"]
        medians: dict[str, float] = {}
        for name, (before, after, stage) in steps.items():
            first = stage if before is job.StageStarted else None
            second = stage if after is job.StageStarted else None
            spans = [
                at[(sid, after.__name__, second)] - at[(sid, before.__name__, first)]
                for sid in {r["stream_id"] for r in rows}
                if (sid, after.__name__, second) in at and (sid, before.__name__, first) in at
            ]
            if spans:
                medians[name] = statistics.median(spans) * 1000
        return medians

    async def span(self, ids: Sequence[str]) -> float:
        return await job_span(self.store.pool, ids)


async def job_span(pool: asyncpg.Pool, ids: Sequence[str]) -> float:
    """Seconds from the first JobCreated to the last JobCompleted of `ids`, by the log."""
    seconds: float = await pool.fetchval(
        "SELECT extract(epoch FROM max(recorded_at) FILTER (WHERE type = $3) "
        "- min(recorded_at) FILTER (WHERE type = $2))::float8 "
        "FROM events WHERE stream_id = ANY($1::text[])",
        [job.stream_id(i) for i in ids],
        job.JobCreated.__name__,
        job.JobCompleted.__name__,
    )
    return seconds


async def wait_nodes(pool: asyncpg.Pool, n: int, within: float = 120) -> None:
    """Wait until `n` nodes have registered."""
    deadline = time.monotonic() + within
    while await pool.fetchval("SELECT count(*) FROM nodes") < n:
        assert time.monotonic() < deadline, "the nodes did not register"
        await asyncio.sleep(0.2)


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
    # One job is looked for every 2 ms; a throughput run's every 50 ms (the figures come from
    # the recorded times, not from when the bench saw them).
    pause = 0.002 if len(ids) == 1 else 0.05
    while len(done := await side.completed(ids)) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: {len(ids) - len(done)} jobs did not complete")
        await asyncio.sleep(pause)
    return done


async def latency(side: Side, n: int) -> tuple[list[float], list[str]]:
    """Seconds from submit to completion of `n` jobs, one at a time; and their ids."""
    seconds: list[float] = []
    ids: list[str] = []
    for _ in range(n):
        jid = await side.submit()
        seconds.append((await wait_completed(side, [jid], 60))[jid])
        ids.append(jid)
    return seconds, ids


def _role(p: psutil.Process) -> str:
    args = " ".join(p.cmdline())
    for role in ("spool-node", "arq-node", "redis-server", "reactors"):
        if role in args:
            return role
    return "bench" if p.pid == os.getpid() else p.name()


async def cpu_seconds(pool: asyncpg.Pool) -> dict[str, float]:
    """CPU seconds so far of the bench, its children (by role) and the database's backends."""
    backends = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    )
    me = psutil.Process()
    seconds: dict[str, float] = {}
    procs = [(me, _role(me))] + [(c, _role(c)) for c in me.children(recursive=True)]
    procs += [(psutil.Process(r["pid"]), "postgres") for r in backends]
    for proc, role in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            seconds[role] = seconds.get(role, 0.0) + t.user + t.system
    return seconds


async def throughput(
    side: Side, n: int, pool: asyncpg.Pool
) -> tuple[float, float, list[str], dict[str, float]]:
    """(jobs/s, seconds, ids, CPU ms per job by process role) for `n` jobs submitted at once
    by 8 submitters."""
    ids: list[str] = []

    async def submitter(k: int) -> None:
        for _ in range(k):
            ids.append(await side.submit())

    before = await cpu_seconds(pool)
    await asyncio.gather(*(submitter(n // 8 + (i < n % 8)) for i in range(8)))
    await wait_completed(side, ids, 600)
    after = await cpu_seconds(pool)
    seconds = await side.span(ids)
    cpu = {role: (after[role] - before.get(role, 0.0)) * 1000 / n for role in after}
    return n / seconds, seconds, ids, cpu


def start_workers(kind: str, cluster: Cluster, n: int, concurrency: int) -> None:
    """`n` nodes of `kind` (this module's children), configured as `spool worker` is; the
    cluster stops them with its `spool` children."""
    for name in (f"{kind}-{i}" for i in range(n)):
        cluster.procs.start(
            name, kind, "--concurrency", str(concurrency), module="bench.pipeline_noop",
            SPOOL_NODE_ID=name, SPOOL_DATA_DIR=str(cluster.procs.root / name),
        )  # fmt: skip


class Results:
    """What the rounds measured, per side."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {"spool": [], "raw arq": []}
        self.rate: dict[str, list[float]] = {"spool": [], "raw arq": []}
        self.commits: list[tuple[float, float]] = []
        self.gaps: dict[str, dict[str, list[float]]] = {"at rest": {}, "under load": {}}
        self.cpu: dict[str, dict[str, list[float]]] = {"spool": {}, "raw arq": {}}

    def add_cpu(self, side: str, ms_per_job: dict[str, float]) -> None:
        for role, ms in ms_per_job.items():
            self.cpu[side].setdefault(role, []).append(ms)

    def add_gaps(self, load: str, medians: dict[str, float]) -> None:
        for step, ms in medians.items():
            self.gaps[load].setdefault(step, []).append(ms)


async def run(args: argparse.Namespace) -> None:
    results = Results()
    async with spool_cluster(args.database_url, "noop") as cluster:
        cluster.procs.start("reactors", "reactors")
        start_workers("spool-node", cluster, args.workers, args.concurrency)
        start_workers("arq-node", cluster, args.workers, args.concurrency)
        pool = await create_pool(cluster.database_url, max_size=10)
        redis = await connect(cluster.redis_url)
        try:
            await wait_nodes(pool, args.workers)
            spool_side = SpoolSide(cluster, EventStore(pool))
            sides: list[Side] = [spool_side, ArqSide(redis)]
            for side in sides:
                # Warm up: a burst as large as the measured ones, so that every process's
                # connection pools have grown to what the load needs (a new connection costs
                # the database a type introspection) before anything is measured.
                await latency(side, 3)
                await throughput(side, args.jobs, pool)
            for r in range(args.rounds):
                for side in sides[r % 2 :] + sides[: r % 2]:
                    lat, one_by_one = await latency(side, args.latency_jobs)
                    rate, seconds, at_once, cpu = await throughput(side, args.jobs, pool)
                    results.add_cpu(side.name, cpu)
                    results.latency[side.name].extend(lat)
                    results.rate[side.name].append(rate)
                    if side is spool_side:
                        results.commits.append(await spool_side.commits(one_by_one))
                        results.add_gaps("at rest", await spool_side.gaps(one_by_one))
                        results.add_gaps("under load", await spool_side.gaps(at_once))
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


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def report(args: argparse.Namespace, results: Results) -> str:
    spool, arq = results.rate["spool"], results.rate["raw arq"]
    ratios = [s / a for s, a in zip(spool, arq, strict=True)]
    lines = [
        "| side | latency ms: median | p90 | p99 | jobs/s | ms per job at throughput |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("spool", "raw arq"):
        lat = results.latency[name]
        rate = statistics.median(results.rate[name])
        lines.append(
            f"| {name} | {statistics.median(lat) * 1000:.1f} | {_percentile(lat, 0.9) * 1000:.1f} "
            f"| {_percentile(lat, 0.99) * 1000:.1f} | {rate:.1f} | {1000 / rate:.1f} |"
        )
    transactions = statistics.median(t for t, _ in results.commits)
    durable = statistics.median(d for _, d in results.commits)
    lines.append(
        f"\nSpool / raw arq jobs/s: {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f}), {args.workers} worker process(es), stage "
        f"concurrency {args.concurrency or 'default'}; {len(results.latency['spool'])} latency "
        f"jobs per side"
    )
    lines.append(
        f"Spool job-stream transactions per job: {transactions:.1f}, of which durable "
        f"commits: {durable:.1f}"
    )
    lines.append("\n| a Spool job's step, median ms | at rest | under load |\n|---|---:|---:|")
    for step in results.gaps["at rest"]:
        rest = statistics.median(results.gaps["at rest"][step])
        load = results.gaps["under load"].get(step)
        under = f"{statistics.median(load):.1f}" if load else "-"
        lines.append(f"| {step} | {rest:.1f} | {under} |")
    lines.append("\n| CPU ms per job during the throughput runs, median | spool | raw arq |")
    lines.append("|---|---:|---:|")
    roles = sorted({*results.cpu["spool"], *results.cpu["raw arq"]})
    for role in roles:
        cells = [
            f"{statistics.median(results.cpu[side][role]):.2f}"
            if results.cpu[side].get(role)
            else "-"
            for side in ("spool", "raw arq")
        ]
        lines.append(f"| {role} | {cells[0]} | {cells[1]} |")
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
