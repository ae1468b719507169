"""Benchmark the event store's append paths and the projection runner's catch-up rate.

Appends: 300-byte `JobCreated` events (JSON of `data`; `metadata` carries correlation,
causation, actor and request ids, 186 bytes) written through `EventStore`, against plain asyncpg
inserts of the same rows into a bare table

    raw_events(stream_id text, version int, type text, schema_version smallint,
               data jsonb, metadata jsonb)

that has no index, no constraint, no default and no trigger: a heap and nothing else. Both
sides share one pool (`adapters.database.create_pool`, jsonb passed through as bytes), so only
the SQL differs; the raw side gets its rows already encoded, the store encodes its own. Modes:

* 1 event/tx, 1 conn: `store.append("job-<uuid>", [event], 0)` one after another, against one
  autocommit `INSERT ... VALUES` per row (both fsync-bound: one commit per event);
* 1 event/tx, 16 tasks: the same from 16 concurrent tasks on a 16-connection pool; the extra
  "raw INSERT + pg_notify" row is the raw insert plus the `pg_notify` the store's append does,
  to show what that costs under concurrency (it is not a target);
* 100 events/tx, 1 conn: `store.append(stream, 100 events, 0)` and
  `store.append_many(100 streams x 1 event)` against `executemany` of the plain INSERT inside
  one transaction (the baseline the target is measured against) and, for reference, a single
  `INSERT ... SELECT FROM unnest(...)` statement (the SQL shape the store itself uses).

The machine is shared and noisy, so every round runs every variant of a mode back to back (the
order rotated each round) and a variant's ratio is the median over rounds of its rate divided
by the baseline's rate in the same round; rates are medians over rounds too.

Catch-up: 200k jobs with one `JobCreated` each (appended with `append_many`, 1,000 streams a
call), `VACUUM ANALYZE events` (autovacuum may be off on the server), then for each batch size
(1,000 and 5,000 by default) the jobs table is emptied, its checkpoint deleted, and
`ProjectionRunner(store, [JobsProjection()], batch_size=B).catch_up("jobs")` is timed from the
origin on a fresh pool; the jobs table must then hold exactly 200k rows.

Targets (BENCHMARKS.md): append >= 0.7x raw in both modes; catch-up >= 20k events/s.

The script creates its own databases `spool_bench_<hex>_append` and `spool_bench_<hex>_catchup`
on the server, migrates them, and drops them at the end; it touches no other database.

Run from the repository root (defaults: about 2 minutes on a quiet machine, 4 under load):

    python -m bench.event_store
    python -m bench.event_store --rounds 5 --catchup-events 50000       # quicker
    python -m bench.event_store --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec

from bench.arguments import add_database_url
from spool.adapters.database import (
    asyncpg_url,
    create_database,
    create_pool,
    drop_database,
    migrate,
)
from spool.adapters.event_store import NOTIFY_CHANNEL, EventStore, StreamAppend
from spool.adapters.read_models.jobs import JobsProjection
from spool.domain.events import Metadata, NewEvent
from spool.domain.job import JobCreated, JobOptions, stream_id
from spool.reactors.projection import ProjectionRunner

RAW_TABLE = """
CREATE TABLE raw_events (
    stream_id text, version int, type text, schema_version smallint, data jsonb, metadata jsonb
)
"""
RAW_INSERT = (
    "INSERT INTO raw_events (stream_id, version, type, schema_version, data, metadata) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
RAW_INSERT_NOTIFY = f"""
WITH wake AS (SELECT pg_notify('{NOTIFY_CHANNEL}', ''))
INSERT INTO raw_events (stream_id, version, type, schema_version, data, metadata)
SELECT $1, $2, $3, $4, $5, $6 FROM wake
"""
RAW_UNNEST = """
INSERT INTO raw_events (stream_id, version, type, schema_version, data, metadata)
SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::int2[], $5::jsonb[], $6::jsonb[])
"""

_OPTIONS = JobOptions(
    format="bestvideo[height<=1080]+bestaudio/best",
    audio_codec="aac",
    max_resolution="1080p",
    download_subtitles=True,
)

RawRow = tuple[str, int, str, int, bytes, bytes]


def new_event() -> NewEvent:
    """A `JobCreated` whose JSON is 300 bytes, with full metadata (186 bytes)."""
    created = JobCreated(
        job_id=str(uuid.uuid4()),
        account_id="acct-" + secrets.token_hex(3),
        url="https://media.example.com/watch?v=" + uuid.uuid4().hex,
        options=_OPTIONS,
    )
    meta = Metadata(
        correlation_id=str(uuid.uuid4()),
        causation_id=str(uuid.uuid4()),
        actor="key-" + secrets.token_hex(6),
        request_id=uuid.uuid4().hex,
    )
    return NewEvent(created, meta)


def new_stream() -> str:
    return stream_id(str(uuid.uuid4()))


def raw_row(sid: str, version: int, e: NewEvent) -> RawRow:
    """The row the store would write for `e`, encoded ahead of time (the raw side's head start)."""
    cls = type(e.event)
    return (
        sid,
        version,
        cls.__name__,
        cls.schema_version,
        msgspec.json.encode(e.event),
        msgspec.json.encode(e.metadata),
    )


# -- appends ------------------------------------------------------------------------------------

Unit = Callable[[], Awaitable[None]]


@dataclass
class Variant:
    """One way of writing events: `prepare(n)` builds the units (untimed), then they run."""

    name: str
    prepare: Callable[[int], list[Unit]]
    role: str  # "raw": the mode's baseline; "store": held to the target; "ref": for reference
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


@dataclass
class Mode:
    name: str
    events: int  # per variant per round
    per_unit: int  # events one unit writes
    concurrency: int
    variants: list[Variant]

    @property
    def baseline(self) -> Variant:
        return self.variants[0]


async def run_units(units: Sequence[Unit], concurrency: int) -> float:
    """Run the units on `concurrency` tasks (each sequential over its share); seconds taken."""

    async def worker(share: Sequence[Unit]) -> None:
        for unit in share:
            await unit()

    start = time.perf_counter()
    await asyncio.gather(*(worker(units[i::concurrency]) for i in range(concurrency)))
    return time.perf_counter() - start


def append_modes(pool: asyncpg.Pool, store: EventStore, args: argparse.Namespace) -> list[Mode]:
    size = args.batch_size

    def store_one(n: int) -> list[Unit]:
        def unit(sid: str, e: NewEvent) -> Unit:
            async def go() -> None:
                await store.append(sid, [e], 0)

            return go

        return [unit(new_stream(), new_event()) for _ in range(n)]

    def raw_one(sql: str) -> Callable[[int], list[Unit]]:
        def prepare(n: int) -> list[Unit]:
            def unit(row: RawRow) -> Unit:
                async def go() -> None:
                    await pool.execute(sql, *row)

                return go

            return [unit(raw_row(new_stream(), 1, new_event())) for _ in range(n)]

        return prepare

    def store_batch(n: int) -> list[Unit]:
        def unit(sid: str, events: list[NewEvent]) -> Unit:
            async def go() -> None:
                await store.append(sid, events, 0)

            return go

        return [unit(new_stream(), [new_event() for _ in range(size)]) for _ in range(n // size)]

    def store_many(n: int) -> list[Unit]:
        def unit(appends: list[StreamAppend]) -> Unit:
            async def go() -> None:
                await store.append_many(appends)

            return go

        return [
            unit([StreamAppend(new_stream(), [new_event()], 0) for _ in range(size)])
            for _ in range(n // size)
        ]

    def raw_batch_rows() -> list[RawRow]:
        sid = new_stream()
        return [raw_row(sid, v, new_event()) for v in range(1, size + 1)]

    def raw_executemany(n: int) -> list[Unit]:
        def unit(rows: list[RawRow]) -> Unit:
            async def go() -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.executemany(RAW_INSERT, rows)

            return go

        return [unit(raw_batch_rows()) for _ in range(n // size)]

    def raw_unnest(n: int) -> list[Unit]:
        def unit(rows: list[RawRow]) -> Unit:
            columns = [list(c) for c in zip(*rows, strict=True)]

            async def go() -> None:
                await pool.execute(RAW_UNNEST, *columns)

            return go

        return [unit(raw_batch_rows()) for _ in range(n // size)]

    c = args.concurrency
    return [
        Mode(
            "1 event/tx, 1 conn",
            args.single_events,
            1,
            1,
            [
                Variant("raw INSERT", raw_one(RAW_INSERT), "raw"),
                Variant("store.append", store_one, "store"),
            ],
        ),
        Mode(
            f"1 event/tx, {c} tasks",
            args.concurrent_events,
            1,
            c,
            [
                Variant("raw INSERT", raw_one(RAW_INSERT), "raw"),
                Variant("store.append", store_one, "store"),
                Variant("raw INSERT + pg_notify", raw_one(RAW_INSERT_NOTIFY), "ref"),
            ],
        ),
        Mode(
            f"{size} events/tx, 1 conn",
            args.batch_events,
            size,
            1,
            [
                Variant("raw executemany", raw_executemany, "raw"),
                Variant("store.append", store_batch, "store"),
                Variant("store.append_many", store_many, "store"),
                Variant("raw unnest", raw_unnest, "ref"),
            ],
        ),
    ]


async def bench_append(url: str, args: argparse.Namespace) -> list[Mode]:
    pool = await create_pool(url, min_size=args.concurrency, max_size=args.concurrency)
    try:
        await pool.execute(RAW_TABLE)
        store = EventStore(pool)
        modes = append_modes(pool, store, args)
        # Warm up: connections, prepared statements, the first pages of both tables.
        for mode in modes:
            for v in mode.variants:
                await run_units(v.prepare(2 * args.batch_size), mode.concurrency)
        for r in range(args.rounds):
            for mode in modes:
                k = r % len(mode.variants)
                rates: dict[str, float] = {}
                for v in mode.variants[k:] + mode.variants[:k]:  # rotate who goes first
                    units = v.prepare(mode.events)
                    seconds = await run_units(units, mode.concurrency)
                    rates[v.name] = len(units) * mode.per_unit / seconds
                for v in mode.variants:
                    v.rates.append(rates[v.name])
                    v.ratios.append(rates[v.name] / rates[mode.baseline.name])
                shown = "  ".join(f"{name} {rate:,.0f}" for name, rate in rates.items())
                print(f"  round {r + 1}/{args.rounds}  {mode.name}: {shown} ev/s", flush=True)
        stored = await pool.fetchval("SELECT count(*) FROM events")
        raw = await pool.fetchval("SELECT count(*) FROM raw_events")
        print(f"  rows written: events {stored:,}, raw_events {raw:,}")
        return modes
    finally:
        await pool.close()


# -- catch-up -----------------------------------------------------------------------------------


@dataclass
class CatchUp:
    batch_size: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def bench_catch_up(url: str, args: argparse.Namespace) -> tuple[float, list[CatchUp]]:
    pool = await create_pool(url, min_size=1, max_size=2)
    runner_pool: asyncpg.Pool | None = None
    try:
        store = EventStore(pool)
        total = args.catchup_events
        chunk = 1000
        start = time.perf_counter()
        for done in range(0, total, chunk):
            appends = [
                StreamAppend(new_stream(), [new_event()], 0)
                for _ in range(min(chunk, total - done))
            ]
            await store.append_many(appends)
        load_rate = total / (time.perf_counter() - start)
        print(f"  loaded {total:,} JobCreated with append_many x{chunk}: {load_rate:,.0f} ev/s")
        await pool.execute("VACUUM ANALYZE events")

        results: list[CatchUp] = []
        for size in args.catchup_batch:
            await pool.execute("TRUNCATE jobs")
            await pool.execute("DELETE FROM checkpoints WHERE name = 'jobs'")
            await pool.execute("VACUUM ANALYZE jobs")
            # A fresh pool per run, as a freshly started runner has, unless asked to keep one:
            # then statements (and plans) cached by the previous run carry over.
            if runner_pool is None or not args.catchup_reuse_pool:
                if runner_pool is not None:
                    await runner_pool.close()
                runner_pool = await create_pool(url, min_size=1, max_size=2)
            runner = ProjectionRunner(EventStore(runner_pool), [JobsProjection()], batch_size=size)
            start = time.perf_counter()
            applied = await runner.catch_up("jobs")
            seconds = time.perf_counter() - start
            rows = await pool.fetchval("SELECT count(*) FROM jobs")
            assert applied == total, f"catch-up applied {applied:,} of {total:,} events"
            assert rows == total, f"jobs has {rows:,} rows, expected {total:,}"
            results.append(CatchUp(size, applied, seconds))
            print(
                f"  catch-up batch_size={size:<5} {applied:,} events in {seconds:.2f} s:"
                f" {applied / seconds:,.0f} ev/s (jobs rows: {rows:,})",
                flush=True,
            )
        return load_rate, results
    finally:
        if runner_pool is not None:
            await runner_pool.close()
        await pool.close()


# -- the run ------------------------------------------------------------------------------------


def summary(
    modes: list[Mode],
    load_rate: float,
    catch_ups: list[CatchUp],
    args: argparse.Namespace,
    server: str,
) -> str:
    lines = [
        f"PostgreSQL {server}; {args.rounds} rounds; medians over rounds; vs raw = median of",
        "per-round ratios to the mode's raw baseline; range = min-max of those ratios.",
    ]
    if modes:
        lines += [
            "",
            f"| {'mode':<22} | {'variant':<22} | {'events/s':>9} | {'vs raw':>7} |"
            f" {'range':<11} | target |",
            f"|{'-' * 24}|{'-' * 24}|{'-' * 11}|{'-' * 9}|{'-' * 13}|--------|",
        ]
    for mode in modes:
        for v in mode.variants:
            ratio = statistics.median(v.ratios)
            spread = f"{min(v.ratios):.2f}-{max(v.ratios):.2f}" if v.role != "raw" else ""
            target = ""
            if v.role == "store":
                target = "ok" if ratio >= args.append_target else "MISSED"
            elif v.role == "ref":
                target = "(info)"
            lines.append(
                f"| {mode.name:<22} | {v.name:<22} | {statistics.median(v.rates):>9,.0f} |"
                f" {ratio:>6.2f}x | {spread:<11} | {target:<6} |"
            )
    if catch_ups:
        lines += [
            "",
            f"load for catch-up (append_many x1000): {load_rate:,.0f} events/s",
            "",
            f"| {'catch-up batch_size':<19} | {'events':>8} | {'seconds':>7} | {'events/s':>9}"
            " | target |",
            f"|{'-' * 21}|{'-' * 10}|{'-' * 9}|{'-' * 11}|--------|",
        ]
    for c in catch_ups:
        ok = "ok" if c.rate >= args.catchup_target else "MISSED"
        lines.append(
            f"| {c.batch_size:<19} | {c.events:>8,} | {c.seconds:>7.2f} | {c.rate:>9,.0f}"
            f" | {ok:<6} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    name = f"spool_bench_{secrets.token_hex(4)}"
    started = time.perf_counter()
    created: list[str] = []
    sample = new_event()
    print(
        f"event: data {len(msgspec.json.encode(sample.event))} B,"
        f" metadata {len(msgspec.json.encode(sample.metadata))} B"
    )
    try:
        conn = await asyncpg.connect(asyncpg_url(args.database_url))
        try:
            server = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        modes: list[Mode] = []
        if not args.skip_append:
            created.append(f"{name}_append")
            url = await create_database(args.database_url, created[-1])
            await migrate(url)
            print(f"append benchmark in {created[-1]}", flush=True)
            modes = await bench_append(url, args)
        load_rate, catch_ups = 0.0, list[CatchUp]()
        if not args.skip_catchup:
            created.append(f"{name}_catchup")
            url = await create_database(args.database_url, created[-1])
            await migrate(url)
            print(f"catch-up benchmark in {created[-1]}", flush=True)
            load_rate, catch_ups = await bench_catch_up(url, args)
        print()
        print(summary(modes, load_rate, catch_ups, args, server))
        print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    finally:
        for db in created:
            await drop_database(args.database_url, db)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per append mode")
    p.add_argument("--single-events", type=int, default=500, help="events/round, 1/tx 1 conn")
    p.add_argument("--concurrent-events", type=int, default=1600, help="events/round, 1/tx tasks")
    p.add_argument("--concurrency", type=int, default=16, help="tasks (and pool size)")
    p.add_argument("--batch-events", type=int, default=10000, help="events/round, batched")
    p.add_argument("--batch-size", type=int, default=100, help="events per batched transaction")
    p.add_argument("--catchup-events", type=int, default=200_000, help="jobs to catch up on")
    p.add_argument(
        "--catchup-batch", type=int, nargs="+", default=[1000, 5000], help="runner batch sizes"
    )
    p.add_argument(
        "--catchup-reuse-pool",
        action="store_true",
        help="keep one runner pool across batch sizes (shows the generic-plan trap)",
    )
    p.add_argument("--append-target", type=float, default=0.7, help="store/raw target ratio")
    p.add_argument("--catchup-target", type=float, default=20_000, help="catch-up events/s")
    p.add_argument("--skip-append", action="store_true")
    p.add_argument("--skip-catchup", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
