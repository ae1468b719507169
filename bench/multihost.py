"""Jobs per second with 1, 2, 3... worker nodes, each on a host of its own.

`python -m bench.multihost --nodes 1,2,3 --jobs 60` runs, for each node count, a fresh cluster
of the multi-host test harness (tests/cluster/multihost.py: the API and reactors on one
network namespace, each `spool worker` on another, PostgreSQL, Redis, moto and the media
server on the database host), sends `--jobs` jobs of one short clip made by FFmpeg at once, and
measures from the first `JobCreated` to the last `JobCompleted` in the log (the nodes are
online before the first job is sent). On one machine every node shares its cores: the ratio
between node counts says how far the cluster's coordination lets work spread, not what more
machines would add. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.arguments import add_database_url
from bench.cluster import spool_cluster
from tests.cluster.multihost import multihost
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


async def run(server_url: str, media: Path, nodes: int, jobs: int, seconds: float) -> Run:
    """One cluster of `nodes` worker hosts through `jobs` jobs; what it did."""
    async with spool_cluster(server_url, f"multihost{nodes}") as made:
        with tempfile.TemporaryDirectory(prefix="spool-bench-hosts-") as root:
            async with multihost(
                database_url=made.database_url,
                redis_url=made.redis_url,
                media_root=media,
                root=Path(root),
                nodes=nodes,
            ) as cluster:
                url = cluster.db.media.url("clip.mp4")
                made_jobs = await cluster.create_jobs(
                    {"url": url, "filename": f"clip{i}"} for i in range(jobs)
                )
                ended = await cluster.wait_ended(made_jobs, seconds)
                span = await cluster.store.pool.fetchval(_SPAN)
    completed = sum(status == "Completed" for status in ended.values())
    return Run(nodes, jobs, completed, float(span))


async def amain(args: argparse.Namespace) -> None:
    reason = namespaces_unavailable()
    if reason is not None:
        raise SystemExit(f"bench.multihost needs network namespaces: {reason}")
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="spool-bench-media-") as folder:
        media = Path(folder)
        make_clip(media / "clip.mp4", args.clip_seconds, width=160, height=120)
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
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
