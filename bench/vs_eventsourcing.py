"""Spool's event store against the `eventsourcing` library's PostgreSQL recorder, side by side.

Both write and read the same events (a 300-byte `JobCreated` with 186 bytes of metadata) on the
same PostgreSQL server, in one database the script creates and drops:

* Spool: `adapters.event_store.EventStore` over an asyncpg pool (`adapters.database.create_pool`);
* eventsourcing: `PostgresApplicationRecorder` (the recorder an eventsourcing `Application` uses:
  stream rows plus a gap-free, commit-ordered notification log, the same guarantees Spool's
  `(tx, position)` order gives subscribers) over psycopg 3 and its pool, the library's defaults
  otherwise (uuid originator ids).

Each side pays for its own encoding and decoding: Spool's store encodes and decodes with msgspec
itself; the eventsourcing side gets the same msgspec encoder/decoders applied around its calls
(its recorder stores and returns opaque bytes). Modes, every variant of a mode run back to back
in each round, the order rotated; ratio = median over rounds of Spool's rate / theirs:

* append 1 event/tx, 1 writer: a new stream per event, one after another;
* append 1 event/tx, 16 writers: the same from 16 asyncio tasks (Spool) / 16 threads (theirs,
  a sync library), each side with a 16-connection pool;
* append 100 events/tx: one new stream of 100 events per call;
* read a stream: 100-event streams read whole and decoded;
* read the log: the global order in pages of 1,000 (`read_all` / `select_notifications`).

Targets (issue 10): Spool >= 2x on append and on read.

    pip install -e '.[bench]'
    python -m bench.vs_eventsourcing                       # about a minute
    python -m bench.vs_eventsourcing --rounds 3 --single-events 200
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from bench.arguments import add_database_url
from bench.event_store import new_event
from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import ORIGIN, EventStore, checkpoint_of
from spool.domain.events import Metadata, NewEvent
from spool.domain.job import JobCreated

TOPIC = "spool.domain.job:JobCreated"


class Envelope(msgspec.Struct):
    """What the eventsourcing side stores as a row's state: the event and its metadata."""

    data: JobCreated
    metadata: Metadata


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Envelope).decode


def stored(originator: uuid.UUID, version: int, e: NewEvent) -> StoredEvent:
    """The eventsourcing row for `e`, encoded as Spool encodes it."""
    assert isinstance(e.event, JobCreated)
    return StoredEvent(originator, version, TOPIC, _encode(Envelope(e.event, e.metadata)))


@dataclass
class Variant:
    name: str
    run: Callable[[], Any]
    """Runs one round's work; returns how many events it handled."""
    rates: list[float] = field(default_factory=list)


@dataclass
class Mode:
    name: str
    spool: Variant
    theirs: Variant

    def ratios(self) -> list[float]:
        return [s / t for s, t in zip(self.spool.rates, self.theirs.rates, strict=True)]


class Sides:
    """Both stores open on one database, and the work of each mode for each side."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: EventStore, recorder: Any) -> None:
        self.loop = loop
        self.store = store
        self.recorder: PostgresApplicationRecorder = recorder
        self.threads = ThreadPoolExecutor(16)
        self.spool_streams: list[str] = []
        self.their_streams: list[uuid.UUID] = []

    def _sync(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # -- appends -----------------------------------------------------------------------------

    def spool_single(self, n: int, writers: int) -> int:
        events = [new_event() for _ in range(n)]

        async def writer(share: Sequence[NewEvent]) -> None:
            for e in share:
                await self.store.append(f"job-{uuid.uuid4()}", [e], 0)

        async def go() -> None:
            await asyncio.gather(*(writer(events[i::writers]) for i in range(writers)))

        self._sync(go())
        return n

    def their_single(self, n: int, writers: int) -> int:
        events = [new_event() for _ in range(n)]

        def writer(share: Sequence[NewEvent]) -> None:
            for e in share:
                self.recorder.insert_events([stored(uuid.uuid4(), 1, e)])

        if writers == 1:
            writer(events)
        else:
            list(self.threads.map(writer, [events[i::writers] for i in range(writers)]))
        return n

    def spool_batch(self, calls: int, size: int) -> int:
        async def go() -> None:
            for _ in range(calls):
                sid = f"job-{uuid.uuid4()}"
                await self.store.append(sid, [new_event() for _ in range(size)], 0)
                self.spool_streams.append(sid)

        self._sync(go())
        return calls * size

    def their_batch(self, calls: int, size: int) -> int:
        for _ in range(calls):
            origin = uuid.uuid4()
            self.recorder.insert_events(
                [stored(origin, v, new_event()) for v in range(1, size + 1)]
            )
            self.their_streams.append(origin)
        return calls * size

    # -- reads -------------------------------------------------------------------------------

    def spool_read_streams(self, streams: int) -> int:
        async def go() -> int:
            n = 0
            for sid in self.spool_streams[:streams]:
                n += len(await self.store.read_stream(sid))
            return n

        n: int = self._sync(go())
        return n

    def their_read_streams(self, streams: int) -> int:
        n = 0
        for origin in self.their_streams[:streams]:
            n += len([_decode(s.state) for s in self.recorder.select_events(origin)])
        return n

    def spool_read_log(self, limit: int) -> int:
        async def go() -> int:
            n, after = 0, ORIGIN
            while n < limit:
                page = await self.store.read_all(after, 1000)
                if not page:
                    break
                n += len(page)
                after = checkpoint_of(page[-1])
            return n

        n: int = self._sync(go())
        return n

    def their_read_log(self, limit: int) -> int:
        n, start = 0, 1
        while n < limit:
            page = self.recorder.select_notifications(start, 1000)
            if not page:
                break
            n += len([_decode(p.state) for p in page])
            start = page[-1].id + 1
        return n


def timed(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


def modes(s: Sides, args: argparse.Namespace) -> list[Mode]:
    b, size = args.batch_calls, args.batch_size
    return [
        Mode(
            "append 1 event/tx, 1 writer",
            Variant("spool", lambda: s.spool_single(args.single_events, 1)),
            Variant("eventsourcing", lambda: s.their_single(args.single_events, 1)),
        ),
        Mode(
            f"append 1 event/tx, {args.writers} writers",
            Variant("spool", lambda: s.spool_single(args.concurrent_events, args.writers)),
            Variant("eventsourcing", lambda: s.their_single(args.concurrent_events, args.writers)),
        ),
        Mode(
            f"append {size} events/tx",
            Variant("spool", lambda: s.spool_batch(b, size)),
            Variant("eventsourcing", lambda: s.their_batch(b, size)),
        ),
        Mode(
            f"read a stream ({size} events)",
            Variant("spool", lambda: s.spool_read_streams(args.read_streams)),
            Variant("eventsourcing", lambda: s.their_read_streams(args.read_streams)),
        ),
        Mode(
            "read the log (pages of 1,000)",
            Variant("spool", lambda: s.spool_read_log(args.read_log)),
            Variant("eventsourcing", lambda: s.their_read_log(args.read_log)),
        ),
    ]


def main(args: argparse.Namespace) -> None:
    name = f"spool_bench_{secrets.token_hex(4)}_vs_es"
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(create_database(args.database_url, name))
    datastore: PostgresDatastore | None = None
    pool = None
    try:
        loop.run_until_complete(migrate(url))
        pool = loop.run_until_complete(
            create_pool(url, min_size=args.writers, max_size=args.writers)
        )
        where = urlsplit(args.database_url)
        datastore = PostgresDatastore(
            dbname=name,
            host=where.hostname or "127.0.0.1",
            port=where.port or 5432,
            user=where.username or "postgres",
            password=where.password or "",
            pool_size=args.writers,
        )
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        sides = Sides(loop, EventStore(pool), recorder)
        all_modes = modes(sides, args)
        # Warm up: connections, prepared statements, and something for the reads to read.
        sides.spool_batch(args.batch_calls, args.batch_size)
        sides.their_batch(args.batch_calls, args.batch_size)
        for mode in all_modes[:2]:
            for v in (mode.spool, mode.theirs):
                v.run()
        for r in range(args.rounds):
            for mode in all_modes:
                pair = [mode.spool, mode.theirs]
                for v in pair[r % 2 :] + pair[: r % 2]:
                    v.rates.append(timed(v.run))
                print(
                    f"  round {r + 1}/{args.rounds}  {mode.name}: spool "
                    f"{mode.spool.rates[-1]:,.0f}  eventsourcing {mode.theirs.rates[-1]:,.0f} ev/s",
                    flush=True,
                )
        print()
        print(summary(all_modes, args))
    finally:
        if datastore is not None:
            datastore.close()
        if pool is not None:
            loop.run_until_complete(pool.close())
        loop.run_until_complete(drop_database(args.database_url, name))
        loop.close()


def summary(all_modes: Sequence[Mode], args: argparse.Namespace) -> str:
    lines = [
        "| mode | Spool ev/s | eventsourcing ev/s | Spool / eventsourcing (range) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for m in all_modes:
        ratios = m.ratios()
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= args.target else "MISSED"
        lines.append(
            f"| {m.name} | {statistics.median(m.spool.rates):,.0f} "
            f"| {statistics.median(m.theirs.rates):,.0f} "
            f"| {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| >= {args.target:g}x {verdict} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--single-events", type=int, default=300, help="events/round, 1 writer")
    p.add_argument("--concurrent-events", type=int, default=1600, help="events/round, N writers")
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--batch-calls", type=int, default=50, help="appends/round of --batch-size")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--read-streams", type=int, default=50, help="streams read whole per round")
    p.add_argument("--read-log", type=int, default=20_000, help="log events read per round")
    p.add_argument("--target", type=float, default=2.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
