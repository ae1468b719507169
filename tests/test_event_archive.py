"""`spool events archive` / `restore`: old heartbeat days out to files and back, losing nothing."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from spool.adapters.database import create_pool
from spool.adapters.event_store import EventStore
from spool.adapters.queue import connect
from spool.adapters.read_models import all_projections
from spool.adapters.settings import Settings
from spool.adapters.storage import LocalStorage
from spool.api.app import create_app
from spool.cli import main
from spool.domain import node
from spool.domain.events import Metadata, NewEvent
from spool.keys import issue
from spool.reactors.projection import ProjectionRunner
from tests.cluster_api_helpers import append_heartbeats, node_started
from tests.conftest import api_client

TODAY = datetime.now(UTC).date()
OLD_DAYS = [TODAY - timedelta(days=3), TODAY - timedelta(days=2)]
ALL_COLUMNS = (
    "SELECT position, tx::text, stream_id, version, type, schema_version, data::text, "
    "metadata::text, recorded_at FROM events ORDER BY position"
)


async def _spool(database_url: str, *args: str) -> Result:
    """`spool ...` in a thread of its own (its own event loop), on this test's database."""
    command = [*args, "--database-url", database_url]
    return await asyncio.to_thread(CliRunner().invoke, main, command, env={"SPOOL_API_KEY": None})


@pytest.fixture
async def own_pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database_url)
    yield pool
    await pool.close()


async def _rows(pool: asyncpg.Pool, table: str, key: str) -> list[Any]:
    return list(await pool.fetch(f"SELECT * FROM {table} ORDER BY {key}"))


async def test_archive_and_restore_lose_nothing_and_verify_passes_after_each(
    fresh_database_url: str, own_pool: asyncpg.Pool, redis_url: str, tmp_path: Path
) -> None:
    url = fresh_database_url
    store = EventStore(own_pool)
    runner = ProjectionRunner(store, all_projections())
    redis = await connect(redis_url)
    app = create_app(
        pool=own_pool,
        store=store,
        settings=Settings(database_url=url, redis_url=redis_url, secret_key="test-secret-key"),
        storage=LocalStorage(tmp_path / "storage"),
        redis=redis,
    )
    issued = await issue(store, name="archivist", admin=True)
    await runner.wait_until("api_keys", issued.at)
    headers = {"x-api-key": issued.key}
    async with api_client(app) as client:
        created = await client.post(
            "/jobs", json={"url": "http://media.test/a.mp4"}, headers=headers
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        meta = Metadata(actor="node:n1", node_id="n1")
        await store.append(node.stream_id("n1"), [NewEvent(node_started("n1"), meta)], None)
        for day in OLD_DAYS:
            for node_id in ("n1", "n2"):
                await append_heartbeats(store, node_id, day, 40)
        await append_heartbeats(store, "n1", TODAY, 5)
        await runner.settle()
        log_before = await own_pool.fetch(ALL_COLUMNS)
        nodes_before = await _rows(own_pool, "nodes", "node_id")
        minutes_before = await _rows(own_pool, "usage_minutes", "minute")
        job_before = (await client.get(f"/jobs/{job_id}", headers=headers)).json()

        archived = await _spool(
            url, "events", "archive", "--before", str(TODAY - timedelta(days=1)),
            "--dir", str(tmp_path / "archive"),
        )  # fmt: skip

        assert archived.exit_code == 0, archived.output
        files = sorted((tmp_path / "archive").iterdir())
        assert [f.name for f in files] == [f"events-heartbeat-{d}.jsonl.gz" for d in OLD_DAYS]
        assert f"{OLD_DAYS[0]}: 80 events" in archived.output
        left = await own_pool.fetch(ALL_COLUMNS)
        assert [r for r in log_before if node.heartbeat_day(r["stream_id"]) not in OLD_DAYS] == left
        assert await own_pool.fetchval("SELECT count(*) FROM event_archives") == 2
        verified = await _spool(url, "replay", "verify")
        assert verified.exit_code == 0, verified.output
        # The job's own history predates the archive date and is untouched.
        job_now = await client.get(f"/jobs/{job_id}", headers=headers)
        assert job_now.status_code == 200 and job_now.json() == job_before
        history = await client.get(f"/jobs/{job_id}/events", headers=headers)
        assert [e["type"] for e in history.json()["events"]] == ["JobCreated"]
        # Projections fed by heartbeats keep their figures; a rebuild that would lose them
        # is refused with the command that brings the days back.
        assert await _rows(own_pool, "nodes", "node_id") == nodes_before
        assert await _rows(own_pool, "usage_minutes", "minute") == minutes_before
        refused = await _spool(url, "projections", "rebuild", "nodes")
        assert refused.exit_code == 1
        assert "archived" in refused.output and f"spool events restore {files[0]}" in refused.output
        assert await _rows(own_pool, "nodes", "node_id") == nodes_before

        # Bad files are refused and change nothing.
        corrupt = tmp_path / "corrupt.jsonl.gz"
        corrupt.write_bytes(files[0].read_bytes()[:-20])
        tampered = tmp_path / f"events-heartbeat-{OLD_DAYS[0]}-edited.jsonl.gz"
        lines = gzip.decompress(files[0].read_bytes()).splitlines()
        tampered.write_bytes(gzip.compress(b"\n".join(lines[1:]) + b"\n"))
        garbage = tmp_path / "garbage.jsonl.gz"
        garbage.write_bytes(gzip.compress(b'{"position": "x"}\n'))
        for bad, why in [
            (tmp_path / "missing.jsonl.gz", "cannot read"),
            (corrupt, "not a complete gzip file"),
            (garbage, "line 1: not an archived event"),
            (tampered, f"is not the archive recorded for {OLD_DAYS[0]}"),
        ]:
            failed = await _spool(url, "events", "restore", str(bad))
            assert failed.exit_code == 1, failed.output
            assert why in failed.output
        assert await own_pool.fetch(ALL_COLUMNS) == left

        for f in files:
            restored = await _spool(url, "events", "restore", str(f))
            assert restored.exit_code == 0, restored.output
            assert "80 events restored" in restored.output
        assert await own_pool.fetch(ALL_COLUMNS) == log_before  # every column, every position
        again = await _spool(url, "events", "restore", str(files[0]))
        assert again.exit_code == 0 and "already in the log, nothing restored" in again.output
        assert await own_pool.fetch(ALL_COLUMNS) == log_before
        verified = await _spool(url, "replay", "verify")
        assert verified.exit_code == 0, verified.output

        rebuilt = await _spool(url, "projections", "rebuild", "nodes")
        assert rebuilt.exit_code == 0, rebuilt.output
        assert await _rows(own_pool, "nodes", "node_id") == nodes_before
    await redis.aclose()


@pytest.mark.parametrize(
    ("before", "why"),
    [
        (str(TODAY + timedelta(days=30)), "is not before today"),
        (str(TODAY), "is not before today"),
        ("last tuesday", "is not a date"),
    ],
)
async def test_archive_refuses_a_date_not_in_the_past(
    database_url: str, pool: asyncpg.Pool, before: str, why: str
) -> None:
    count = await pool.fetchval("SELECT count(*) FROM events")
    refused = await _spool(database_url, "events", "archive", "--before", before)
    assert refused.exit_code == 2
    assert why in refused.output
    assert await pool.fetchval("SELECT count(*) FROM event_archives") == 0
    assert await pool.fetchval("SELECT count(*) FROM events") >= count


async def test_archive_waits_for_every_projection_that_reads_heartbeats(
    fresh_database_url: str, own_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    store = EventStore(own_pool)
    await append_heartbeats(store, "n1", OLD_DAYS[0], 10)
    log_before = await own_pool.fetch(ALL_COLUMNS)

    refused = await _spool(
        fresh_database_url, "events", "archive", "--before", str(OLD_DAYS[1]),
        "--dir", str(tmp_path),
    )  # fmt: skip

    assert refused.exit_code == 1
    assert f"heartbeats of {OLD_DAYS[0]} are not yet read by " in refused.output
    assert "nodes" in refused.output and "usage_minutes" in refused.output
    assert await own_pool.fetch(ALL_COLUMNS) == log_before
    assert list(tmp_path.iterdir()) == []
