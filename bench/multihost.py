"""Jobs per second with 1, 2, 3... worker nodes, each on a host of its own.

`python -m bench.multihost --nodes 1,2,3 --jobs 60` runs, for each node count, a fresh cluster
of the multi-host test harness (tests/cluster/multihost.py: the API and reactors on one
network namespace, each `spool worker` on another, PostgreSQL, Redis, moto and the media
server on the database host), sends `--jobs` jobs of one short clip made by FFmpeg at once, and
measures from the first `JobCreated` to the last `JobCompleted` in the log (the nodes are
online before the first job is sent). On one machine every node shares its cores: the ratio
between node counts says how far the cluster's coordination lets work spread, not what more
machines would add. Needs root (network namespaces).

`python -m bench.multihost --takeover 5` measures instead, on 3 nodes, how long a dead node's
work waits: each round holds downloads on every node (a source that trickles until released),
kills every process on node1's host once two of its downloads run, and reads from the log the
time from the kill to each of those downloads starting again on another node. The cluster's
timings are the test harness's (`TIMINGS` in tests/cluster/multihost.py), printed with the
result: the takeover time follows from them (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.arguments import add_database_url
from bench.cluster import spool_cluster
from tests.cluster.multihost import TIMINGS, MultiHost, multihost
from tests.cluster.network import namespaces_unavailable
from tests.fixtures.media import make_clip

_SPAN = """
SELECT extract(epoch FROM max(recorded_at) FILTER (WHERE type = 'JobCompleted')
                        - min(recorded_at) FILTER (WHERE type = 'JobCreated'))
FROM events
"""


@dataclass(frozen=True)
class Run:
    nodes: int
    jobs: int
    completed: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        return self.completed / self.seconds


@contextlib.asynccontextmanager
async def _hosts(server_url: str, media: Path, nodes: int, name: str) -> AsyncIterator[MultiHost]:
    """A multi-host cluster of `nodes` worker hosts over a database and Redis of its own."""
    async with spool_cluster(server_url, name) as made:
        with tempfile.TemporaryDirectory(prefix="spool-bench-hosts-") as root:
            async with multihost(
                database_url=made.database_url,
                redis_url=made.redis_url,
                media_root=media,
                root=Path(root),
                nodes=nodes,
            ) as cluster:
                yield cluster


async def run(server_url: str, media: Path, nodes: int, jobs: int, seconds: float) -> Run:
    """One cluster of `nodes` worker hosts through `jobs` jobs; what it did."""
    async with _hosts(server_url, media, nodes, f"multihost{nodes}") as cluster:
        url = cluster.db.media.url("clip.mp4")
        made_jobs = await cluster.create_jobs(
            {"url": url, "filename": f"clip{i}"} for i in range(jobs)
        )
        ended = await cluster.wait_ended(made_jobs, seconds)
        span = await cluster.store.pool.fetchval(_SPAN)
    completed = sum(status == "Completed" for status in ended.values())
    return Run(nodes, jobs, completed, float(span))


_STARTS = """
SELECT stream_id, data->>'node_id' AS node_id, recorded_at
FROM events
WHERE type = 'StageStarted' AND data->>'stage' = 'download' AND stream_id = ANY($1::text[])
ORDER BY position
"""

HELD = 9
"""Held downloads a round starts: more than the three nodes' download slots (two each)."""


async def _download_starts(
    cluster: MultiHost, jobs: list[str]
) -> dict[str, list[tuple[str, datetime]]]:
    """Each job's download starts, in order: (node, when)."""
    rows = await cluster.store.pool.fetch(_STARTS, [f"job-{j}" for j in jobs])
    found: dict[str, list[tuple[str, datetime]]] = {}
    for r in rows:
        found.setdefault(r["stream_id"].removeprefix("job-"), []).append(
            (r["node_id"], r["recorded_at"])
        )
    return found


async def takeover_round(cluster: MultiHost, seconds: float) -> list[float]:
    """Kill node1 while two of its downloads run; seconds from the kill to each one's restart
    elsewhere."""
    held, gate = cluster.db.media.held_url("clip.mp4")
    jobs = await cluster.create_jobs({"url": held, "filename": f"held{i}"} for i in range(HELD))
    deadline = time.monotonic() + seconds
    while True:
        starts = await _download_starts(cluster, jobs)
        victims = [j for j, s in starts.items() if [n for n, _ in s] == ["node1"]]
        if len(victims) >= 2:
            break
        assert time.monotonic() < deadline, "node1 never ran two downloads"
        await asyncio.sleep(0.1)
    cluster.nodes["node1"].kill()
    killed_at = datetime.now(UTC)
    gate.set()
    while True:
        starts = await _download_starts(cluster, jobs)
        restarted = [s[1][1] for j in victims if len(s := starts.get(j, [])) > 1]
        if len(restarted) == len(victims):
            break
        assert time.monotonic() < deadline, f"not taken over: {victims}"
        await asyncio.sleep(0.1)
    await cluster.wait_ended(jobs, seconds)
    return [(at - killed_at).total_seconds() for at in restarted]


async def takeover(server_url: str, media: Path, rounds: int, seconds: float) -> list[float]:
    """`rounds` node deaths on one 3-node cluster (node1 restarted between them)."""
    found: list[float] = []
    async with _hosts(server_url, media, 3, "takeover") as cluster:
        for n in range(rounds):
            await cluster.restore()
            took = await takeover_round(cluster, seconds)
            print(f"round {n + 1}: " + ", ".join(f"{t:.1f} s" for t in took), flush=True)
            found += took
    return found


async def amain(args: argparse.Namespace) -> None:
    reason = namespaces_unavailable()
    if reason is not None:
        raise SystemExit(f"bench.multihost needs network namespaces: {reason}")
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="spool-bench-media-") as folder:
        media = Path(folder)
        make_clip(media / "clip.mp4", args.clip_seconds, width=160, height=120)
        if args.takeover:
            took = await takeover(args.database_url, media, args.takeover, args.timeout)
            print(
                f"\nnode death to its downloads running elsewhere, {len(took)} downloads: "
                f"median {statistics.median(took):.1f} s, min {min(took):.1f} s, "
                f"max {max(took):.1f} s\n(timings: {TIMINGS})"
            )
            return
        runs = []
        for nodes in counts:
            print(f"{nodes} node(s): {args.jobs} jobs", flush=True)
            done = await run(args.database_url, media, nodes, args.jobs, args.timeout)
            print(f"  {done.completed} completed in {done.seconds:.1f} s", flush=True)
            runs.append(done)
    first = runs[0].jobs_per_s
    print(f"\n{'nodes':>5} {'jobs':>5} {'completed':>9} {'seconds':>8} {'jobs/s':>7} {'ratio':>6}")
    for r in runs:
        print(
            f"{r.nodes:>5} {r.jobs:>5} {r.completed:>9} {r.seconds:>8.1f} "
            f"{r.jobs_per_s:>7.2f} {r.jobs_per_s / first:>6.2f}"
        )
    print(f"\n(ratio: to {runs[0].nodes} node(s); {os.cpu_count()} cores on this machine)")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.multihost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_database_url(parser)
    parser.add_argument("--nodes", default="1,2,3", help="node counts to run")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--takeover",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="measure node death to takeover over ROUNDS kills instead of throughput",
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
