"""Benchmark `spool replay verify` on a long log: time and peak memory.

The log: `--jobs` job streams of 7 events each (JobCreated, then StageStarted and the end of
download, mux and upload) appended with `append_many`, 500 streams a call, spread over 10
accounts; `--heartbeats` NodeHeartbeat events of one node between them (events verify must step
over). The projections are caught up,
then `reactors.verify.verify` is timed, and the process's peak RSS is read before and after
(`resource.getrusage`): verify streams the log, so the growth should not scale with it.

It creates its own database `spool_bench_<hex>_verify` on the server and drops it at the end.

    python bench/verify.py                               # 100k jobs (700k events) + 100k heartbeats
    python bench/verify.py --jobs 20000 --heartbeats 0   # quicker
    python bench/verify.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import tempfile
import time
import uuid
from pathlib import Path

from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import EventStore, StreamAppend
from spool.adapters.read_models import all_projections
from spool.domain import job, node
from spool.domain.events import Event, NewEvent
from spool.embedded import EmbeddedPostgres
from spool.reactors.projection import ProjectionRunner
from spool.reactors.verify import Difference, verify

NODE = "bench-node"


def _job_events(job_id: str, account: str) -> list[Event]:
    media = job.MediaFile(path=f"/w/{job_id}.mp4", kind="av", size=2_000_000)
    return [
        job.JobCreated(job_id=job_id, account_id=account, url=f"http://media.test/{job_id}.mp4"),
        job.StageStarted(stage="download", run=1, attempt=1, node_id=NODE),
        job.DownloadCompleted(
            run=1, attempt=1, node_id=NODE, files=[media], bytes=2_000_000, seconds=1.5
        ),
        job.StageStarted(stage="mux", run=1, attempt=1, node_id=NODE),
        job.MuxCompleted(run=1, attempt=1, node_id=NODE, output=media, seconds=0.4),
        job.StageStarted(stage="upload", run=1, attempt=1, node_id=NODE),
        job.JobCompleted(
            run=1,
            attempt=1,
            node_id=NODE,
            key=f"{job_id}.mp4",
            storage="s3://bench",
            size=2_000_000,
            seconds=0.3,
        ),
    ]


def _heartbeat() -> node.NodeHeartbeat:
    usage = node.Usage(
        cpu_percent=12.5,
        memory_used=1 << 30,
        memory_total=8 << 30,
        disk_free=1 << 40,
        disk_total=2 << 40,
    )
    return node.NodeHeartbeat(
        node_id=NODE,
        hostname="bench",
        ip="127.0.0.1",
        downloading=1,
        muxing=0,
        uploading=0,
        running=[],
        usage=usage,
    )


async def _fill(store: EventStore, jobs: int, heartbeats: int) -> int:
    accounts = [uuid.uuid4().hex for _ in range(10)]
    written = 0
    per_call = 500
    beats_per_call = heartbeats * per_call // max(jobs, 1)
    for start in range(0, jobs, per_call):
        appends = [
            StreamAppend(
                job.stream_id(j),
                [NewEvent(e) for e in _job_events(j, accounts[i % len(accounts)])],
                0,
            )
            for i, j in ((i, str(uuid.uuid4())) for i in range(start, min(jobs, start + per_call)))
        ]
        if beats_per_call:
            appends.append(
                StreamAppend(
                    node.stream_id(NODE), [NewEvent(_heartbeat()) for _ in range(beats_per_call)]
                )
            )
        await store.append_many(appends)
        written += sum(len(a.events) for a in appends)
    return written


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(server_url: str, jobs: int, heartbeats: int) -> None:
    name = f"spool_bench_{secrets.token_hex(4)}_verify"
    url = await create_database(server_url, name)
    try:
        await migrate(url)
        pool = await create_pool(url, max_size=4)
        store = EventStore(pool)
        runner = ProjectionRunner(store, all_projections(), batch_size=5000)
        started = time.perf_counter()
        events = await _fill(store, jobs, heartbeats)
        print(f"appended {events} events in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        await runner.catch_up()
        print(f"projections caught up in {time.perf_counter() - started:.1f} s")
        await pool.execute("VACUUM ANALYZE events")
        differences: list[Difference] = []
        before = _peak_mb()
        started = time.perf_counter()
        result = await verify(store, runner, differences.append)
        seconds = time.perf_counter() - started
        print(
            f"verify: {result.checked} in {seconds:.1f} s "
            f"({events / seconds:,.0f} events/s of log), {result.differences} differences; "
            f"peak RSS {before:.0f} MB before, {_peak_mb():.0f} MB after"
        )
        assert result.differences == 0, differences[:5]
        assert result.checked["jobs"] == jobs
        await pool.close()
    finally:
        await drop_database(server_url, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a server to create the bench database on")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--heartbeats", type=int, default=100_000)
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(main(args.database_url, args.jobs, args.heartbeats))
    else:
        with tempfile.TemporaryDirectory() as data:
            pg = EmbeddedPostgres(Path(data))
            try:
                asyncio.run(main(pg.start(), args.jobs, args.heartbeats))
            finally:
                pg.stop()
