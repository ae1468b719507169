"""Soak: jobs and tasks for T minutes across two worker processes, with faults at random.

    python -m bench.soak --minutes 30 [--job-rate 0.3] [--task-rate 0.2] [--fault-every 30]

Everything is real and on loopback: an embedded PostgreSQL and Redis of the soak's own, moto's
S3 server, a 2 s clip made by FFmpeg served over HTTP (some jobs fetch it throttled, so that
faults land mid-download), and Spool as processes: `spool api`, `spool reactors` and two
`spool worker`s. Every `--fault-every` seconds (jittered) one fault strikes, at random:

* a worker SIGKILLed, restarted 1-3 s later;
* Redis `FLUSHALL`;
* PostgreSQL stopped for 5-10 s, then started again.

After the load stops the soak waits for every accepted job and task to end, then prints jobs
completed / failed, lost (accepted, never ended or absent: must be 0), duplicated (more than one
terminal event: must be 0), p50/p99 latency (created -> finished, from the log's own clock),
the same for tasks, the API's answers by status during the run, orphan objects in the bucket,
and whether `spool replay verify` passed. Exit status 1 if anything was lost or doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis

from bench.harness import percentile
from spool.adapters.database import asyncpg_url
from spool.domain import job, task
from spool.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.fixtures.audit import audit, replay_verify
from tests.fixtures.media import MediaServer, make_clip
from tests.fixtures.processes import AS_PRODUCTION, SpoolProcesses
from tests.fixtures.s3 import S3Server

WORKERS = ("soak-a", "soak-b")


@dataclass
class Tally:
    """What the clients saw."""

    jobs: dict[str, float] = field(default_factory=dict)  # accepted id -> when (monotonic)
    tasks: dict[str, float] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)  # "POST /jobs 201", ... "no answer"
    slowest: dict[str, float] = field(default_factory=dict)  # answer -> longest wait (s)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)

    def answered(self, answer: str, asked: float) -> None:
        self.answers[answer] += 1
        waited = time.monotonic() - asked
        self.slowest[answer] = round(max(waited, self.slowest.get(answer, 0.0)), 2)


async def _load(
    client: httpx.AsyncClient,
    key: str,
    media: MediaServer,
    tally: Tally,
    job_rate: float,
    task_rate: float,
    until: float,
) -> None:
    """Submit jobs and tasks at the given rates (per second) until `until`."""
    headers = {"x-api-key": key}
    n = 0

    async def submit_job(i: int) -> None:
        # One in three fetches the clip slowly, so that some downloads are cut by faults.
        url = media.url("clip.mp4")
        if i % 3 == 0:
            url = media.slow_url("clip.mp4", chunk=32768, interval=0.1)
        asked = time.monotonic()
        try:
            r = await client.post(
                "/jobs", json={"url": url, "filename": f"soak-{i}"}, headers=headers
            )
        except httpx.HTTPError:
            tally.answers["POST /jobs no answer"] += 1
            return
        tally.answered(f"POST /jobs {r.status_code}", asked)
        if r.status_code == 201:
            tally.jobs[r.json()["job_id"]] = time.monotonic()

    async def submit_task() -> None:
        body = {
            "task_type": "sleep",
            "payload": {"seconds": 0.5},
            "requirements": {"timeout_seconds": 15, "max_retries": 5},
        }
        asked = time.monotonic()
        try:
            r = await client.post("/api/v1/tasks", json=body, headers=headers)
        except httpx.HTTPError:
            tally.answers["POST /api/v1/tasks no answer"] += 1
            return
        tally.answered(f"POST /api/v1/tasks {r.status_code}", asked)
        if r.status_code == 201:
            tally.tasks[r.json()["data"]["task_id"]] = time.monotonic()

    pending: set[asyncio.Task[None]] = set()
    next_job = next_task = time.monotonic()
    while time.monotonic() < until:
        now = time.monotonic()
        if job_rate and now >= next_job:
            t = asyncio.create_task(submit_job(n))
            n += 1
            next_job += 1 / job_rate
            pending.add(t)
            t.add_done_callback(pending.discard)
        if task_rate and now >= next_task:
            t = asyncio.create_task(submit_task())
            next_task += 1 / task_rate
            pending.add(t)
            t.add_done_callback(pending.discard)
        await asyncio.sleep(0.05)
    if pending:
        await asyncio.wait(pending)


async def _faults(
    procs: SpoolProcesses,
    pg: EmbeddedPostgres,
    redis_url: str,
    tally: Tally,
    every: float,
    until: float,
    rng: random.Random,
) -> None:
    """One random fault about every `every` seconds until `until`."""
    redis = Redis.from_url(redis_url)
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(every * rng.uniform(0.5, 1.5))
            if time.monotonic() >= until:
                return
            kind = rng.choice(["worker", "redis", "postgres"])
            at = f"{time.monotonic() - started:7.1f}s"
            if kind == "worker":
                name = rng.choice(WORKERS)
                procs.kill(name)
                await asyncio.sleep(rng.uniform(1, 3))
                procs.worker(name)
                tally.fault_log.append(f"{at} SIGKILL {name}, restarted")
            elif kind == "redis":
                await redis.flushall()
                tally.fault_log.append(f"{at} Redis FLUSHALL")
            else:
                down = rng.uniform(5, 10)
                await asyncio.to_thread(pg.pause)
                await asyncio.sleep(down)
                await asyncio.to_thread(pg.resume)
                tally.fault_log.append(f"{at} PostgreSQL stopped for {down:.1f} s")
            tally.faults[kind] += 1
    finally:
        await redis.aclose()


async def _wait_ended(database_url: str, jobs: list[str], tasks: list[str], seconds: float) -> None:
    """Wait until every accepted job and task has a terminal status (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(asyncpg_url(database_url))
            try:
                open_jobs = await conn.fetchval(
                    "SELECT count(*) FROM unnest($1::text[]) AS a(id) LEFT JOIN jobs j "
                    "ON j.job_id = a.id WHERE j.status IS NULL "
                    "OR j.status NOT IN ('Completed', 'Failed', 'Cancelled')",
                    jobs,
                )
                open_tasks = await conn.fetchval(
                    "SELECT count(*) FROM unnest($1::text[]) AS a(id) LEFT JOIN tasks t "
                    "ON t.task_id = a.id WHERE t.status IS NULL "
                    "OR t.status NOT IN ('success', 'failed', 'cancelled', 'timeout')",
                    tasks,
                )
            finally:
                await conn.close()
            if open_jobs == 0 and open_tasks == 0:
                return
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(1)


async def _latencies(database_url: str) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        jobs = [
            r[0]
            for r in await conn.fetch(
                "SELECT extract(epoch FROM finished_at - created_at) FROM jobs "
                "WHERE status = 'Completed'"
            )
        ]
        tasks = [
            r[0]
            for r in await conn.fetch(
                "SELECT extract(epoch FROM completed_at - created_at) FROM tasks "
                "WHERE status = 'success'"
            )
        ]
    finally:
        await conn.close()

    def stats(values: list[Any]) -> dict[str, float]:
        v = [float(x) for x in values]
        return {"p50_s": round(percentile(v, 50), 2), "p99_s": round(percentile(v, 99), 2)}

    return {"jobs": stats(jobs), "tasks": stats(tasks)}


async def soak(args: argparse.Namespace) -> int:
    root = Path(args.dir or tempfile.mkdtemp(prefix="spool-soak-"))
    rng = random.Random(args.seed)
    print(f"soak: {args.minutes} min in {root} (seed {args.seed})", flush=True)

    pg = EmbeddedPostgres(root / "pg")
    database_url = pg.start()
    redis_server = EmbeddedRedis(root)
    redis_url = redis_server.start()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3 = S3Server(endpoint_url=f"http://{host}:{port}")
    bucket = f"soak-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    make_clip(root / "media" / "clip.mp4", 2.0)
    media = MediaServer(root / "media").start()

    key = "sk_soak_" + secrets.token_urlsafe(24)
    procs = SpoolProcesses(
        root / "logs",
        {
            **AS_PRODUCTION,
            "SPOOL_DATABASE_URL": database_url,
            "SPOOL_REDIS_URL": redis_url,
            "SPOOL_STORAGE_URL": f"s3://{bucket}/media?endpoint={s3.endpoint_url}&region=us-east-1",
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "SPOOL_URL_ALLOWLIST": "127.0.0.1/32",
            "SPOOL_DATA_DIR": str(root / "data"),
            "SPOOL_SECRET_KEY": "soak-secret-key",
            "SPOOL_RATE_LIMIT": "0",
            "SPOOL_STAGE_ATTEMPTS": "6",
            "SPOOL_RETRY_BACKOFF": "1",
            "SPOOL_STALL_TIMEOUT": "20",
            "SPOOL_RECONCILE_INTERVAL": "2",
            "SPOOL_NODE_TIMEOUT": "8",
        },
    )
    tally = Tally()
    try:
        # The API migrates first; the others then find the schema in place.
        api_url = procs.api(SPOOL_API_KEY=key)
        procs.start("reactors", "reactors")
        for name in WORKERS:
            procs.worker(name)
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            for _ in range(600):  # the admin key is usable once its projection has it
                r = await client.get("/jobs", headers={"x-api-key": key})
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            started = time.monotonic()
            until = started + args.minutes * 60
            await asyncio.gather(
                _load(client, key, media, tally, args.job_rate, args.task_rate, until),
                _faults(procs, pg, redis_url, tally, args.fault_every, until, rng),
            )
            load_seconds = time.monotonic() - started
        print(
            f"load done: {len(tally.jobs)} jobs, {len(tally.tasks)} tasks accepted; "
            f"faults {dict(tally.faults)}; waiting for every one to end",
            flush=True,
        )
        # Workers killed at the very end come back (the fault loop restarts them itself).
        await _wait_ended(database_url, list(tally.jobs), list(tally.tasks), args.drain)
        listing = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        objects = [o["Key"] for page in listing for o in page.get("Contents", [])]
        found = await audit(database_url, tally.jobs, tally.tasks, objects, prefix="media/")
        latency = await _latencies(database_url)
        verified = replay_verify(database_url)
    finally:
        procs.stop_all()
        media.stop()
        moto.stop()
        redis_server.stop()
        pg.stop()

    statuses = Counter(found.jobs.values())
    task_statuses = Counter(found.tasks.values())
    lost = len(found.missing_jobs) + len(
        [j for j, s in found.jobs.items() if s not in job.TERMINAL and j in tally.jobs]
    )
    lost_tasks = len(found.missing_tasks) + len(
        [t for t, s in found.tasks.items() if s not in task.TERMINAL and t in tally.tasks]
    )
    extra = len([j for j in found.jobs if j not in tally.jobs])
    result = {
        "minutes": round(load_seconds / 60, 1),
        "workers": len(WORKERS),
        "faults": dict(tally.faults),
        "jobs": {
            "accepted": len(tally.jobs),
            "statuses": dict(statuses),
            "lost": lost,
            "duplicated": len(found.twice_ended_jobs),
            "unanswered_but_created": extra,
            **latency["jobs"],
        },
        "tasks": {
            "accepted": len(tally.tasks),
            "statuses": dict(task_statuses),
            "lost": lost_tasks,
            "duplicated": len(found.twice_succeeded_tasks),
            **latency["tasks"],
        },
        "api_answers": dict(sorted(tally.answers.items())),
        "api_slowest_answer_s": dict(sorted(tally.slowest.items())),
        "orphan_objects": len(found.orphans),
        "missing_objects": len(found.absent),
        "replay_verify": verified.stdout.strip() or verified.stderr.strip()[-500:],
        "replay_verify_ok": verified.returncode == 0,
    }
    print("\n".join(tally.fault_log))
    print(json.dumps(result, indent=2))
    print(
        f"jobs completed {statuses.get('Completed', 0)}, failed {statuses.get('Failed', 0)}, "
        f"lost {lost}, duplicated {len(found.twice_ended_jobs)}, "
        f"p50 {latency['jobs']['p50_s']} s, p99 {latency['jobs']['p99_s']} s; "
        f"tasks succeeded {task_statuses.get('success', 0)}, lost {lost_tasks}, "
        f"duplicated {len(found.twice_succeeded_tasks)}, p50 {latency['tasks']['p50_s']} s, "
        f"p99 {latency['tasks']['p99_s']} s; replay verify "
        f"{'passed' if verified.returncode == 0 else 'FAILED'}"
    )
    bad = (
        lost
        or lost_tasks
        or found.twice_ended_jobs
        or found.twice_succeeded_tasks
        or found.orphans
        or verified.returncode != 0
    )
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--job-rate", type=float, default=0.3, help="jobs per second")
    parser.add_argument("--task-rate", type=float, default=0.2, help="tasks per second")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds, jittered")
    parser.add_argument("--drain", type=float, default=600.0, help="seconds to let work end")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", default=None, help="where to keep data and logs")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
