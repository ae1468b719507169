"""Benchmark the job pipeline end to end, and `GET /dashboard/cluster`, each against a baseline.

Pipeline: `--jobs` (200) jobs of one 2-second clip (FFmpeg-made, H.264 + AAC 320x240, served by
the loopback media server) go through Spool with 1 and then 2 worker processes, and through the
same three stages written as plain arq functions (`bench/pipeline_arq.py`) with as many plain
arq worker processes. Everything is real: PostgreSQL, Redis, yt-dlp, FFmpeg, and moto's S3
server on loopback (in a fixtures process of its own, with the media server, so that neither
side shares a GIL with them).

* Spool side: the API (in this process, driven through `httpx.ASGITransport`: real Litestar
  routing, auth and validation, no socket) and every reactor (spool/assembly.py) run in this
  process with production defaults, as `spool up` runs them; the nodes
  are `python -m spool worker --concurrency download=2,mux=1,upload=2` processes configured by
  `SPOOL_*` variables. Jobs are submitted with `POST /jobs` (8 at a time) once every node's
  heartbeat is in; per-job figures come from `GET /jobs/{id}`.
* Baseline: the same adapter calls chained download -> mux -> upload by the functions
  themselves, in processes shaped like a node (a download queue shared by all, a queue per node
  for mux and upload, the same concurrency and arq options), with no PostgreSQL and no events.
  Jobs are enqueued straight onto the download queue (8 at a time).

Measured: wall time from the first submit to the last completion (Spool: the last
`JobCompleted`'s `recorded_at`; baseline: the worker's clock when the last upload returned),
jobs/s, and per job the overhead beyond the work itself: total time (Spool: `total_duration_ms`,
from `JobCreated` to `JobCompleted`; baseline: enqueue to upload done) minus the download, mux
and upload durations (Spool: `download_duration_ms + mux_duration_ms + upload_duration_ms`,
which the stages measure around the adapter call; the baseline measures the same calls the
same way). That overhead is mostly the wait for a free worker when 200 jobs arrive at once, so
the "in flight" overhead is given too: the same subtraction from the start of the download
(Spool: `total_duration_ms - queue_wait_ms`), i.e. the hand-offs between stages. CPU seconds
per job of each process group (workers incl. FFmpeg, this process, the fixtures, the
PostgreSQL backends connected to the run's database, the whole Redis server) are read from
/proc around each run, with the CPU the rest of the machine used meanwhile
(the machine is shared: a run beside someone's test suite is slower, and shows it there).
Ratio = Spool jobs/s / baseline jobs/s in the same round, target >= 0.8.

Dashboard: the real Spool API in one uvicorn process over a database holding `--nodes` (20)
node rows with fresh heartbeats, against a minimal Litestar app in the same uvicorn setup whose
`GET /constant` returns the same JSON shape from a constant. `wrk` (one thread,
`--connections` connections, `--seconds` per round) drives them in alternating rounds; req/s,
p99 and the ratio (median over rounds of Spool / constant in the same round; target >= 0.8).
Without `wrk` (`apt-get install -y wrk`) an httpx client sends a fixed number of requests.

Everything the run creates is its own: a database per Spool run and one for the dashboard
(`spool_bench_<hex>_*`, migrated, dropped at the end), the Redis database of `--redis-url`
(FLUSHDB before each run: use a spare one), a bucket per run, a temp dir. A FLUSHALL sent to
the Redis server by someone else (the test suite has one) empties that database too: a run
that sees the server's FLUSHALL count move is thrown away and run again (`--retries`), and
`--private-redis` runs a redis-server of the bench's own instead.

Run from the repository root (the defaults take about 6 minutes on 2 cores):

    python -m bench.pipeline
    python -m bench.pipeline --jobs 50 --workers 1 --rounds 1 --dashboard-rounds 3   # quicker
    python -m bench.pipeline --skip-baseline --skip-dashboard --profile /tmp/prof    # py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from arq.connections import ArqRedis

from bench import pipeline_arq
from bench.arguments import add_database_url
from bench.harness import (
    Fixtures,
    fixtures,
    median,
    percentile,
    profiler,
    read_ready_line,
    stop_profiler,
    top_frames,
    wait_for,
)
from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.queue import connect
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.adapters.storage import storage_from_url
from spool.api.app import create_app
from spool.assembly import assemble
from spool.domain import job, node
from spool.domain.events import Metadata, NewEvent
from spool.embedded import EmbeddedRedis, free_port
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.processes import (
    AS_PRODUCTION,
    SpoolProcesses,
    start_module,
    stop_processes,
    wait_http,
)

SUBMITTERS = 8
"""Submissions in flight at once, on both sides."""


# --- the run's own resources ------------------------------------------------------------------


@dataclass
class Env:
    server_url: str
    redis_url: str
    tmp: Path
    fx: Fixtures
    concurrency: str
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    disturbed: int = 0
    databases: list[str] = field(default_factory=list)

    def storage_url(self, what: str) -> str:
        """A storage URL for a new bucket of this run's own."""
        return self.fx.storage_url(self.fx.bucket(f"bench-{self.tag}-{what}"))

    async def database(self, what: str) -> str:
        name = f"spool_bench_{self.tag}_{what}"
        url = await create_database(self.server_url, name)
        self.databases.append(name)
        await migrate(url)
        return url


# --- CPU accounting ---------------------------------------------------------------------------


def _cpu(proc: psutil.Process) -> float:
    """User + system seconds of a process and of its children it has waited for."""
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)
    return 0.0


def _cpu_of(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out[pid] = _cpu(psutil.Process(pid))
    return out


def _pg_backends(database: str | None) -> dict[int, float]:
    """CPU of the PostgreSQL backends connected to `database` (their titles name it)."""
    out: dict[int, float] = {}
    if database is None:
        return out
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            title = " ".join(p.info["cmdline"] or [])
            if (p.info["name"] or "").startswith("postgres") and f" {database} " in title:
                out[p.pid] = _cpu(p)
    return out


def _named(prefix: str) -> dict[int, float]:
    return {
        p.pid: _cpu(p)
        for p in psutil.process_iter(["name"])
        if (p.info["name"] or "").startswith(prefix)
    }


class CpuMeter:
    """CPU seconds used between `start` and `stop` by the groups of processes of a run.

    Counted per process, so a process that starts during the run counts in full; one that ends
    during it is lost (pools keep their connections, so that does not happen here).
    """

    def __init__(
        self, workers: list[subprocess.Popen[bytes]], fixtures_pid: int, database: str | None
    ) -> None:
        worker_pids = [w.pid for w in workers]
        self.groups: dict[str, Callable[[], dict[int, float]]] = {
            "workers (+FFmpeg)": lambda: _cpu_of(worker_pids),
            "bench process": lambda: _cpu_of([os.getpid()]),
            "fixtures (S3, media)": lambda: _cpu_of([fixtures_pid]),
            "PostgreSQL (run's backends)": lambda: _pg_backends(database),
            "Redis (server)": lambda: _named("redis-server"),
        }
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}
        self._busy = 0.0
        self._since = 0.0
        self.others_cores = 0.0
        """CPU the rest of the machine used meanwhile, in cores on average: other users, and
        what no process is charged for (the kernel's loopback networking, Postgres' own
        background processes). Near 0 on a quiet machine; a noisy run shows here."""

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def start(self) -> None:
        self.before = {k: f() for k, f in self.groups.items()}
        self._busy = self._machine_busy()
        self._since = time.monotonic()

    def stop(self) -> None:
        self.used = {
            k: sum(t - self.before[k].get(pid, 0.0) for pid, t in f().items())
            for k, f in self.groups.items()
        }
        elapsed = time.monotonic() - self._since
        others = self._machine_busy() - self._busy - sum(self.used.values())
        self.others_cores = max(0.0, others) / elapsed if elapsed > 0 else 0.0


# --- results ----------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    system: str
    workers: int
    jobs: int
    completed: int
    wall_s: float
    overhead_ms: list[float]
    inflight_ms: list[float]
    stages_ms: dict[str, list[float]]
    cpu_s: dict[str, float]
    mux_cycle_ms: list[float]
    submit_s: float
    others_cores: float
    events: dict[str, int] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class WrkResult:
    rps: float
    p99_ms: float
    requests: int
    errors: int


# --- Redis shared with others -----------------------------------------------------------------


class Disturbed(Exception):
    """Someone's FLUSHALL wiped the run's Redis database while it ran: run it again."""


async def _flushalls(redis: ArqRedis) -> int:
    """How many FLUSHALLs the Redis server has seen (test suites on the machine send them)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_flushall", {}).get("calls", 0))


async def _check_undisturbed(redis: ArqRedis, before: int) -> None:
    if await _flushalls(redis) != before:
        raise Disturbed("a FLUSHALL on the Redis server emptied the run's queues")


# --- Spool ------------------------------------------------------------------------------------


def _cycles(starts: list[tuple[str, float]]) -> list[float]:
    """Intervals (ms) between consecutive mux starts on the same node.

    With one mux slot per node and downloads outpacing muxing, the mux queue is rarely empty,
    so this is how long a node's mux slot takes per job: the mux itself plus whatever else
    happens while the slot is held or handed on.
    """
    by_node: dict[str, list[float]] = {}
    for node_id, at in starts:
        by_node.setdefault(node_id, []).append(at)
    out: list[float] = []
    for times in by_node.values():
        times.sort()
        out += [(b - a) * 1000.0 for a, b in pairwise(times)]
    return out


def _spool_nodes(env: Env, database_url: str, storage_url: str, workers: int) -> SpoolProcesses:
    """`spool worker` processes of a run, configured only through the environment."""
    return SpoolProcesses(
        env.tmp / "logs" / f"spool-{workers}w",
        {
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": env.redis_url,
            "SPOOL_STORAGE_URL": storage_url,
            "SPOOL_URL_ALLOWLIST": "127.0.0.1/32",
            **AS_PRODUCTION,
        },
    )


async def _submit_all(submit: Any, count: int) -> list[str]:
    """Call `submit(i)` `count` times, `SUBMITTERS` at a time; their answers in order."""
    gate = asyncio.Semaphore(SUBMITTERS)

    async def one(i: int) -> str:
        async with gate:
            answer: str = await submit(i)
            return answer

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def run_spool(env: Env, workers: int, jobs: int, profile: Path | None) -> PipelineResult:
    database_url = await env.database(f"pipeline_{workers}w_{uuid.uuid4().hex[:4]}")
    storage_url = env.storage_url(f"spool{workers}")
    settings = Settings(
        database_url=database_url,
        redis_url=env.redis_url,
        data_dir=env.tmp / "api",
        storage_url=storage_url,
        url_allowlist=("127.0.0.1/32",),
    )
    pool = await create_pool(database_url, max_size=20)  # as spool.runtime opens it
    redis = await connect(env.redis_url)
    await redis.flushdb()
    flushalls = await _flushalls(redis)
    storage = storage_from_url(storage_url, data_dir=settings.data_dir)
    store = EventStore(pool)
    runner = ProjectionRunner(store, all_projections())
    user = await issue(store, name="bench", admin=False)
    await runner.wait_until("api_keys", user.at)
    app = create_app(pool=pool, store=store, settings=settings, storage=storage)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=transport, base_url="http://spool.bench", timeout=60)
    headers = {"x-api-key": user.key}
    stop = asyncio.Event()
    parts = assemble(  # what `spool up` runs beside the API, with its defaults
        store=store, redis=redis, storage=storage, settings=settings, projections=runner
    )
    tasks = [asyncio.create_task(part.run(stop), name=name) for name, part in parts.items()]
    node_ids = [f"bench-node-{i + 1}" for i in range(workers)]
    nodes = _spool_nodes(env, database_url, storage_url, workers)
    procs = [nodes.worker(n, "--concurrency", env.concurrency) for n in node_ids]
    profilers: list[subprocess.Popen[bytes] | None] = []
    try:

        async def online() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM nodes WHERE node_id = ANY($1) AND stopped_at IS NULL "
                "AND last_heartbeat_at IS NOT NULL",
                node_ids,
            )
            return bool(n == workers)

        await wait_for(online, 90, "spool workers starting", procs)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            profilers = [profiler(os.getpid(), profile / f"spool-{workers}w-bench.txt")] + [
                profiler(p.pid, profile / f"spool-{workers}w-{n}.txt")
                for p, n in zip(procs, node_ids, strict=True)
            ]
        # The path names the database, also in a socket URL (`...?host=/run/dir`).
        meter = CpuMeter(procs, env.fx.pid, urlsplit(database_url).path.lstrip("/"))
        meter.start()

        async def create(_: int) -> str:
            answer = await client.post("/jobs", json={"url": env.fx.clip_url}, headers=headers)
            assert answer.status_code == 201, answer.text
            job_id: str = answer.json()["job_id"]
            return job_id

        started = time.time()
        job_ids = await _submit_all(create, jobs)
        submitted = time.time() - started

        async def finished() -> bool:
            await _check_undisturbed(redis, flushalls)
            row = await pool.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'Completed'), "
                "count(*) FILTER (WHERE status IN ('Failed', 'Cancelled')) FROM jobs"
            )
            if row[1]:
                raise RuntimeError(f"{row[1]} jobs failed; see the logs under {nodes.root}")
            return bool(row[0] >= jobs)

        await wait_for(finished, max(300.0, jobs * 3.0), "spool jobs", procs)
        meter.stop()
        for p in profilers:
            stop_profiler(p)
        last: datetime = await pool.fetchval("SELECT max(finished_at) FROM jobs")
        wall = last.timestamp() - started
        overhead: list[float] = []
        inflight: list[float] = []
        stages: dict[str, list[float]] = {"download": [], "mux": [], "upload": []}
        for job_id in job_ids:
            body = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
            work = 0.0
            for stage in stages:
                ms = float(body[f"{stage}_duration_ms"])
                stages[stage].append(ms)
                work += ms
            overhead.append(body["total_duration_ms"] - work)
            inflight.append(body["total_duration_ms"] - body["queue_wait_ms"] - work)
        mux_starts = [
            (r[0], r[1].timestamp())
            for r in await pool.fetch(
                "SELECT data->>'node_id', recorded_at FROM events "
                "WHERE type = $1 AND data->>'stage' = 'mux'",
                job.StageStarted.__name__,
            )
        ]
        events = {
            r[0]: r[1]
            for r in await pool.fetch(
                "SELECT type, count(*) FROM events GROUP BY type ORDER BY count(*) DESC"
            )
        }
        return PipelineResult(
            "spool",
            workers,
            jobs,
            len(job_ids),
            wall,
            overhead,
            inflight,
            stages,
            meter.used,
            _cycles(mux_starts),
            submitted,
            meter.others_cores,
            events,
        )
    finally:
        for p in profilers:
            stop_profiler(p)
        nodes.stop_all()
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        await client.aclose()
        await storage.close()
        await redis.aclose()
        await pool.close()


# --- the plain arq baseline -------------------------------------------------------------------


async def run_arq(env: Env, workers: int, jobs: int, profile: Path | None) -> PipelineResult:
    storage_url = env.storage_url(f"arq{workers}")
    redis = await connect(env.redis_url)
    await redis.flushdb()
    flushalls = await _flushalls(redis)
    node_ids = [f"arq-node-{i + 1}" for i in range(workers)]
    procs = pipeline_arq.start_nodes(
        node_ids,
        redis_url=env.redis_url,
        storage_url=storage_url,
        root=env.tmp / "arq-nodes",
        logs=env.tmp / "logs",
        log_prefix=f"arq-{workers}w-",
        concurrency=env.concurrency,
    )
    profilers: list[subprocess.Popen[bytes] | None] = []
    try:
        await pipeline_arq.wait_ready(redis, node_ids, procs)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            profilers = [
                profiler(p.pid, profile / f"arq-{workers}w-{n}.txt")
                for p, n in zip(procs, node_ids, strict=True)
            ]
        meter = CpuMeter(procs, env.fx.pid, None)
        meter.start()

        async def enqueue(_: int) -> str:
            job_id = str(uuid.uuid4())
            await pipeline_arq.submit(redis, job_id, env.fx.clip_url)
            return job_id

        started = time.time()
        job_ids = await _submit_all(enqueue, jobs)
        submitted = time.time() - started

        async def finished() -> bool:
            await _check_undisturbed(redis, flushalls)
            return bool(await redis.llen(pipeline_arq.DONE_LIST) >= jobs)  # type: ignore[misc]

        await wait_for(finished, max(300.0, jobs * 3.0), "arq jobs", procs)
        meter.stop()
        for p in profilers:
            stop_profiler(p)
        done = [json.loads(x) for x in await redis.lrange(pipeline_arq.DONE_LIST, 0, -1)]  # type: ignore[misc]
        assert sorted(d["job_id"] for d in done) == sorted(job_ids)
        wall = max(d["finished"] for d in done) - started
        overhead: list[float] = []
        inflight: list[float] = []
        stages: dict[str, list[float]] = {"download": [], "mux": [], "upload": []}
        for d in done:
            work = 0.0
            for stage in stages:
                ms = d[f"{stage}_s"] * 1000.0
                stages[stage].append(ms)
                work += ms
            overhead.append((d["finished"] - d["submitted"]) * 1000.0 - work)
            inflight.append((d["finished"] - d["download_started"]) * 1000.0 - work)
        mux_starts = [(d["node_id"], d["mux_started"]) for d in done]
        return PipelineResult(
            "arq",
            workers,
            jobs,
            len(done),
            wall,
            overhead,
            inflight,
            stages,
            meter.used,
            _cycles(mux_starts),
            submitted,
            meter.others_cores,
        )
    finally:
        for p in profilers:
            stop_profiler(p)
        stop_processes(*procs)
        await redis.aclose()


# --- the dashboard ----------------------------------------------------------------------------


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if m is None:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> WrkResult:
    """One bounded `wrk` run (one thread) against `url`."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    if rps is None or p99 is None or total is None:
        raise RuntimeError(f"cannot read wrk's answer:\n{out}")
    return WrkResult(float(rps.group(1)), _duration_ms(p99.group(1)), int(total.group(1)), errors)


async def httpx_load(
    url: str, headers: dict[str, str], requests: int, connections: int
) -> WrkResult:
    """Without wrk: `requests` GETs over `connections` keep-alive connections."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        left = requests

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t = time.perf_counter()
                answer = await client.get(url)
                latencies.append((time.perf_counter() - t) * 1000.0)
                errors += answer.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - started
    return WrkResult(len(latencies) / wall, percentile(latencies, 99), len(latencies), errors)


async def _fresh_heartbeats(store: EventStore, runner: ProjectionRunner, nodes: int) -> None:
    meta = Metadata(actor="bench")
    usage = node.Usage(
        cpu_percent=12.5,
        memory_used=1 << 30,
        memory_total=4 << 30,
        disk_free=1 << 35,
        disk_total=1 << 36,
    )
    await store.append_many(
        [
            StreamAppend(
                node.stream_id(f"dash-node-{i}"),
                [
                    NewEvent(
                        node.NodeHeartbeat(
                            node_id=f"dash-node-{i}",
                            hostname=f"host-{i}",
                            ip=f"10.0.0.{i + 1}",
                            downloading=i % 3,
                            muxing=i % 2,
                            uploading=1,
                            running=[f"{uuid.uuid4()}:1:download:1"],
                            usage=usage,
                        ),
                        meta,
                    )
                ],
            )
            for i in range(nodes)
        ]
    )
    await runner.catch_up()


async def _seed_nodes(store: EventStore, runner: ProjectionRunner, nodes: int) -> None:
    meta = Metadata(actor="bench")
    caps = node.Capabilities(cpu_count=2, memory_total_gb=4.0, storage_total_gb=64.0)
    await store.append_many(
        [
            StreamAppend(
                node.stream_id(f"dash-node-{i}"),
                [
                    NewEvent(
                        node.NodeStarted(
                            node_id=f"dash-node-{i}",
                            hostname=f"host-{i}",
                            ip=f"10.0.0.{i + 1}",
                            role="worker",
                            tags=[],
                            capabilities=caps,
                            concurrency={"download": 2, "mux": 1, "upload": 2},
                        ),
                        meta,
                    )
                ],
            )
            for i in range(nodes)
        ]
    )
    await _fresh_heartbeats(store, runner, nodes)


@contextlib.asynccontextmanager
async def _served(log: Path, *args: str) -> AsyncIterator[tuple[str, int]]:
    proc = start_module("bench.harness", *args, pipe_stdout=True, log=log)
    try:
        url: str = read_ready_line(proc, log=log)["url"]
        wait_http(url + "/", 30, proc)
        yield url, proc.pid
    finally:
        stop_processes(proc)


@dataclass
class DashboardResult:
    spool: list[WrkResult]
    constant: list[WrkResult]
    tool: str
    nodes: int
    connections: int
    seconds: float

    @property
    def ratios(self) -> list[float]:
        return [s.rps / c.rps for s, c in zip(self.spool, self.constant, strict=True)]


async def run_dashboard(env: Env, args: argparse.Namespace) -> DashboardResult:
    database_url = await env.database("dashboard")
    pool = await create_pool(database_url, max_size=4)
    store = EventStore(pool)
    runner = ProjectionRunner(store, all_projections())
    use_wrk = _have("wrk") and not args.httpx
    try:
        admin = await issue(store, name="bench-admin", admin=True)
        await runner.wait_until("api_keys", admin.at)
        await _seed_nodes(store, runner, args.nodes)
        async with (
            _served(
                env.tmp / "dashboard-api.log",
                "api",
                "--database-url",
                database_url,
                "--port",
                str(free_port()),
                "--data-dir",
                str(env.tmp / "dash-api"),
            ) as (api_url, api_pid),
            _served(env.tmp / "dashboard-constant.log", "constant", "--port", str(free_port())) as (
                const_url,
                _,
            ),
        ):
            targets = {
                "spool": (api_url + "/dashboard/cluster", {"x-api-key": admin.key}),
                "constant": (const_url + "/constant", {}),
            }
            for name, (url, headers) in targets.items():  # both answer, in the same shape
                async with httpx.AsyncClient() as probe:
                    answer = await probe.get(url, headers=headers)
                assert answer.status_code == 200, (name, answer.status_code, answer.text)
                assert set(answer.json()) == {
                    "total_downloading",
                    "total_muxing",
                    "total_uploading",
                }, answer.text
                print(f"  {name} answers {answer.json()}", flush=True)

            async def load(name: str, seconds: float) -> WrkResult:
                url, headers = targets[name]
                if use_wrk:
                    return await asyncio.to_thread(wrk, url, headers, seconds, args.connections)
                return await httpx_load(url, headers, args.requests, args.connections)

            for name in targets:  # warm both up (imports, pools, caches)
                await load(name, 2)
            results: dict[str, list[WrkResult]] = {"spool": [], "constant": []}
            prof = None
            for r in range(args.dashboard_rounds):
                order = ["spool", "constant"] if r % 2 == 0 else ["constant", "spool"]
                for name in order:
                    if name == "spool":
                        await _fresh_heartbeats(store, runner, args.nodes)
                        if args.profile is not None and r == 0:
                            args.profile.mkdir(parents=True, exist_ok=True)
                            prof = profiler(api_pid, args.profile / "dashboard-api.txt")
                    res = await load(name, args.seconds)
                    stop_profiler(prof)
                    prof = None
                    results[name].append(res)
                    print(
                        f"  round {r + 1} {name:<8} {res.rps:>9,.0f} req/s  "
                        f"p99 {res.p99_ms:6.2f} ms  errors {res.errors}",
                        flush=True,
                    )
        return DashboardResult(
            results["spool"],
            results["constant"],
            "wrk" if use_wrk else "httpx",
            args.nodes,
            args.connections,
            args.seconds,
        )
    finally:
        await pool.close()


def _have(exe: str) -> bool:
    from shutil import which

    return which(exe) is not None


# --- report -----------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def pipeline_table(results: list[PipelineResult]) -> list[str]:
    lines = [
        "| system | workers | jobs | submit s | wall s | jobs/s | overhead ms median / p95 "
        "| in-flight overhead ms median / p95 | download / mux / upload ms median "
        "| mux slot cycle ms median | rest of the machine, cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.workers} | {r.completed} | {_fmt(r.submit_s, 2)} "
            f"| {_fmt(r.wall_s, 1)} "
            f"| {_fmt(r.jobs_per_s, 2)} "
            f"| {_fmt(median(r.overhead_ms))} / {_fmt(percentile(r.overhead_ms, 95))} "
            f"| {_fmt(median(r.inflight_ms))} / {_fmt(percentile(r.inflight_ms, 95))} "
            f"| {_fmt(median(r.stages_ms['download']))} / {_fmt(median(r.stages_ms['mux']))}"
            f" / {_fmt(median(r.stages_ms['upload']))} | {_fmt(median(r.mux_cycle_ms))} "
            f"| {r.others_cores:.2f} |"
        )
    return lines


def ratio_table(results: list[PipelineResult], target: float) -> list[str]:
    lines = [
        "| workers | rounds | spool jobs/s | arq jobs/s | ratio spool/arq (median) | per round "
        "| target |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for w in sorted({r.workers for r in results}):
        spool = [r for r in results if r.workers == w and r.system == "spool"]
        arq = [r for r in results if r.workers == w and r.system == "arq"]
        if not spool or not arq:
            continue
        ratios = [s.jobs_per_s / a.jobs_per_s for s, a in zip(spool, arq, strict=False)]
        ratio = median(ratios)
        verdict = "met" if ratio >= target else "**missed**"
        lines.append(
            f"| {w} | {len(ratios)} | {_fmt(median([s.jobs_per_s for s in spool]), 2)} "
            f"| {_fmt(median([a.jobs_per_s for a in arq]), 2)} | {ratio:.2f} "
            f"| {', '.join(f'{x:.2f}' for x in ratios)} | >= {target} {verdict} |"
        )
    return lines


def cpu_table(results: list[PipelineResult]) -> list[str]:
    groups = list(results[0].cpu_s) if results else []
    lines = [
        "| system | workers | " + " | ".join(groups) + " | total |",
        "| --- | ---: | " + " | ".join("---:" for _ in groups) + " | ---: |",
    ]
    for r in results:
        per_job = [r.cpu_s[g] * 1000.0 / r.completed for g in groups]
        lines.append(
            f"| {r.system} | {r.workers} | "
            + " | ".join(_fmt(x) for x in per_job)
            + f" | {_fmt(sum(per_job))} |"
        )
    return lines


def dashboard_table(d: DashboardResult, target: float) -> list[str]:
    ratio = median(d.ratios)
    verdict = "met" if ratio >= target else "**missed**"
    return [
        "| endpoint | req/s (median of rounds) | p99 ms (median) | errors |",
        "| --- | ---: | ---: | ---: |",
        f"| `GET /dashboard/cluster` (Spool API) | {_fmt(median([r.rps for r in d.spool]))} "
        f"| {median([r.p99_ms for r in d.spool]):.2f} | {sum(r.errors for r in d.spool)} |",
        f"| `GET /constant` (minimal Litestar) | {_fmt(median([r.rps for r in d.constant]))} "
        f"| {median([r.p99_ms for r in d.constant]):.2f} | {sum(r.errors for r in d.constant)} |",
        "",
        f"Ratio Spool / constant: **{ratio:.2f}** (per round: "
        + ", ".join(f"{x:.2f}" for x in d.ratios)
        + f"); target >= {target}: {verdict}.",
    ]


def report(
    args: argparse.Namespace,
    env: Env,
    pipeline: list[PipelineResult],
    dashboard: DashboardResult | None,
) -> str:
    out = [
        "## Pipeline (bench/pipeline.py)",
        "",
        "```",
        "python -m bench.pipeline " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores"
        + (
            f"; {args.jobs} jobs of a 2 s clip ({env.fx.clip_bytes:,} bytes, H.264 + AAC 320x240), "
            f"node concurrency `{env.concurrency}`, {args.rounds} round(s) per worker count, "
            "Spool and baseline back to back in each round (order alternating); Redis "
            + ("of the bench's own" if args.private_redis else f"`{args.redis_url}`")
            + (
                f" ({env.disturbed} run(s) disturbed by a FLUSHALL and run again)."
                if env.disturbed
                else "."
            )
            if pipeline
            else "."
        ),
        "",
    ]
    if pipeline:
        out += ["### Jobs", "", *pipeline_table(pipeline), ""]
        if any(r.system == "arq" for r in pipeline):
            out += ["Ratio (price of event sourcing):", "", *ratio_table(pipeline, 0.8), ""]
        out += ["CPU ms per job, by process group:", "", *cpu_table(pipeline), ""]
        spool = [r for r in pipeline if r.system == "spool"]
        if spool:
            ev = spool[-1].events
            out += [
                f"Events per job (Spool, {spool[-1].workers} worker run): "
                + ", ".join(
                    f"{k} {v / spool[-1].completed:.2f}"
                    for k, v in ev.items()
                    if k in job.EVENT_TYPES
                )
                + "; heartbeats "
                + str(ev.get(node.NodeHeartbeat.__name__, 0)),
                "",
            ]
    if dashboard is not None:
        out += [
            "### Dashboard",
            "",
            f"{dashboard.tool}, 1 thread, {dashboard.connections} connections, "
            f"{dashboard.seconds:g} s per round, {len(dashboard.spool)} alternating rounds; "
            f"{dashboard.nodes} node rows with fresh heartbeats; both apps under one uvicorn "
            "process each (asyncio loop, httptools, no access log).",
            "",
            *dashboard_table(dashboard, 0.8),
            "",
        ]
    return "\n".join(out)


def print_profiles(profile: Path) -> None:
    for path in sorted(profile.glob("*.txt")):
        if not path.stat().st_size:
            continue
        print(f"\n--- {path.name}: self time (innermost frame)")
        for share, frame in top_frames(path, 12, own=True):
            print(f"  {share:6.1%}  {frame}")
        print(f"--- {path.name}: inclusive")
        for share, frame in top_frames(path, 25):
            print(f"  {share:6.1%}  {frame}")


# --- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> None:
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    for noisy in ("httpx", "alembic"):  # no line per request / per migration
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spool-bench-")))
        else:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=True)
        fx = stack.enter_context(fixtures(tmp))
        redis_url = args.redis_url
        if args.private_redis:
            private = EmbeddedRedis(tmp / "redis")
            redis_url = private.start()
            stack.callback(private.stop)
        env = Env(
            server_url=args.database_url,
            redis_url=redis_url,
            tmp=tmp,
            fx=fx,
            concurrency=args.concurrency,
        )
        print(f"clip {fx.clip_url} ({fx.clip_bytes:,} bytes), S3 at {fx.s3.endpoint_url}")
        pipeline: list[PipelineResult] = []
        dashboard: DashboardResult | None = None
        try:
            if not args.skip_pipeline:
                for w in workers:
                    for r in range(args.rounds):
                        systems = ["spool", "arq"] if (r + w) % 2 else ["arq", "spool"]
                        if args.skip_baseline:
                            systems = ["spool"]
                        for system in systems:
                            print(
                                f"{system}: {args.jobs} jobs, {w} worker(s), round {r + 1}",
                                flush=True,
                            )
                            run = run_spool if system == "spool" else run_arq
                            for attempt in range(args.retries + 1):
                                try:
                                    res = await run(env, w, args.jobs, args.profile)
                                    break
                                except Disturbed as exc:
                                    if attempt == args.retries:
                                        raise
                                    env.disturbed += 1
                                    print(f"  disturbed ({exc}): running it again", flush=True)
                            pipeline.append(res)
                            print(
                                f"  {res.jobs_per_s:.2f} jobs/s, wall {res.wall_s:.1f} s, "
                                f"overhead median {median(res.overhead_ms):,.0f} ms, "
                                f"in flight {median(res.inflight_ms):,.0f} ms, "
                                f"rest of the machine {res.others_cores:.2f} cores",
                                flush=True,
                            )
            if not args.skip_dashboard:
                print("dashboard", flush=True)
                dashboard = await run_dashboard(env, args)
        finally:
            for name in env.databases:
                await drop_database(env.server_url, name)
            with contextlib.suppress(Exception):
                redis = await connect(env.redis_url)
                await redis.flushdb()
                await redis.aclose()
    pipeline.sort(key=lambda r: (r.workers, r.system != "spool"))
    text = report(args, env, pipeline, dashboard)
    print("\n" + text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
        print(f"\n(markdown written to {args.markdown})")
    if args.profile is not None:
        print_profiles(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_database_url(parser)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/15",
        help="a spare Redis database: FLUSHDB before each run",
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="worker process counts to run")
    parser.add_argument("--rounds", type=int, default=1, help="pipeline rounds per worker count")
    parser.add_argument(
        "--concurrency",
        default="download=2,mux=1,upload=2",
        help="per node, both sides (Spool's default)",
    )
    parser.add_argument(
        "--private-redis",
        action="store_true",
        help="run a redis-server of the bench's own instead of --redis-url "
        "(test suites on the machine send FLUSHALL, which empties every database)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-runs of a run that a FLUSHALL disturbed"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-dashboard", action="store_true")
    parser.add_argument("--nodes", type=int, default=20, help="node rows for the dashboard")
    parser.add_argument("--dashboard-rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per dashboard round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, default=5000, help="per dashboard round, with --httpx"
    )
    parser.add_argument("--httpx", action="store_true", help="drive the dashboard with httpx")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy every Spool process into this folder (slows the run)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="work in this folder and keep it (worker logs under logs/)",
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the report section here"
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
