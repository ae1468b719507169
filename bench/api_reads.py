"""API read throughput at 1,000,000 jobs: `GET /jobs/{id}` and `GET /jobs` beside a constant.

The fill COPYs 1,000,000 jobs straight into the `jobs` projection and their `JobCreated` into
`events` (each row as the projection and the store would write it): the read path is measured,
not the append and catch-up paths, which have their own benchmark (bench/event_store.py).
`--key-share` of the jobs belong to the benchmark key's account, the rest to 1,000 others.

Servers, each under the same uvicorn setup (`uvicorn.run(..., workers=N)`: httptools, uvloop,
no access log), with 1 and then 2 processes:

* `spool api --processes N` (the real API, no reactors: nothing is projected meanwhile);
* a Litestar app whose `GET /constant` returns a constant (the shape of a small JSON answer)
  with no auth and no database: the ceiling of Litestar + uvicorn on this machine.

wrk (`-t2 -c32`, `--seconds` each) drives `GET /constant`, `GET /jobs/{id}` (a Lua script picks a
random id of the key's jobs per request) and `GET /jobs` (the first page of 50, the key's
account); each round runs the three back to back, order rotated; requests/s and wrk's p99 are
medians over rounds, the ratio to the constant is the median of per-round ratios.

    python -m bench.api_reads                               # 1M jobs, about 5 minutes
    python -m bench.api_reads --jobs 100000 --rounds 2      # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, get

from bench.arguments import add_database_url
from bench.cluster import spool_cluster
from bench.harness import profiler, stop_profiler, top_frames
from bench.heartbeats import wrk_latency
from spool.adapters.database import create_pool
from spool.domain import job
from spool.domain.events import Metadata
from spool.embedded import free_port
from tests.fixtures.processes import start_module, stop_processes, wait_http

_encode = msgspec.json.Encoder().encode

LUA = """
local ids = {}
for line in io.lines(os.getenv("SPOOL_BENCH_IDS")) do ids[#ids + 1] = line end
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/jobs/" .. ids[math.random(#ids)])
end
"""


# -- the constant app ---------------------------------------------------------------------------


class Constant(msgspec.Struct):
    total_downloading: int
    total_muxing: int
    total_uploading: int


@get("/constant")
async def constant() -> Constant:
    return Constant(0, 0, 0)


def constant_app() -> Litestar:
    """uvicorn's factory for the constant app."""
    return Litestar(route_handlers=[constant], debug=False)


@contextlib.contextmanager
def constant_server(processes: int, root: Path) -> Iterator[str]:
    port = free_port()
    proc = start_module(
        "uvicorn", "bench.api_reads:constant_app", "--factory", "--workers", str(processes),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        log=root / f"constant-{port}.log",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/constant", 60, proc)
        yield url
    finally:
        stop_processes(proc)


# -- the fill -----------------------------------------------------------------------------------


async def fill(database_url: str, n: int, key_account: str, key_share: float) -> list[str]:
    """COPY `n` jobs into `jobs` and their JobCreated into `events`; the key account's ids."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    start = datetime.now(UTC) - timedelta(days=30)
    options = job.JobOptions()
    every = max(1, round(1 / key_share)) if key_share > 0 else n + 1
    ours: list[str] = []
    started = time.perf_counter()
    try:
        for chunk in range(0, n, 100_000):
            job_rows: list[tuple[Any, ...]] = []
            event_rows: list[tuple[Any, ...]] = []
            for i in range(chunk, min(n, chunk + 100_000)):
                jid = str(uuid.uuid4())
                account = key_account if i % every == 0 else f"acct-{i % 1000:04d}"
                if account == key_account:
                    ours.append(jid)
                at = start + timedelta(seconds=i * 2.5)
                created = job.JobCreated(
                    job_id=jid, account_id=account, url=f"https://media.example.com/v/{jid}",
                    options=options,
                )  # fmt: skip
                state = job.evolve(None, created, at, 1)
                job_rows.append(
                    (jid, account, None, created.url, state.status, state.step, at, at, None, 1,
                     _encode(state))
                )  # fmt: skip
                event_rows.append(
                    (job.stream_id(jid), 1, job.JobCreated.__name__, created.schema_version,
                     _encode(created), _encode(Metadata(actor="bench")), at)
                )  # fmt: skip
            await pool.copy_records_to_table(
                "jobs",
                records=job_rows,
                columns=["job_id", "account_id", "batch_id", "url", "status", "step",
                         "created_at", "updated_at", "finished_at", "version", "state"],
            )  # fmt: skip
            await pool.copy_records_to_table(
                "events",
                records=event_rows,
                columns=["stream_id", "version", "type", "schema_version", "data", "metadata",
                         "recorded_at"],
            )  # fmt: skip
            print(f"  filled {min(n, chunk + 100_000):,} jobs", flush=True)
        await pool.execute("VACUUM ANALYZE jobs")
        await pool.execute("VACUUM ANALYZE events")
    finally:
        await pool.close()
    print(f"fill: {n:,} jobs in {time.perf_counter() - started:.0f} s", flush=True)
    return ours


# -- wrk ----------------------------------------------------------------------------------------


def wrk(url: str, key: str, seconds: int, script: Path | None, ids: Path) -> dict[str, float]:
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"x-api-key: {key}"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True,
        env={"SPOOL_BENCH_IDS": str(ids), "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if found is None or non2xx is not None:
        raise RuntimeError(f"wrk against {url} failed or got errors:\n{out}")
    return {"rps": float(found[1]), **wrk_latency(out)}


# -- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    async with spool_cluster(args.database_url, "api_reads") as cluster:
        await asyncio.to_thread(cluster.start_api, 1)
        pool = await create_pool(cluster.database_url, min_size=1, max_size=1)
        try:
            account = await pool.fetchval(
                "SELECT account_id FROM api_keys WHERE name = 'SPOOL_API_KEY'"
            )
        finally:
            await pool.close()
        ours = await fill(cluster.database_url, args.jobs, account, args.key_share)
        ids = cluster.procs.root / "ids.txt"
        ids.write_text("\n".join(ours[: args.ids]) + "\n")
        script = cluster.procs.root / "get_job.lua"
        script.write_text(LUA)
        print(f"the key's account holds {len(ours):,} of the {args.jobs:,} jobs", flush=True)
        for processes in args.processes:
            if processes != 1:
                await asyncio.to_thread(cluster.procs.stop, "api")
                await asyncio.to_thread(cluster.start_api, processes)
            with constant_server(processes, cluster.procs.root) as const_url:
                targets = {
                    "constant": (f"{const_url}/constant", None),
                    "GET /jobs/{id}": (f"{cluster.api_url}/jobs/", script),
                    "GET /jobs (page of 50)": (f"{cluster.api_url}/jobs?limit=50", None),
                }
                for url, lua in targets.values():  # warm up
                    await asyncio.to_thread(wrk, url, cluster.key, 2, lua, ids)
                names = list(targets)
                for r in range(args.rounds):
                    for name in names[r % 3 :] + names[: r % 3]:
                        url, lua = targets[name]
                        prof = None
                        if args.profile and processes == 1 and r == 0 and name != "constant":
                            args.profile.mkdir(parents=True, exist_ok=True)
                            kind = "get_job" if "{id}" in name else "list_jobs"
                            out = args.profile / f"{kind}.txt"
                            prof = profiler(cluster.procs.procs["api"].pid, out)
                        got = await asyncio.to_thread(wrk, url, cluster.key, args.seconds, lua, ids)
                        if prof is not None:
                            stop_profiler(prof)
                            print(f"  py-spy of the API process, {name}, self time:")
                            for share, frame in top_frames(out, 25, own=True):
                                print(f"    {share:6.1%}  {frame}")
                        results.setdefault((processes, name), []).append(got)
                        print(
                            f"  {processes} process(es) round {r + 1} {name}: "
                            f"{got['rps']:,.0f} req/s, p99 {got.get('p99_ms', 0):.2f} ms",
                            flush=True,
                        )
    print()
    print(report(args, results))


def report(args: argparse.Namespace, results: dict[tuple[int, str], list[dict[str, float]]]) -> str:
    lines = [
        "| processes | endpoint | req/s | p99 ms | vs constant | vs 1 process |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for (processes, name), runs in results.items():
        const = results[(processes, "constant")]
        ratio = statistics.median(r["rps"] / c["rps"] for r, c in zip(runs, const, strict=True))
        one = results.get((1, name))
        rps = statistics.median(r["rps"] for r in runs)
        gain = "-"
        if one is not None and processes != 1:
            gain = f"{rps / statistics.median(o['rps'] for o in one):.2f}x"
        lines.append(
            f"| {processes} | {name} | {statistics.median(r['rps'] for r in runs):,.0f} "
            f"| {statistics.median(r.get('p99_ms', 0) for r in runs):.2f} | {ratio:.2f}x | {gain} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--key-share", type=float, default=0.1, help="share of jobs the key owns")
    p.add_argument("--ids", type=int, default=20_000, help="ids the GET /jobs/{id} script uses")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--profile", type=Path, default=None, help="py-spy the 1-process API here")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
