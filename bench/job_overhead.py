"""What one job costs beyond its work: a real clip, submit to `Completed`, minus its stages.

One 2-second clip (FFmpeg-made, served over loopback HTTP by the fixtures child of
`bench/harness.py`, stored to moto's S3 server there) goes through Spool as a user runs it:
`spool api`, `spool reactors` and one `spool worker` (default concurrency) over a database and
Redis of the bench's own (`bench/cluster.py`), the job submitted with `POST /jobs` over
loopback. Jobs go one at a time, each once the previous has completed, so no job waits for a
free worker: what is left beyond the stages is what Spool adds (dispatch, events, projections,
hand-offs between stages).

Per job, from its events' `recorded_at`:

* end to end: `JobCreated` to `JobCompleted`;
* the stages: each `StageStarted` to its `DownloadCompleted` / `MuxCompleted` / `JobCompleted`;
* overhead: end to end minus the three stages, and where it goes: `JobCreated` to the download's
  start, the download's end to the mux's start, the mux's end to the upload's start.

Side by side, in the same run, job for job (order alternating): the same clip through plain
arq with the same stage functions (`bench/pipeline_arq.py`, one baseline node with the same
concurrency, on the same Redis), where no event marks a stage: there the stages are the
seconds the stage functions measure around the adapter calls, and Spool's overhead is given by
that measure too (`GET /jobs/{id}`'s `*_duration_ms`, which the stages measure the same way).

The write transactions open meanwhile in other databases of the server are watched
(`bench.harness.OtherTransactions`): a reader of the log, so every reactor, waits for such a
transaction, whatever its database, so the Spool jobs with an event appended while one was open
and still open after it ("held") are also left out in a row of their own.

A Spool job not completed after `--give-up` seconds is reported with its last event and left
out, and the next one submitted (the one left out may then run beside it).

Goal (issue 23): overhead by events, median <= 50 ms.

    python -m bench.job_overhead                   # 40 jobs a side, about 3 minutes
    python -m bench.job_overhead --jobs 10         # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from arq.connections import ArqRedis

from bench import pipeline_arq
from bench.arguments import add_database_url
from bench.cluster import Cluster, spool_cluster
from bench.harness import (
    Fixtures,
    OtherTransactions,
    fixtures,
    median,
    percentile,
    wait_for,
)
from spool.adapters.database import create_pool
from spool.adapters.queue import connect
from spool.domain import job
from tests.fixtures.processes import stop_processes

STAGES = ("download", "mux", "upload")
GAPS = ("before download", "download to mux", "mux to upload")
_ENDS = {
    job.DownloadCompleted.__name__: "download",
    job.MuxCompleted.__name__: "mux",
    job.JobCompleted.__name__: "upload",
}


@dataclass
class Timing:
    """One job's figures, in ms."""

    end_to_end: float
    stages: float
    gaps: tuple[float, float, float] | None
    """Where the overhead goes (`GAPS`), when the stages' starts and ends are known."""
    moments: tuple[float, ...] = ()
    """When each of the job's events was appended, epoch seconds."""

    @property
    def overhead(self) -> float:
        return self.end_to_end - self.stages


@dataclass
class Side:
    name: str
    timings: list[Timing] = field(default_factory=list)


# -- Spool --------------------------------------------------------------------------------------


def by_events(rows: Sequence[asyncpg.Record]) -> Timing:
    """A completed job's timing from its events (type, stage, recorded_at), in log order."""
    created: datetime | None = None
    completed: datetime | None = None
    started: dict[str, datetime] = {}
    spans: dict[str, tuple[datetime, datetime]] = {}
    for kind, stage, at in rows:
        if kind == job.JobCreated.__name__:
            created = at
        elif kind == job.StageStarted.__name__:
            started[stage] = at  # a retried stage counts from its last start
        elif kind in _ENDS and _ENDS[kind] in started:
            spans[_ENDS[kind]] = (started[_ENDS[kind]], at)
        if kind == job.JobCompleted.__name__:
            completed = at
    if created is None or completed is None or set(spans) != set(STAGES):
        raise RuntimeError(f"an incomplete history: {[tuple(r) for r in rows]}")

    def ms(a: datetime, b: datetime) -> float:
        return (b - a).total_seconds() * 1000.0

    return Timing(
        moments=tuple(at.timestamp() for _, _, at in rows),
        end_to_end=ms(created, completed),
        stages=sum(ms(a, b) for a, b in spans.values()),
        gaps=(
            ms(created, spans["download"][0]),
            ms(spans["download"][1], spans["mux"][0]),
            ms(spans["mux"][1], spans["upload"][0]),
        ),
    )


class SpoolRun:
    """Jobs through `POST /jobs` of the cluster's API, one at a time."""

    def __init__(
        self,
        cluster: Cluster,
        pool: asyncpg.Pool,
        fx: Fixtures,
        others: OtherTransactions,
        give_up: float,
    ) -> None:
        self.cluster = cluster
        self.others = others
        self.give_up = give_up
        self.stuck: list[str] = []
        """The last event of each job given up on."""
        self.pool = pool
        self.fx = fx
        self.client = httpx.AsyncClient(
            base_url=cluster.api_url, headers={"x-api-key": cluster.key}, timeout=60
        )
        self.by_events = Side("Spool, stages by events")
        self.by_own = Side("Spool, stages' own seconds")

    async def one(self) -> None:
        answer = await self.client.post("/jobs", json={"url": self.fx.clip_url})
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["job_id"]

        async def done() -> dict[str, object] | None:
            body: dict[str, object] = (await self.client.get(f"/jobs/{job_id}")).json()
            if body["status"] in ("Failed", "Cancelled"):
                raise RuntimeError(f"job {job_id} ended {body['status']}: {body}")
            return body if body["status"] == "Completed" else None

        procs = list(self.cluster.procs.procs.values())
        history = (
            "SELECT type, data->>'stage', recorded_at FROM events WHERE stream_id = $1 "
            "ORDER BY version"
        )
        try:
            body = await wait_for(done, self.give_up, "a Spool job", procs, every=0.05)
        except TimeoutError:
            rows = await self.pool.fetch(history, job.stream_id(job_id))
            last = f"{rows[-1][0]} {rows[-1][1] or ''}".strip()
            self.stuck.append(last)
            print(
                f"  job {job_id} not completed after {self.give_up:g} s (last event: {last}; "
                f"{self.others.describe()}): left out",
                flush=True,
            )
            return
        rows = await self.pool.fetch(history, job.stream_id(job_id))
        timing = by_events(rows)
        self.by_events.timings.append(timing)
        own = sum(float(body[f"{s}_duration_ms"]) for s in STAGES)  # type: ignore[arg-type]
        self.by_own.timings.append(Timing(timing.end_to_end, own, None, timing.moments))

    async def close(self) -> None:
        await self.client.aclose()


# -- plain arq ----------------------------------------------------------------------------------


class ArqRun:
    """Jobs onto the baseline's download queue, one at a time."""

    def __init__(self, redis: ArqRedis, fx: Fixtures) -> None:
        self.redis = redis
        self.fx = fx
        self.side = Side("plain arq, stages' own seconds")

    async def one(self) -> None:
        job_id = str(uuid.uuid4())
        await pipeline_arq.submit(self.redis, job_id, self.fx.clip_url)
        popped = await self.redis.blpop([pipeline_arq.DONE_LIST], timeout=120)  # type: ignore[misc]
        if popped is None:
            raise TimeoutError("a plain arq job did not complete within 120 s")
        d = json.loads(popped[1])
        assert d["job_id"] == job_id, d
        upload_started = d["finished"] - d["upload_s"]
        self.side.timings.append(
            Timing(
                end_to_end=(d["finished"] - d["submitted"]) * 1000.0,
                stages=(d["download_s"] + d["mux_s"] + d["upload_s"]) * 1000.0,
                gaps=(
                    (d["download_started"] - d["submitted"]) * 1000.0,
                    (d["mux_started"] - d["download_started"] - d["download_s"]) * 1000.0,
                    (upload_started - d["mux_started"] - d["mux_s"]) * 1000.0,
                ),
            )
        )


# -- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[list[Side], str]:
    """The three sides' timings, and what other databases' transactions did meanwhile."""
    async with spool_cluster(args.database_url, "job_overhead") as cluster:
        with fixtures(cluster.procs.root / "fixtures") as fx:
            cluster.procs.env["SPOOL_URL_ALLOWLIST"] = "127.0.0.1/32"
            cluster.procs.env["SPOOL_STORAGE_URL"] = fx.storage_url(fx.bucket("bench-spool"))
            cluster.procs.start("reactors", "reactors")
            cluster.procs.worker("spool-node", "--concurrency", args.concurrency)
            await asyncio.to_thread(cluster.start_api, 1)
            arq_nodes = pipeline_arq.start_nodes(
                ["arq-node"],
                redis_url=cluster.redis_url,
                storage_url=fx.storage_url(fx.bucket("bench-arq")),
                root=cluster.procs.root / "arq-nodes",
                logs=cluster.procs.root,
                concurrency=args.concurrency,
            )
            pool = await create_pool(cluster.database_url, min_size=1, max_size=3)
            redis = await connect(cluster.redis_url)
            others = OtherTransactions(pool)
            spool = SpoolRun(cluster, pool, fx, others, args.give_up)
            arq = ArqRun(redis, fx)
            try:

                async def online() -> bool:
                    n = await pool.fetchval(
                        "SELECT count(*) FROM nodes WHERE stopped_at IS NULL "
                        "AND last_heartbeat_at IS NOT NULL"
                    )
                    return bool(n)

                node = cluster.procs.procs["spool-node"]
                await wait_for(online, 90, "spool worker starting", [node])
                await pipeline_arq.wait_ready(redis, ["arq-node"], arq_nodes)
                for _ in range(args.warmup):  # imports, pools, connections, FFmpeg's page cache
                    await spool.one()
                    await arq.one()
                spool.by_events.timings.clear()
                spool.by_own.timings.clear()
                arq.side.timings.clear()
                async with others:
                    for i in range(args.jobs):
                        for one in (spool.one, arq.one) if i % 2 == 0 else (arq.one, spool.one):
                            await one()
                        if (i + 1) % 10 == 0:
                            print(
                                f"  {i + 1} jobs a side: overhead median Spool "
                                f"{median([t.overhead for t in spool.by_events.timings]):.0f} "
                                "ms (by events), plain arq "
                                f"{median([t.overhead for t in arq.side.timings]):.0f} ms",
                                flush=True,
                            )
            finally:
                await spool.close()
                await redis.aclose()
                await pool.close()
                await asyncio.to_thread(stop_processes, *arq_nodes)
    sides = [spool.by_events, spool.by_own, arq.side]
    unheld = [t for t in spool.by_events.timings if not any(others.held(at) for at in t.moments)]
    if len(unheld) < len(spool.by_events.timings):
        held = len(spool.by_events.timings) - len(unheld)
        sides.append(Side(f"Spool, stages by events, without the {held} held", unheld))
    stuck = others.describe()
    if spool.stuck:
        stuck += (
            f"; {len(spool.stuck)} Spool job(s) not completed within {args.give_up:g} s, left "
            f"out (their last events: {', '.join(spool.stuck)})"
        )
    return sides, stuck


def _gap(timings: list[Timing], which: int) -> str:
    known = [t.gaps[which] for t in timings if t.gaps is not None]
    return f"{median(known):,.0f} ({max(known):,.0f})" if known else "-"


def report(args: argparse.Namespace, sides: list[Side], load: str, others: str) -> str:
    def q(values: list[float]) -> str:
        return " / ".join(f"{percentile(values, p):,.0f}" for p in (50, 90, 99))

    lines = [
        "```",
        "python -m bench.job_overhead " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, load average "
        f"{load} before it; {args.jobs} jobs a side one at a time (after {args.warmup} "
        f"warm-up), node concurrency `{args.concurrency}`; {others}. ms; where the overhead "
        "goes: median (max).",
        "",
        "| side | end to end | stage sum | overhead p50 / p90 / p99 | overhead / end to end "
        "| " + " | ".join(GAPS) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(GAPS),
    ]
    for side in sides:
        t = side.timings
        lines.append(
            f"| {side.name} | {median([x.end_to_end for x in t]):,.0f} "
            f"| {median([x.stages for x in t]):,.0f} | {q([x.overhead for x in t])} "
            f"| {median([x.overhead / x.end_to_end for x in t]):.0%} | "
            + " | ".join(_gap(t, g) for g in range(len(GAPS)))
            + " |"
        )
    spool, arq = sides[0], sides[2]
    ratio = median([x.overhead for x in spool.timings]) / median([x.overhead for x in arq.timings])
    goal = median([x.overhead for x in spool.timings])
    lines += [
        "",
        f"Overhead by events, median {goal:,.0f} ms: goal <= 50 ms "
        + ("met" if goal <= 50 else "**missed**")
        + f"; Spool's overhead (by events) / plain arq's: {ratio:.1f}x.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.job_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_database_url(p)
    p.add_argument("--jobs", type=int, default=40, help="measured jobs a side")
    p.add_argument("--warmup", type=int, default=2, help="jobs a side before measuring")
    p.add_argument(
        "--give-up",
        type=float,
        default=60.0,
        help="seconds after which a Spool job is left out and the next one submitted",
    )
    p.add_argument(
        "--concurrency", default="download=2,mux=1,upload=2", help="per node, both sides"
    )
    p.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    sides, others = asyncio.run(run(args))
    text = report(args, sides, load, others)
    print("\n" + text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
