"""Benchmark `spool projections rebuild` over a long log, with the API answering throughout.

The log (`--events`, 1,000,000 by default): job lifecycles of 7 events each (JobCreated, then
StageStarted and the end of download, mux and upload, as `bench/verify.py` writes them) for
keys' accounts, and heartbeats of `--nodes` nodes in day streams (`heartbeat-<day>-<node>`, so
in their day partitions), `--heartbeat-share` of all events, interleaved with the jobs as a
live cluster writes them. It is loaded with COPY (the store's own append path is measured by
`bench/event_store.py`), then every projection is caught up: those tables are the "old" ones.

Then `python -m spool projections rebuild` (every projection: the real command, progress bar
and all) runs as a child process while this process asks the real API (`bench.harness api`,
its own process) for `GET /jobs/{id}` and `GET /dashboard/cluster` in a loop, and records each
answer's latency and status. Reported: the rebuild's wall time, log events per second (the
whole log over the wall time) and events applied per second (summed over projections, as the
command prints them); the API's request count, non-200 answers, p50 / p99 / max per endpoint;
and a digest (md5 of every row as text, sorted) of each projection table before and after,
which must be equal.

It creates its own database `spool_bench_<hex>_rebuild` on the server and drops it at the end.

    python -m bench.rebuild --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m bench.rebuild --events 200000          # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.arguments import add_database_url
from bench.harness import percentile, read_ready_line
from bench.verify import _heartbeat, _job_events
from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_partitions import ensure_days
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.domain import job, node
from spool.domain.events import Metadata, NewEvent
from spool.embedded import free_port
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.fixtures.processes import REPO_ROOT, child_env, start_module, stop_processes

CHUNK = 20_000
COLUMNS = ["stream_id", "version", "type", "schema_version", "data", "metadata"]


def _rows(store: EventStore, stream_id: str, first: int, events: Sequence[NewEvent]) -> list[Any]:
    names, versions, data, meta = store._columns(events)
    return [
        (stream_id, first + i, names[i], versions[i], data[i], meta[i]) for i in range(len(events))
    ]


async def fill(
    pool: asyncpg.Pool, store: EventStore, total: int, accounts: Sequence[str], args: Any
) -> tuple[list[str], int]:
    """Load about `total` events; returns some job ids and the count loaded."""
    days = [datetime.now(UTC).date() - timedelta(days=d) for d in (2, 1)]
    await ensure_days(pool, days)
    beats_total = int(total * args.heartbeat_share)
    jobs_total = (total - beats_total) // 7
    beats_per_job = beats_total / max(jobs_total, 1)
    nodes = [f"bench-node-{i}" for i in range(args.nodes)]
    node_meta = Metadata(actor="node:bench-node")
    versions: dict[str, int] = {}
    job_ids: list[str] = []
    rows: list[Any] = []
    loaded = 0
    owed = 0.0

    async def flush() -> None:
        nonlocal loaded
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("events", records=rows, columns=COLUMNS)
        loaded += len(rows)
        rows.clear()

    for i in range(jobs_total):
        job_id = str(uuid.uuid4())
        if len(job_ids) < 1000:
            job_ids.append(job_id)
        meta = Metadata(actor="key:bench", correlation_id=uuid.uuid4().hex)
        events = [NewEvent(e, meta) for e in _job_events(job_id, accounts[i % len(accounts)])]
        rows.extend(_rows(store, job.stream_id(job_id), 1, events))
        owed += beats_per_job
        while owed >= 1:
            owed -= 1
            n = nodes[len(rows) % len(nodes)]
            day = days[0] if i < jobs_total // 2 else days[1]
            stream = node.heartbeat_stream_id(n, day)
            versions[stream] = versions.get(stream, 0) + 1
            rows.extend(_rows(store, stream, versions[stream], [NewEvent(_heartbeat(), node_meta)]))
        if len(rows) >= CHUNK:
            await flush()
    if rows:
        await flush()
    return job_ids, loaded


async def digests(pool: asyncpg.Pool) -> dict[str, str]:
    """md5 of every row (as text, sorted) of every projection table."""
    out: dict[str, str] = {}
    for p in all_projections():
        for t in p.tables:
            out[t.name] = await pool.fetchval(
                f"SELECT md5(coalesce(string_agg(r, E'\\n' ORDER BY r), '')) "
                f"FROM (SELECT x::text AS r FROM {t.name} x) s"
            )
    return out


class Probe:
    """Latencies and statuses of the API's answers, per endpoint."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}

    async def run(
        self, base: str, paths: list[tuple[str, str, dict[str, str]]], stop: asyncio.Event
    ) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            i = 0
            while not stop.is_set():
                name, path, headers = paths[i % len(paths)]
                i += 1
                started = time.perf_counter()
                answer = await client.get(path, headers=headers)
                self.seconds.setdefault(name, []).append(time.perf_counter() - started)
                if answer.status_code != 200:
                    self.failures[name] = self.failures.get(name, 0) + 1
                await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> int:
    name = f"spool_bench_{secrets.token_hex(4)}_rebuild"
    url = await create_database(args.database_url, name)
    api: subprocess.Popen[bytes] | None = None
    try:
        await migrate(url)
        pool = await create_pool(url, max_size=4)
        store = EventStore(pool)
        admin = await issue(store, name="bench admin", admin=True)
        users = [await issue(store, name=f"user {i}", admin=False) for i in range(10)]
        started = time.perf_counter()
        job_ids, loaded = await fill(pool, store, args.events, [u.account_id for u in users], args)
        load_s = time.perf_counter() - started
        total = await pool.fetchval("SELECT count(*) FROM events")
        print(f"loaded {loaded:,} events with COPY in {load_s:.1f} s; log holds {total:,}")
        await pool.execute("VACUUM ANALYZE events")
        started = time.perf_counter()
        await ProjectionRunner(store, all_projections(), batch_size=5000).catch_up()
        print(f"projections caught up (the old tables) in {time.perf_counter() - started:.1f} s")
        before = await digests(pool)

        work = Path(tempfile.mkdtemp(prefix="spool-bench-rebuild-"))
        port = free_port()
        api = start_module(
            "bench.harness", "api", "--database-url", url, "--port", str(port),
            "--data-dir", str(work), pipe_stdout=True, log=work / "api.log",
        )  # fmt: skip
        base = read_ready_line(api, log=work / "api.log")["url"]
        owner = {u.account_id: u.key for u in users}
        account_of = dict(
            await pool.fetch(
                "SELECT job_id, account_id FROM jobs WHERE job_id = ANY($1::text[])", job_ids
            )
        )
        dashboard = ("GET /dashboard/cluster", "/dashboard/cluster", {"x-api-key": admin.key})
        paths = []  # one dashboard poll for each job read
        for j in job_ids[:200]:
            paths += [
                dashboard,
                ("GET /jobs/{id}", f"/jobs/{j}", {"x-api-key": owner[account_of[j]]}),
            ]
        probe = Probe()
        stop = asyncio.Event()
        warm = asyncio.create_task(probe.run(base, paths, stop))
        await asyncio.sleep(2)
        stop.set()
        await warm
        idle = {k: list(v) for k, v in probe.seconds.items()}
        probe = Probe()
        stop = asyncio.Event()
        probing = asyncio.create_task(probe.run(base, paths, stop))
        started = time.perf_counter()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "spool", "projections", "rebuild", cwd=REPO_ROOT,
            env=child_env(SPOOL_DATABASE_URL=url), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await child.communicate()
        wall = time.perf_counter() - started
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop.set()
        await probing
        text = out.decode()
        if child.returncode != 0:
            print(text, err.decode()[-3000:])
            return 1
        applied = sum(int(n) for n in re.findall(r"rebuilt from (\d+) events", text))
        print(text.rstrip())
        print(
            f"the rebuild process used {cpu.ru_utime:.1f} s user, {cpu.ru_stime:.1f} s system CPU"
        )
        print(
            f"\nrebuild of {len(all_projections())} projections: {wall:.1f} s wall; "
            f"{total / wall:,.0f} log events/s; {applied:,} events applied, "
            f"{applied / wall:,.0f}/s (target >= {args.target:,.0f} log events/s: "
            f"{'ok' if total / wall >= args.target else 'MISSED'})"
        )
        print("\n| endpoint | phase | requests | non-200 | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        for label, data in (("idle", idle), ("during rebuild", probe.seconds)):
            for endpoint, secs in sorted(data.items()):
                fails = probe.failures.get(endpoint, 0) if label != "idle" else 0
                print(
                    f"| {endpoint} | {label} | {len(secs)} | {fails} | "
                    f"{percentile(secs, 50) * 1000:.1f} | {percentile(secs, 99) * 1000:.1f} | "
                    f"{max(secs) * 1000:.1f} |"
                )
        after = await digests(pool)
        print("\n| table | digest before | digest after | equal |")
        print("|---|---|---|---|")
        for t in before:
            print(f"| {t} | {before[t][:12]} | {after[t][:12]} | {before[t] == after[t]} |")
        await pool.close()
        return 0 if before == after and not probe.failures else 1
    finally:
        if api is not None:
            stop_processes(api)
        await drop_database(args.database_url, name)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--heartbeat-share", type=float, default=0.3, help="of all events")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--target", type=float, default=20_000, help="log events/s")
    sys.exit(asyncio.run(main(p.parse_args())))
