"""Benchmark the viewer list (`GET /api/cluster/viewers`) at 1,000,000 live viewers.

The fill COPYs rows straight into the projection's tables (`viewers`, `viewer_terms`,
`viewer_term_counts`, `viewer_term_spans`), built with the projection's own `terms()`. It
bypasses the event log on purpose: what is measured is the read path, and appending and
projecting 1M connects would take far longer than the reads themselves while proving nothing
about them (the append and catch-up rates have their own benchmark, bench/event_store.py).
The counts are computed from the same rows, so totals are what the projection would hold.

The mix: harness types weighted like a busy cluster (mostly viewers, a few percent system
sessions), 20 countries (Zipf-like: the first ones dominate), 2,000 stream keys (a few very
popular), random IPv4 addresses, start times spread over the last 6 hours.

For each case (filter combination x page 1, the middle page, the last page) the query function
the endpoint uses (`adapters.read_models.viewers.list_viewers`) is timed `--runs` times after a
warm-up; then each case runs once more through the real HTTP endpoint (in-process ASGI, admin
key, full auth and JSON) and a few are timed there too. Reports p50/p99 per case. Target: p99
< 20 ms.

The script creates its own database `spool_bench_<hex>_viewers`, migrates it and drops it.

    python bench/viewers.py                                  # 1M rows, ~4 min to fill
    python bench/viewers.py --viewers 100000 --runs 50       # quicker
    python bench/viewers.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from spool.adapters.database import create_database, create_pool, drop_database, migrate
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.adapters.read_models.viewers import VIEWER_SPAN_WIDTHS, ViewerQuery, list_viewers, terms
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.domain import viewer
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner

HARNESS_WEIGHTS = {
    "STORM_MSE_VIEWER": 30,
    "STORM_HLS_VIEWER": 20,
    "GENERIC_HLS_VIEWER": 20,
    "GENERIC_DASH_VIEWER": 8,
    "GENERIC_PROGRESSIVE_VIEWER": 5,
    "RTMP_VIEWER": 5,
    "CLUSTER_DATA_CLIENT": 5,
    "RTMP_PUSH": 2,
    "TRANSCODER": 3,
    "FILE_WRITER": 2,
}
COUNTRIES = [
    ("US", "United States"), ("PL", "Poland"), ("DE", "Germany"), ("GB", "United Kingdom"),
    ("FR", "France"), ("BR", "Brazil"), ("IN", "India"), ("JP", "Japan"), ("CA", "Canada"),
    ("ES", "Spain"), ("IT", "Italy"), ("NL", "Netherlands"), ("SE", "Sweden"),
    ("AU", "Australia"), ("MX", "Mexico"), ("KR", "South Korea"), ("TR", "Turkey"),
    ("AR", "Argentina"), ("ZA", "South Africa"), ("NO", "Norway"),
]  # fmt: skip
DEVICES = [("DESKTOP", "Windows 10/11", "Chrome"), ("MOBILE", "iOS", "Safari"),
           ("MOBILE", "Android", "Chrome"), ("TABLET", "iOS", "Safari"),
           ("DESKTOP", "macOS", "Safari")]  # fmt: skip

VIEWER_COLUMNS = [
    "viewer_id", "state", "harness_type", "system", "application_id", "stream_key",
    "remote_address", "device_type", "os_name", "browser_name", "country_code", "country_name",
    "started_at", "in_bandwidth", "out_bandwidth", "in_total_bytes", "out_total_bytes",
    "health_score", "health_grade", "bitrate", "measured", "node_id", "last_seen_at", "version",
]  # fmt: skip


def fill_rows(n: int, seed: int = 7) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """`n` viewer rows and their list-index rows, deterministic for a seed."""
    rng = random.Random(seed)
    harness = list(HARNESS_WEIGHTS)
    weights = list(HARNESS_WEIGHTS.values())
    country_weights = [1 / (i + 1) for i in range(len(COUNTRIES))]
    key_weights = [1 / (i + 1) ** 1.1 for i in range(2000)]
    now_ms = int(time.time() * 1000)
    seen = datetime.now(UTC)
    viewers_rows: list[tuple[Any, ...]] = []
    term_rows: list[tuple[Any, ...]] = []
    harness_draw = rng.choices(harness, weights, k=n)
    country_draw = rng.choices(COUNTRIES, country_weights, k=n)
    key_draw = rng.choices(range(2000), key_weights, k=n)
    for i in range(n):
        h = harness_draw[i]
        code, name = country_draw[i]
        key = f"stream-{key_draw[i]}"
        address = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"  # noqa: E501
        vid = viewer.new_viewer_id()
        started = now_ms - rng.randint(0, 6 * 3600 * 1000)
        device, os_name, browser = DEVICES[i % len(DEVICES)]
        bitrate = 2_500_000
        out_bw = rng.randint(100_000, 400_000)
        score, grade = viewer.health(h, bitrate, 0, out_bw, True)
        system = h in viewer.SYSTEM_HARNESS_TYPES
        viewers_rows.append(
            (vid, "PLAYING", h, system, "c_bench", key, address, device, os_name, browser, code,
             name, started, 0, out_bw, 0, out_bw * 60, score, grade, bitrate, True, "bench",
             seen, 10)
        )  # fmt: skip
        for term in terms(vid, key, address, code, name):
            term_rows.append((term, started, vid, h, system))
    return viewers_rows, term_rows


async def fill(pool: asyncpg.Pool, n: int) -> None:
    """COPY `n` viewers into the projection's tables, then build the counts and VACUUM."""
    began = time.perf_counter()
    rows, term_rows = fill_rows(n)
    print(f"generated {len(rows):,} viewers / {len(term_rows):,} term rows "
          f"in {time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
    async with pool.acquire() as conn:
        # Indexes are dropped for the load and built after: the same end state, much faster.
        await conn.execute(
            "DROP INDEX viewer_terms_order_idx, viewer_terms_harness_idx, viewer_terms_viewers_idx"
        )
        t = time.perf_counter()
        await conn.copy_records_to_table("viewers", records=rows, columns=VIEWER_COLUMNS)
        await conn.copy_records_to_table(
            "viewer_terms",
            records=term_rows,
            columns=["term", "started_at", "viewer_id", "harness_type", "system"],
        )
        print(f"copied in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            "CREATE UNIQUE INDEX viewer_terms_order_idx ON viewer_terms "
            "(term, started_at DESC, viewer_id)"
        )
        await conn.execute(
            "CREATE INDEX viewer_terms_harness_idx ON viewer_terms "
            "(term, harness_type, started_at DESC, viewer_id)"
        )
        await conn.execute(
            "CREATE INDEX viewer_terms_viewers_idx ON viewer_terms "
            "(term, started_at DESC, viewer_id) WHERE NOT system"
        )
        await conn.execute(
            "INSERT INTO viewer_term_counts (term, harness_type, live) "
            "SELECT term, harness_type, count(*) FROM viewer_terms GROUP BY term, harness_type"
        )
        for width in VIEWER_SPAN_WIDTHS:
            await conn.execute(
                "INSERT INTO viewer_term_spans (term, width, start, harness_type, live) "
                "SELECT term, $1::int8, started_at - started_at % $1::int8, harness_type, "
                "count(*) FROM viewer_terms GROUP BY 1, 2, 3, 4",
                width,
            )
        print(f"indexed and counted in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        # Index-only scans need the visibility map: a live table gets it from autovacuum.
        await conn.execute("VACUUM ANALYZE viewers")
        await conn.execute("VACUUM ANALYZE viewer_terms")
        await conn.execute("VACUUM ANALYZE viewer_term_counts")
        await conn.execute("VACUUM ANALYZE viewer_term_spans")
        print(f"vacuumed in {time.perf_counter() - t:.1f} s", flush=True)


def cases(total_for: dict[str, int]) -> list[tuple[str, ViewerQuery]]:
    """Every filter combination at page 1, the middle page and the last page (10 rows)."""
    filters: list[tuple[str, dict[str, Any]]] = [
        ("all", {}),
        ("systemClients=true", {"system_clients": True}),
        ("systemClients=false", {"system_clients": False}),
        ("harnessType=STORM_HLS_VIEWER", {"harness_type": "STORM_HLS_VIEWER"}),
        ("harnessType=TRANSCODER", {"harness_type": "TRANSCODER"}),
        ("harness=RTMP_PUSH&system=false", {"harness_type": "RTMP_PUSH", "system_clients": False}),
        ("search=us (country)", {"search": "us"}),
        ("search=stream-0 (key)", {"search": "stream-0"}),
        ("search=poland&system=false", {"search": "poland", "system_clients": False}),
        ("search=us&harness=STORM_MSE", {"search": "us", "harness_type": "STORM_MSE_VIEWER"}),
        ("search=<ip>", {"search": total_for["ip"]}),
        ("search=<id>", {"search": total_for["id"]}),
    ]
    out = []
    for name, f in filters:
        out.append((name, f))
    return [(n, ViewerQuery(**f)) for n, f in out]  # type: ignore[arg-type]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    name = f"spool_bench_{uuid.uuid4().hex[:8]}_viewers"
    url = await create_database(args.database_url, name)
    try:
        await migrate(url)
        pool = await create_pool(url, min_size=2, max_size=8)
        try:
            await fill(pool, args.viewers)
            sample = await pool.fetchrow(
                "SELECT viewer_id, remote_address FROM viewers ORDER BY viewer_id LIMIT 1"
            )
            extra = {"ip": sample["remote_address"], "id": sample["viewer_id"]}
            print(f"\n{'case':34} {'page':>7} {'total':>9} {'p50 ms':>7} {'p99 ms':>7}")
            worst = 0.0
            results: list[tuple[str, str, int, float, float]] = []
            for case_name, q in cases(extra):
                total = (await list_viewers(pool, q)).total
                pages = max(1, -(-total // q.rows_per_page))
                for label, page in (("first", 1), ("middle", (pages + 1) // 2), ("last", pages)):
                    qq = q._replace(page=page)
                    for _ in range(5):
                        await list_viewers(pool, qq)
                    times = []
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        await list_viewers(pool, qq)
                        times.append((time.perf_counter() - t) * 1000)
                    p50, p99 = statistics.median(times), pct(times, 99)
                    worst = max(worst, p99)
                    results.append((case_name, label, total, p50, p99))
                    print(f"{case_name:34} {label:>7} {total:>9,} {p50:7.2f} {p99:7.2f}",
                          flush=True)  # fmt: skip
            print(f"\nworst p99 of the query function: {worst:.2f} ms (target < 20 ms)")
            await through_http(pool, url, args)
        finally:
            await pool.close()
    finally:
        if not args.keep:
            await drop_database(args.database_url, name)


async def through_http(pool: asyncpg.Pool, url: str, args: argparse.Namespace) -> None:
    """The real endpoint: auth, parsing, the query, JSON; in-process ASGI, no network."""
    store = EventStore(pool)
    runner = ProjectionRunner(store, all_projections())
    issued = await issue(store, name="bench", admin=True)
    await runner.wait_until("api_keys", issued.at)
    app = create_app(
        pool=pool,
        store=store,
        settings=Settings(database_url=url, secret_key="bench", rate_limit=0),
        storage=LocalStorage(Path(tempfile.mkdtemp(prefix="spool-bench-"))),
    )
    headers = {"Authorization": f"Bearer {issued.key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    ) as client:
        total = (await client.get("/api/cluster/viewers", headers=headers)).json()["data"][
            "totalItems"
        ]
        last = -(-total // 10)
        print("\nthrough HTTP (in-process ASGI), 10 rows a page:")
        for label, params in (
            ("all, first page", {}),
            ("all, middle page", {"page": (last + 1) // 2}),
            ("all, last page", {"page": last}),
            ("systemClients=false, middle", {"systemClients": "false", "page": last // 2}),
            ("search=us, middle", {"search": "us", "page": last // 6}),
            ("harnessType=STORM_MSE_VIEWER, last", {"harnessType": "STORM_MSE_VIEWER",
                                                    "page": last * 3 // 10}),
        ):  # fmt: skip
            times, server = [], []
            for i in range(args.http_runs + 3):
                t = time.perf_counter()
                r = await client.get("/api/cluster/viewers", params=params, headers=headers)
                elapsed = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                if i >= 3:
                    times.append(elapsed)
                    server.append(r.json()["meta"]["executionTime"])
            print(f"  {label:38} p50 {statistics.median(times):6.2f} ms  "
                  f"p99 {pct(times, 99):6.2f} ms  (executionTime p99 {pct(server, 99):.0f} ms)",
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SPOOL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--viewers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--http-runs", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    logging.disable(logging.INFO)  # the API's request log would drown the table
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
