"""Heartbeat ingestion: 1,000 simulated nodes at 1 Hz for 60 s, the dashboard polled meanwhile.

Spool runs as a user runs it (`bench.cluster`): `spool reactors` (the `nodes`
projection among them) and `spool api --processes N`, over a database of the bench's own and an
embedded Redis. The nodes are simulated by `--simulators` child processes, each appending what
`reactors.worker.Node.tick` appends: one `NodeHeartbeat` per node per second, one
`EventStore.append_many` transaction each, straight to PostgreSQL (nodes do not go through the
API), every node at its own offset within the second. Each node first registers (`NodeStarted`).

Every `--flip-every` seconds all nodes change what they report (`downloading` 1 <-> 2), so the
dashboard's total moves between 1,000 and 2,000: how long after the last node's changed beat was
committed `GET /dashboard/cluster` shows the new total is its freshness (target <= 2 s).

Meanwhile `--pollers` keep-alive connections each ask `GET /dashboard/cluster` every
`--poll-interval` seconds (an open dashboard polls once a second: 10 pollers at 0.1 s are 100
open dashboards); their latencies give the p99 (target < 10 ms). For the last `--wrk-seconds`
of the run wrk drives the endpoint flat out (`--wrk-connections`), for the requests/s one API
process serves while ingestion runs; poller samples taken while wrk runs are left out of the p99.

At the end every heartbeat must be in the log: 1,000 x 60 = 60,000.

    python -m bench.heartbeats                          # 1,000 nodes, 60 s, 4 simulators
    python -m bench.heartbeats --nodes 200 --seconds 20 # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from bench.arguments import add_database_url
from bench.cluster import spool_cluster
from bench.harness import percentile, profiler, stop_profiler, top_frames
from spool.adapters.database import asyncpg_url, create_pool
from spool.adapters.event_store import EventStore, StreamAppend
from spool.domain import node
from spool.domain.events import Metadata, NewEvent
from tests.fixtures.processes import start_module

GB = 1024**3
USAGE = node.Usage(
    cpu_percent=12.5, memory_used=4 * GB, memory_total=16 * GB, disk_free=400 * GB,
    disk_total=500 * GB,
)  # fmt: skip


# -- the simulated nodes (a child process) ------------------------------------------------------


def node_id(n: int) -> str:
    return f"sim-{n:05d}"


def started(nid: str) -> node.NodeStarted:
    return node.NodeStarted(
        node_id=nid,
        hostname=nid,
        ip="10.0.0.1",
        role="worker",
        tags=[],
        capabilities=node.Capabilities(cpu_count=8, memory_total_gb=16.0, storage_total_gb=500.0),
        concurrency={"download": 2, "mux": 1, "upload": 2},
    )


async def simulate(args: argparse.Namespace) -> None:
    """Register nodes [first, first + nodes), then beat each once a second; print the tally."""
    pool = await create_pool(
        args.database_url, min_size=args.connections, max_size=args.connections
    )
    store = EventStore(pool)
    ids = [node_id(n) for n in range(args.first, args.first + args.nodes)]
    for i in range(0, len(ids), 100):
        await store.append_many(
            [
                StreamAppend(node.stream_id(nid), [NewEvent(started(nid), _meta(nid))])
                for nid in ids[i : i + 100]
            ]
        )
    latencies: list[float] = []
    late: list[float] = []
    flips: dict[int, float] = {}
    failed = 0
    span = [float("inf"), 0.0]

    async def beat_forever(index: int, nid: str) -> None:
        nonlocal failed
        meta = _meta(nid)
        offset = index / args.total_nodes  # spread over the second like independent machines
        for n in range(args.seconds):
            due = args.start_at + n + offset
            await asyncio.sleep(max(0.0, due - time.time()))
            phase = (n // args.flip_every) % 2
            beat = node.NodeHeartbeat(
                node_id=nid, hostname=nid, ip="10.0.0.1", downloading=1 + phase, muxing=0,
                uploading=0, running=[], usage=USAGE,
            )  # fmt: skip
            began = time.time()
            late.append(began - due)
            try:
                await store.append_many(
                    [StreamAppend(node.stream_id(nid), [NewEvent(beat, meta)])],
                    durable=args.durable,
                )
            except (OSError, asyncpg.PostgresError):
                failed += 1
                continue
            done = time.time()
            latencies.append(done - began)
            span[0] = min(span[0], began)
            span[1] = max(span[1], done)
            if n % args.flip_every == 0:
                flips[n // args.flip_every] = max(flips.get(n // args.flip_every, 0.0), done)

    await asyncio.gather(*(beat_forever(args.first + i, nid) for i, nid in enumerate(ids)))
    await pool.close()
    print(
        json.dumps(
            {
                "appended": len(latencies),
                "failed": failed,
                "append_p50_ms": percentile(latencies, 50) * 1000,
                "append_p99_ms": percentile(latencies, 99) * 1000,
                "late_p99_ms": percentile(late, 99) * 1000,
                "late_max_ms": max(late) * 1000,
                "flips": flips,
                "first": span[0],
                "last": span[1],
            }
        ),
        flush=True,
    )


def _meta(nid: str) -> Metadata:
    return Metadata(actor=f"node:{nid}", node_id=nid)


# -- the dashboard pollers ----------------------------------------------------------------------


class Poller:
    """One keep-alive HTTP/1.1 connection asking `GET /dashboard/cluster` at a fixed interval."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.request = (
            f"GET /dashboard/cluster HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n\r\n"
        ).encode()
        self.samples: list[tuple[float, float, int]] = []
        """(sent at, seconds to the whole answer, total_downloading)"""
        self.errors = 0

    async def run(self, start: float, done: asyncio.Event, interval: float) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            due = start
            while not done.is_set():
                await asyncio.sleep(max(0.0, due - time.time()))
                sent = time.time()
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: *(\d+)", head, re.I)[1])  # type: ignore[index]
                body = await reader.readexactly(length)
                took = time.time() - sent
                if head.startswith(b"HTTP/1.1 200"):
                    self.samples.append((sent, took, json.loads(body)["total_downloading"]))
                else:
                    self.errors += 1
                due += interval
        finally:
            writer.close()


def run_wrk(url: str, key: str, seconds: int, connections: int) -> dict[str, float]:
    """wrk against `url` for `seconds`: requests/s and its p99 (ms)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"x-api-key: {key}",
         url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]), **wrk_latency(out)}  # type: ignore[index]


def wrk_latency(out: str) -> dict[str, float]:
    """p50 / p99 (ms) from wrk's `--latency` distribution."""
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    found = {}
    for q, value, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        found[f"p{q}_ms"] = float(value) * unit[u]
    return found


# -- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    async with spool_cluster(args.database_url, "heartbeats") as cluster:
        reactors = cluster.procs.start("reactors", "reactors")
        await asyncio.to_thread(cluster.start_api, args.api_processes)
        api = cluster.procs.procs["api"]
        profiles = []
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            profiles = [
                (profiler(reactors.pid, args.profile / "reactors.txt"), "reactors"),
                (profiler(api.pid, args.profile / "api.txt"), "api"),
            ]
        print(f"spool api ({args.api_processes} process) at {cluster.api_url}", flush=True)
        start_at = time.time() + args.warmup
        sims = start_simulators(args, cluster.database_url, start_at)
        end = start_at + args.seconds
        host, port = cluster.api_url.removeprefix("http://").split(":")
        pollers = [Poller(host, int(port), cluster.key) for _ in range(args.pollers)]
        finished = asyncio.Event()
        polling = [
            asyncio.create_task(
                p.run(
                    start_at + i * args.poll_interval / len(pollers), finished, args.poll_interval
                )
            )
            for i, p in enumerate(pollers)
        ]
        wrk_start = end - args.wrk_seconds - 2
        wrk: dict[str, float] = {}
        if args.wrk_seconds:
            await asyncio.sleep(max(0.0, wrk_start - time.time()))
            wrk = await asyncio.to_thread(
                run_wrk, f"{cluster.api_url}/dashboard/cluster", cluster.key, args.wrk_seconds,
                args.wrk_connections,
            )  # fmt: skip
        outs = [json.loads(await asyncio.to_thread(_last_line, s)) for s in sims]
        await asyncio.sleep(3)  # the dashboard catching up with the last beats
        finished.set()
        await asyncio.gather(*polling)
        for prof, name in profiles:
            stop_profiler(prof)
            print(f"\n{name}: share of samples, inclusive")
            for share_, frame in top_frames(args.profile / f"{name}.txt", 30):
                print(f"  {share_:6.1%}  {frame}")
        conn = await asyncpg.connect(asyncpg_url(cluster.database_url))
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM events WHERE type = $1", node.NodeHeartbeat.__name__
            )
        finally:
            await conn.close()
    print()
    print(report(args, start_at, end, wrk_start, outs, pollers, wrk, stored))


def start_simulators(
    args: argparse.Namespace, database_url: str, start_at: float
) -> list[subprocess.Popen[bytes]]:
    """`--simulators` child processes sharing the nodes between them."""
    share = -(-args.nodes // args.simulators)
    return [
        start_module(
            "bench.heartbeats", "simulate", "--database-url", database_url, "--first", str(first),
            "--nodes", str(min(share, args.nodes - first)),
            "--total-nodes", str(args.nodes), "--start-at", repr(start_at),
            "--seconds", str(args.seconds), "--flip-every", str(args.flip_every),
            "--connections", str(args.connections),
            *(["--durable"] if args.durable else []),
            pipe_stdout=True,
        )
        for first in range(0, args.nodes, share)
    ]  # fmt: skip


def _last_line(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a simulator failed ({proc.returncode})")
    return out.decode().strip().splitlines()[-1]


def report(
    args: argparse.Namespace,
    start_at: float,
    end: float,
    wrk_start: float,
    outs: Sequence[dict[str, Any]],
    pollers: Sequence[Poller],
    wrk: dict[str, float],
    stored: int,
) -> str:
    samples = sorted(s for p in pollers for s in p.samples)
    last = max(o["last"] for o in outs)
    quiet = [
        took for sent, took, _ in samples
        if start_at <= sent < last and not (args.wrk_seconds and wrk_start <= sent < end - 2)
    ]  # fmt: skip
    fresh: list[float] = []
    for flip in range(1, args.seconds // args.flip_every + (args.seconds % args.flip_every > 0)):
        last_beat = max(float(o["flips"].get(str(flip), 0.0)) for o in outs)
        want = args.nodes * (1 + flip % 2)
        shown = next((sent + took for sent, took, total in samples
                      if sent > last_beat and total == want), None)  # fmt: skip
        if shown is not None:
            fresh.append(shown - last_beat)
    expected = args.nodes * args.seconds
    appended = sum(o["appended"] for o in outs)
    elapsed = max(o["last"] for o in outs) - min(o["first"] for o in outs)
    failed = sum(o["failed"] for o in outs)
    verdict = "all stored" if stored == expected else f"MISSING {expected - stored}"
    append_p50 = statistics.median(o["append_p50_ms"] for o in outs)
    append_p99 = max(o["append_p99_ms"] for o in outs)
    late_p99 = max(o["late_p99_ms"] for o in outs)
    late_max = max(o["late_max_ms"] for o in outs)
    flips = ", ".join(f"{f:.2f}" for f in fresh) + f" s; worst {max(fresh):.2f} s" if fresh else "-"
    errors = sum(p.errors for p in pollers)
    lines = [
        f"heartbeats: {args.nodes} nodes x {args.seconds} s = {expected:,} expected; appended "
        f"{appended:,}, failed {failed}, stored in the log {stored:,} ({verdict})",
        f"  append latency p50 {append_p50:.1f} ms, p99 (worst simulator) {append_p99:.1f} ms; "
        f"beats started late p99 {late_p99:.0f} ms, max {late_max:.0f} ms",
        f"  ingested in {elapsed:.1f} s (scheduled {args.seconds} s): "
        f"{appended / elapsed:,.0f} events/s",
        f"dashboard freshness after the last changed beat committed (target <= 2 s): {flips}",
        f"dashboard p99 with {args.pollers} pollers every {args.poll_interval:g} s "
        f"({len(quiet):,} requests, {errors} errors; target < 10 ms): "
        f"p50 {percentile(quiet, 50) * 1000:.2f} ms, p99 {percentile(quiet, 99) * 1000:.2f} ms, "
        f"max {max(quiet) * 1000:.1f} ms",
    ]
    if wrk:
        lines.append(
            f"dashboard flat out (wrk -c{args.wrk_connections}, {args.wrk_seconds} s, during "
            f"ingestion): {wrk['rps']:,.0f} requests/s, p50 {wrk.get('p50_ms', 0):.2f} ms, "
            f"p99 {wrk.get('p99_ms', 0):.2f} ms"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what")
    sim = sub.add_parser("simulate", help="(internal) one simulator process")
    sim.add_argument("--database-url", required=True)
    sim.add_argument("--first", type=int, required=True)
    sim.add_argument("--nodes", type=int, required=True)
    sim.add_argument("--total-nodes", type=int, required=True)
    sim.add_argument("--start-at", type=float, required=True)
    sim.add_argument("--seconds", type=int, required=True)
    sim.add_argument("--flip-every", type=int, required=True)
    sim.add_argument("--connections", type=int, required=True)
    sim.add_argument("--durable", action="store_true")
    add_database_url(p)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--simulators", type=int, default=4, help="processes appending heartbeats")
    p.add_argument("--connections", type=int, default=8, help="pool size of each simulator")
    p.add_argument("--flip-every", type=int, default=10)
    p.add_argument("--api-processes", type=int, default=1)
    p.add_argument(
        "--durable", action="store_true", help="a WAL flush per heartbeat (nodes do not wait)"
    )
    p.add_argument("--pollers", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--wrk-seconds", type=int, default=10)
    p.add_argument("--wrk-connections", type=int, default=10)
    p.add_argument("--profile", type=Path, default=None, help="py-spy the reactors and the API")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds to register before beats")
    return p.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    asyncio.run(simulate(parsed) if parsed.what == "simulate" else run(parsed))
