"""From an appended event to its projection row in the API: `GET /jobs` polled until it shows
the event, beside the floor any log follower has (the append's NOTIFY, then a read).

`spool api` (one process) and `spool reactors` run as a user runs them, over a database and
Redis of the bench's own (`bench/cluster.py`). The bench appends through the event store, as a
command would, one event at a time, alternating two kinds that change what `GET /jobs/{id}`
shows:

* create: `JobCreated` of a held job (a job of a paused batch: nothing dispatches it, so no
  worker is needed) of the API key's account; seen when the job is there;
* rename: `JobRenamed` of that job; seen when the new file name is there.

From the moment the append is called, each sample times, side by side:

* append: the store's commit returned to the appender;
* NOTIFY + read (the floor): a LISTEN connection in this process on the store's channel got a
  NOTIFY after which a read of `events` finds the event; what any follower of the log needs;
* `jobs` row: a direct SQL read of the projection table (polled every `--poll-ms`) shows it;
* API list: `GET /jobs?limit=1` over loopback (the account's newest job, read from the `jobs`
  projection; polled every `--poll-ms`) shows it: the goal's measure;
* API by id: `GET /jobs/{id}` (polled likewise) shows it. It does not read the projection: it
  folds the job from its snapshot and events (api/jobs.py `load_job`, exact to the last event),
  so it shows what a read of the log costs through the API, not the projection hop.

The next sample starts once the last one is seen everywhere. The write transactions open
meanwhile in other databases of the server are watched (`bench.harness.OtherTransactions`): a
reader of the log waits for such a transaction, whatever its database, so the samples appended
while one was open, and still open after, are also left out in a row of their own.

Two phases, `--events` samples each: at rest, then under a background load of `--load-rate`
`JobCreated`/s (held jobs of another account, appended one per transaction by another task of
this process on its own connection; the achieved rate is reported). The ratio API list / floor
shows what the projection hop (projection runner, its commit, the API's read) adds.

Goal (issue 23): event to projection row visible in the API, p99 <= 100 ms.

    python -m bench.projection_visibility                      # about 1 minute
    python -m bench.projection_visibility --events 100         # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.arguments import add_database_url
from bench.cluster import spool_cluster
from bench.harness import OtherTransactions, percentile, wait_for
from spool.adapters.database import create_pool
from spool.adapters.event_store import NOTIFY_CHANNEL, EventStore
from spool.domain import job
from spool.domain.events import Event, NewEvent

MEASURES = ("append", "NOTIFY + read", "`jobs` row", "API list", "API by id")


@dataclass
class Phase:
    name: str
    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {k: {m: [] for m in MEASURES} for k in ("create", "rename")}
    )
    load_rate: float = 0.0
    appended_at: list[float] = field(default_factory=list)
    """Each sample's append, epoch seconds, in the order taken."""
    held: list[bool] = field(default_factory=list)
    """Whether another database's write transaction was open at that append."""
    others: str = ""
    """What other databases' write transactions did meanwhile (`OtherTransactions`)."""

    def watched(self, others: OtherTransactions) -> None:
        self.held = [others.held(at) for at in self.appended_at]
        self.others = others.describe()


class Listener:
    """A LISTEN connection on the store's channel: an event per NOTIFY, any types."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.notified = asyncio.Event()

    def _on_notify(self, *_: object) -> None:
        self.notified.set()

    async def start(self) -> None:
        await self.conn.add_listener(NOTIFY_CHANNEL, self._on_notify)


class Probe:
    """One sample: append, then wait for each reader to see the event."""

    def __init__(
        self,
        store: EventStore,
        listener: Listener,
        reader: asyncpg.Connection,
        client: httpx.AsyncClient,
        poll: float,
    ) -> None:
        self.store = store
        self.listener = listener
        self.reader = reader
        self.client = client
        self.poll = poll

    async def _floor(self, stream: str, version: int) -> None:
        while True:
            await self.listener.notified.wait()
            self.listener.notified.clear()
            found = await self.listener.conn.fetchval(
                "SELECT 1 FROM events WHERE stream_id = $1 AND version = $2", stream, version
            )
            if found:
                return

    async def _polled(self, seen: Callable[[], Awaitable[bool]]) -> None:
        while not await seen():
            await asyncio.sleep(self.poll)

    async def sample(
        self, job_id: str, event: Event, version: int, shown: Callable[[dict[str, Any]], bool]
    ) -> dict[str, float]:
        """ms from the append's call to each reader seeing `event`, the `version`-th of the
        job's stream, in the job's view (`shown`)."""
        stream = job.stream_id(job_id)
        at: dict[str, float] = {}

        async def row() -> bool:
            v = await self.reader.fetchval("SELECT version FROM jobs WHERE job_id = $1", job_id)
            return v is not None and v >= version

        async def listed() -> bool:
            answer = await self.client.get("/jobs", params={"limit": 1})
            answer.raise_for_status()
            page = answer.json()["jobs"]
            return bool(page) and page[0]["id"] == job_id and shown(page[0])

        async def by_id() -> bool:
            answer = await self.client.get(f"/jobs/{job_id}")
            return answer.status_code == 200 and shown(answer.json())

        async def timed(name: str, seen: Awaitable[None]) -> None:
            await seen
            at[name] = time.perf_counter()

        self.listener.notified.clear()
        started = time.perf_counter()
        at["wall"] = time.time()
        watchers = [
            asyncio.create_task(timed("NOTIFY + read", self._floor(stream, version))),
            asyncio.create_task(timed("`jobs` row", self._polled(row))),
            asyncio.create_task(timed("API list", self._polled(listed))),
            asyncio.create_task(timed("API by id", self._polled(by_id))),
        ]
        await self.store.append(stream, [NewEvent(event)], version - 1)
        at["append"] = time.perf_counter()
        done, pending = await asyncio.wait(watchers, timeout=30)
        for task in pending:
            task.cancel()
        if pending:
            raise TimeoutError(f"{type(event).__name__} of {job_id} not seen within 30 s: {at}")
        for task in done:
            task.result()
        return {"wall": at["wall"]} | {m: (at[m] - started) * 1000.0 for m in MEASURES}


async def probe_phase(probe: Probe, account: str, events: int, phase: Phase) -> None:
    """`events` samples, a create then a rename of the same job, and so on."""
    created: job.JobCreated | None = None
    for i in range(events):
        if i % 2 == 0:
            job_id = str(uuid.uuid4())
            [created_event] = job.create(
                job_id=job_id,
                account_id=account,
                url=f"https://media.example.com/{job_id}",
                options=job.JobOptions(),
                held=True,
            )
            assert isinstance(created_event, job.JobCreated)
            created = created_event
            times = await probe.sample(job_id, created, 1, lambda view: True)
            phase_samples = phase.samples["create"]
        else:
            assert created is not None
            state = job.evolve(None, created, datetime.now(UTC), 1)
            name = f"renamed-{i}.mp4"
            [renamed] = job.rename(state, name)

            def shows(view: dict[str, Any], name: str = name) -> bool:
                return bool(view.get("filename") == name)

            times = await probe.sample(created.job_id, renamed, 2, shows)
            phase_samples = phase.samples["rename"]
        phase.appended_at.append(times["wall"])
        for m in MEASURES:
            phase_samples[m].append(times[m])


async def background_load(pool: asyncpg.Pool, rate: float, stop: asyncio.Event) -> float:
    """`JobCreated` of held jobs at `rate`/s, one per transaction, until `stop`; the rate
    achieved."""
    store = EventStore(pool)
    sent = 0
    started = time.perf_counter()
    while not stop.is_set():
        job_id = str(uuid.uuid4())
        new = job.create(
            job_id=job_id,
            account_id="bench-load",
            url=f"https://media.example.com/{job_id}",
            options=job.JobOptions(),
            held=True,
        )
        await store.append(job.stream_id(job_id), [NewEvent(e) for e in new], 0)
        sent += 1
        ahead = started + sent / rate - time.perf_counter()
        if ahead > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ahead)
    return sent / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> list[Phase]:
    phases: list[Phase] = []
    async with spool_cluster(args.database_url, "visibility") as cluster:
        cluster.procs.start("reactors", "reactors")
        await asyncio.to_thread(cluster.start_api, 1)
        pool = await create_pool(cluster.database_url, min_size=2, max_size=4)
        listener = Listener(await asyncpg.connect(cluster.database_url))
        reader = await asyncpg.connect(cluster.database_url)
        client = httpx.AsyncClient(
            base_url=cluster.api_url, headers={"x-api-key": cluster.key}, timeout=30
        )
        try:

            async def key_works() -> bool:
                return (await client.get("/jobs")).status_code == 200

            procs = list(cluster.procs.procs.values())
            await wait_for(key_works, 60, "the API key's projection", procs)
            account: str = await pool.fetchval(
                "SELECT account_id FROM api_keys WHERE name = 'SPOOL_API_KEY'"
            )
            await listener.start()
            probe = Probe(EventStore(pool), listener, reader, client, args.poll_ms / 1000.0)
            await probe_phase(probe, account, 20, Phase("warm-up"))
            at_rest = Phase("at rest")
            async with OtherTransactions(pool) as others:
                await probe_phase(probe, account, args.events, at_rest)
            at_rest.watched(others)
            phases.append(at_rest)
            p99 = percentile(_all(at_rest, "API list"), 99)
            print(f"  at rest: API list p99 {p99:.1f} ms", flush=True)
            if args.load_rate > 0:
                loaded = Phase(f"{args.load_rate:g} JobCreated/s beside")
                stop = asyncio.Event()
                load_pool = await create_pool(cluster.database_url, min_size=1, max_size=1)
                load = asyncio.create_task(background_load(load_pool, args.load_rate, stop))
                try:
                    await asyncio.sleep(1.0)  # the load's first second, before measuring
                    async with OtherTransactions(pool) as others:
                        await probe_phase(probe, account, args.events, loaded)
                    loaded.watched(others)
                finally:
                    stop.set()
                    loaded.load_rate = await load
                    await load_pool.close()
                phases.append(loaded)
                print(
                    f"  under load ({loaded.load_rate:.0f}/s achieved): API p99 "
                    f"{percentile(_all(loaded, 'API list'), 99):.1f} ms",
                    flush=True,
                )
        finally:
            await client.aclose()
            await reader.close()
            await listener.conn.close()
            await pool.close()
    return phases


def _unheld(phase: Phase) -> dict[str, list[float]]:
    """The samples no other database's transaction held, in the order taken (create, rename,
    create...)."""
    create, rename = phase.samples["create"], phase.samples["rename"]
    out: dict[str, list[float]] = {m: [] for m in MEASURES}
    for i, held in enumerate(phase.held):
        if not held:
            kind = create if i % 2 == 0 else rename
            for m in MEASURES:
                out[m].append(kind[m][i // 2])
    return out


def _all(phase: Phase, measure: str) -> list[float]:
    return [x for kind in phase.samples.values() for x in kind[measure]]


def report(args: argparse.Namespace, phases: list[Phase], load: str) -> str:
    def q(values: list[float]) -> str:
        return " / ".join(f"{percentile(values, p):.1f}" for p in (50, 90, 99, 100))

    lines = [
        "```",
        "python -m bench.projection_visibility " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, load average "
        f"{load} before it; {args.events} samples a phase (creates and renames alternating), "
        f"polls every {args.poll_ms:g} ms; ms from the append's call, p50 / p90 / p99 / max.",
        "",
        "| phase | event | " + " | ".join(MEASURES) + " | API list / floor, p50 and p99 |",
        "|---|---|" + "---:|" * (len(MEASURES) + 1),
    ]
    for phase in phases:
        name = phase.name
        if phase.load_rate:
            name += f" ({phase.load_rate:.0f}/s achieved)"
        kinds = [*phase.samples.items(), ("both", {m: _all(phase, m) for m in MEASURES})]
        if any(phase.held):
            kinds.append(
                (f"both, without the {sum(phase.held)} held", _unheld(phase)),
            )
        for kind, samples in kinds:
            floor, api = samples["NOTIFY + read"], samples["API list"]
            ratio = (
                f"{percentile(api, 50) / percentile(floor, 50):.1f}x, "
                f"{percentile(api, 99) / percentile(floor, 99):.1f}x"
            )
            lines.append(
                f"| {name} | {kind} | "
                + " | ".join(q(samples[m]) for m in MEASURES)
                + f" | {ratio} |"
            )
    for phase in phases:
        p99 = percentile(_all(phase, "API list"), 99)
        lines.append("")
        lines.append(
            f"{phase.name}: API list p99 {p99:.1f} ms; goal <= 100 ms "
            + ("met" if p99 <= 100 else "**missed**")
            + f"; {phase.others}"
            + (
                f"; without the {sum(phase.held)} samples one held: "
                f"p99 {percentile(_unheld(phase)['API list'], 99):.1f} ms."
                if any(phase.held)
                else "."
            )
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.projection_visibility",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_database_url(p)
    p.add_argument("--events", type=int, default=400, help="samples a phase")
    p.add_argument(
        "--load-rate",
        type=float,
        default=100.0,
        help="JobCreated/s appended beside the second phase (0: no second phase)",
    )
    p.add_argument("--poll-ms", type=float, default=1.0, help="between two polls of a reader")
    p.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    phases = asyncio.run(run(args))
    text = report(args, phases, load)
    print("\n" + text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
