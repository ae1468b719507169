"""Print the plan of every query Spool runs on `events`, on a partitioned log of realistic shape.

Builds a database of its own (`spool_bench_<hex>_plans`, dropped at the end): `--jobs` job
streams of 5 events each (with correlation ids), and `--days` days of heartbeat partitions with
`--beats` heartbeats each from 3 nodes (`--unpartitioned`: the schema before 0011, heartbeats
in node streams). After ANALYZE, each query is PREPAREd and EXPLAINed with a generic plan (what
asyncpg's cached statements get after a few runs), and the script says for each whether a
non-empty partition of `events` is read by a sequential scan.

    python -m bench.event_plans --database-url postgresql://postgres@/postgres?host=...
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from datetime import date, timedelta

import asyncpg

from bench.arguments import add_database_url
from spool.adapters.database import asyncpg_url, create_database, drop_database, migrate
from spool.adapters.event_partitions import ensure_days

DAY0 = date(2026, 11, 1)

# (name, statement with $n, the parameters' types, sample values as SQL literals)
QUERIES: list[tuple[str, str, str]] = [
    (
        "append: stream head",
        "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1",
        "('job-00000000-0000-0000-0000-000000000042')",
    ),
    (
        "read_stream",
        "SELECT * FROM events WHERE stream_id = $1 AND version >= $2 "
        "AND ($3::bigint IS NULL OR position <= $3::bigint) ORDER BY version LIMIT $4",
        "('job-00000000-0000-0000-0000-000000000042', 1, NULL, NULL)",
    ),
    (
        "read_streams (as_of, verify)",
        "SELECT * FROM events WHERE stream_id = ANY($1::text[]) "
        "AND (tx, position) <= ($2::text::xid8, $3::bigint) ORDER BY stream_id, version",
        "(ARRAY['job-00000000-0000-0000-0000-000000000042'], '999999999', 999999999)",
    ),
    (
        "read_batch / read_all (subscribers)",
        "SELECT * FROM events WHERE (tx, position) > ($1::text::xid8, $2::bigint) "
        "AND tx < pg_snapshot_xmin(pg_current_snapshot()) "
        "AND ($4::text[] IS NULL OR type = ANY($4::text[])) "
        "ORDER BY events.tx, events.position LIMIT $3",
        "('0', 0, 1000, ARRAY['JobCreated'])",
    ),
    (
        "read_batch marker (last readable event)",
        "SELECT position, tx FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot()) "
        "ORDER BY events.tx DESC, events.position DESC LIMIT 1",
        "",
    ),
    (
        "read_correlated (trace, index of 0009)",
        "SELECT * FROM events WHERE position = ANY(ARRAY("
        "SELECT position FROM events WHERE (metadata->>'correlation_id') = ANY($1::text[]) "
        "AND (metadata->>'correlation_id') IS NOT NULL AND position > $2)) ORDER BY position",
        "(ARRAY['req-42'], 0)",
    ),
    ("metrics / health: head position", "SELECT coalesce(max(position), 0) FROM events", ""),
    (
        "health: scheduler lag (task streams)",
        "SELECT min(recorded_at) FROM events e WHERE e.position > $1 "
        "AND (e.tx, e.position) > ($2::text::xid8, $1) AND e.stream_id LIKE 'task-%'",
        "(0, '0')",
    ),
    (
        "verify: streams begun by a checkpoint",
        "SELECT stream_id FROM events WHERE version = 1 AND type = $1 "
        "AND (tx, position) <= ($2::text::xid8, $3::bigint) ORDER BY stream_id",
        "('JobCreated', '999999999', 999999999)",
    ),
    (
        "node: cancellations of running units",
        "SELECT r.stream_id FROM unnest($1::text[], $2::int[]) AS r(stream_id, v) "
        "WHERE (SELECT true FROM events e WHERE e.stream_id = r.stream_id "
        "AND e.version > r.v AND e.type = 'JobCancelled' LIMIT 1)",
        "(ARRAY['job-00000000-0000-0000-0000-000000000042'], ARRAY[2])",
    ),
    (
        "append_many / viewer store: heads of many streams",
        "SELECT s.stream_id, coalesce((SELECT max(version) FROM events e "
        "WHERE e.stream_id = s.stream_id), 0) FROM unnest($1::text[]) AS s(stream_id)",
        "(ARRAY['job-00000000-0000-0000-0000-000000000042', 'heartbeat-2026-11-02-node-1'])",
    ),
    (
        "usage projection: accounts of jobs",
        "SELECT e.stream_id, e.data->>'account_id' FROM unnest($1::text[]) AS t(stream_id) "
        "JOIN events e ON e.stream_id = t.stream_id AND e.version = 1 AND e.type = 'JobCreated'",
        "(ARRAY['job-00000000-0000-0000-0000-000000000042'])",
    ),
    (
        "restore: positions present",
        "SELECT count(*) FROM events WHERE position = ANY($1::bigint[])",
        "(ARRAY[5, 6, 7]::bigint[])",
    ),
]


async def fill(
    conn: asyncpg.Connection, jobs: int, days: int, beats: int, unpartitioned: bool
) -> None:
    await conn.execute(
        """
        INSERT INTO events (stream_id, version, type, schema_version, data, metadata)
        SELECT 'job-00000000-0000-0000-0000-' || lpad((i / 5)::text, 12, '0'), i % 5 + 1,
               (ARRAY['JobCreated','StageStarted','StageCompleted','StageStarted','JobCompleted'])
                   [i % 5 + 1],
               1, '{"x": 1}', jsonb_build_object('correlation_id', 'req-' || (i / 5))
        FROM generate_series(0, $1 * 5 - 1) i
        """,
        jobs,
    )
    for d in range(days):
        day = DAY0 + timedelta(days=d)
        await conn.execute(
            """
            INSERT INTO events (stream_id, version, type, schema_version, data, metadata)
            SELECT CASE WHEN $3 THEN 'node-' || (i % 3) || '-' || $1
                        ELSE 'heartbeat-' || $1 || '-node-' || (i % 3) END,
                   i / 3 + 1, 'NodeHeartbeat', 1,
                   '{"cpu": 1}', '{"actor": "node"}'
            FROM generate_series(0, $2 - 1) i
            """,
            day.isoformat(),
            beats,
            unpartitioned,
        )
    await conn.execute("ANALYZE events")


async def main(args: argparse.Namespace) -> None:
    name = f"spool_bench_{secrets.token_hex(4)}_plans"
    url = await create_database(args.database_url, name)
    try:
        await migrate(url, "0009" if args.unpartitioned else "head")
        conn = await asyncpg.connect(asyncpg_url(url))
        if not args.unpartitioned:
            pool = await asyncpg.create_pool(asyncpg_url(url), min_size=1, max_size=2)
            assert pool is not None
            await ensure_days(pool, [DAY0 + timedelta(days=d) for d in range(args.days)])
            await pool.close()
        await fill(conn, args.jobs, args.days, args.beats, args.unpartitioned)
        total = await conn.fetchval("SELECT count(*) FROM events")
        print(
            f"{total:,} events: {args.jobs:,} jobs x 5, {args.days} heartbeat days x "
            f"{args.beats:,}\n"
        )
        empty = {
            r[0]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'events'::regclass AND c.reltuples = 0"
            )
        }
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for i, (title, sql, values) in enumerate(QUERIES):
            await conn.execute(f"PREPARE q{i} AS {sql}")
            rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE q{i}{values}")
            plan = "\n".join("    " + r[0] for r in rows)
            seq = [
                line.strip()
                for line in plan.splitlines()
                if "Seq Scan on events" in line and line.split(" on ")[1].split()[0] not in empty
            ]
            verdict = "SEQ SCAN: " + "; ".join(seq) if seq else "indexes only"
            print(f"{title}: {verdict}\n{plan}\n")
        await conn.close()
    finally:
        await drop_database(args.database_url, name)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_database_url(p)
    p.add_argument("--jobs", type=int, default=40_000)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--beats", type=int, default=100_000, help="heartbeats a day")
    p.add_argument(
        "--unpartitioned",
        action="store_true",
        help="the log as before migration 0011 (heartbeats in node streams), to compare",
    )
    asyncio.run(main(p.parse_args()))
