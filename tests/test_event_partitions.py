"""The partitioned event log: migrated in place, heartbeats by day, everything else together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from spool.adapters.database import create_database, drop_database, migrate
from spool.adapters.event_store import EventStore
from spool.domain import node
from tests.cluster_api_helpers import append_heartbeats

TODAY = datetime.now(UTC).date()
ALL_COLUMNS = (
    "SELECT position, tx::text, stream_id, version, type, schema_version, data::text, "
    "metadata::text, recorded_at FROM events ORDER BY position"
)


async def test_migration_0011_keeps_every_event_where_it_was(server_url: str) -> None:
    name = f"spool_test_partitions_{datetime.now(UTC):%H%M%S%f}"
    url = await create_database(server_url, name)
    try:
        await migrate(url, "0009")
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        await conn.execute(
            """
            INSERT INTO events (stream_id, version, type, schema_version, data, metadata)
            SELECT 'job-' || (i / 4), i % 4 + 1, 'JobCreated', 1, '{"a": 1}',
                   jsonb_build_object('correlation_id', 'req-' || (i / 4))
            FROM generate_series(0, 399) i
            """
        )
        before = await conn.fetch(ALL_COLUMNS)
        await conn.close()

        await migrate(url)

        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        assert await conn.fetch(ALL_COLUMNS) == before  # positions, tx ids, times: all kept
        appended = await conn.fetchval(
            "INSERT INTO events (stream_id, version, type, schema_version, data, metadata) "
            "VALUES ('job-new', 1, 'JobCreated', 1, '{}', '{}') RETURNING position"
        )
        assert appended > before[-1]["position"]
        correlated = await conn.fetch(
            "SELECT stream_id FROM events WHERE (metadata->>'correlation_id') = 'req-7'"
        )
        assert {r["stream_id"] for r in correlated} == {"job-7"}
        await conn.close()
    finally:
        await drop_database(server_url, name)


async def test_heartbeats_land_in_their_days_partition(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    day = TODAY - timedelta(days=400)
    await append_heartbeats(store, "partition-probe", day, 3)
    where = await pool.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS t FROM events WHERE stream_id = $1",
        node.heartbeat_stream_id("partition-probe", day),
    )
    assert [r["t"] for r in where] == [f"events_heartbeat_{day:%Y%m%d}"]
    jobs_and_nodes = await pool.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS t FROM events "
        "WHERE NOT starts_with(stream_id, 'heartbeat-')"
    )
    assert {r["t"] for r in jobs_and_nodes} <= {
        "events_before_heartbeats",
        "events_after_heartbeats",
    }
