"""The `reporting` schema: every documented view exists as documented, and every example query in
docs/reporting.md gives the numbers a user expects from a known history.

The history is written into the real event log with the times it happened (a week of jobs on two
nodes, recorded in the past), then the real projections follow it. A last test runs a job through
the real pipeline and finds it in the views.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from alembic import command

from spool.adapters.database import (
    alembic_config,
    create_database,
    create_pool,
    drop_database,
    migrate,
)
from spool.adapters.event_store import EventStore
from spool.adapters.read_models import all_projections
from spool.adapters.read_models import jobs as job_rows
from spool.adapters.read_models import nodes as node_rows
from spool.adapters.read_models.state_projection import Field, StateProjection, StateRows
from spool.domain import batch, job, node
from spool.domain.events import Event, Metadata
from spool.reactors.projection import ProjectionRunner
from spool.reactors.verify import verify
from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "reporting.md"
GIB = 1024**3


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class History:
    """Writes events into the log as if recorded at given times."""

    pool: asyncpg.Pool
    versions: dict[str, int] = field(default_factory=dict)

    async def record(self, stream_id: str, at: str, *events: Event) -> None:
        for ev in events:
            version = self.versions[stream_id] = self.versions.get(stream_id, 0) + 1
            await self.pool.execute(
                "INSERT INTO events (stream_id, version, type, schema_version, data, metadata, "
                "recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                stream_id,
                version,
                type(ev).__name__,
                type(ev).schema_version,
                msgspec.json.encode(ev),
                msgspec.json.encode(Metadata(actor="test")),
                _at(at),
            )

    async def job(self, job_id: str, at: str, *events: Event) -> None:
        await self.record(job.stream_id(job_id), at, *events)

    async def beat(self, node_id: str, at: str, cpu: float, memory_gib: int, **counts: int) -> None:
        await self.record(
            node.stream_id(node_id),
            at,
            node.NodeHeartbeat(
                node_id=node_id,
                hostname=f"{node_id}.example",
                ip="10.0.0.1",
                downloading=counts.get("downloading", 0),
                muxing=counts.get("muxing", 0),
                uploading=counts.get("uploading", 0),
                running=[],
                usage=node.Usage(
                    cpu_percent=cpu,
                    memory_used=memory_gib * GIB,
                    memory_total=8 * GIB,
                    disk_free=100 * GIB,
                    disk_total=200 * GIB,
                ),
            ),
        )


def _media(size: int) -> job.MediaFile:
    return job.MediaFile(path="/tmp/x.mp4", kind="video", size=size)


def _created(job_id: str, account: str, batch_id: str | None = None) -> job.JobCreated:
    return job.JobCreated(
        job_id=job_id, account_id=account, url=f"https://example.com/{job_id}", batch_id=batch_id
    )


def _started(stage: job.Stage, node_id: str, attempt: int = 1) -> job.StageStarted:
    return job.StageStarted(stage=stage, run=1, attempt=attempt, node_id=node_id)


def _downloaded(node_id: str, size: int, seconds: float, attempt: int = 1) -> job.DownloadCompleted:
    return job.DownloadCompleted(
        run=1, attempt=attempt, node_id=node_id, files=[_media(size)], bytes=size, seconds=seconds
    )


def _muxed(node_id: str, size: int, seconds: float) -> job.MuxCompleted:
    return job.MuxCompleted(run=1, attempt=1, node_id=node_id, output=_media(size), seconds=seconds)


def _uploaded(job_id: str, node_id: str, size: int, seconds: float) -> job.JobCompleted:
    return job.JobCompleted(
        run=1, attempt=1, node_id=node_id, key=f"{job_id}.mp4", storage="s3", size=size,
        seconds=seconds,
    )  # fmt: skip


def _node_started(node_id: str) -> node.NodeStarted:
    return node.NodeStarted(
        node_id=node_id,
        hostname=f"{node_id}.example",
        ip="10.0.0.1",
        role="worker",
        tags=["gpu-less"],
        capabilities=node.Capabilities(cpu_count=4, memory_total_gb=8.0, storage_total_gb=200.0),
        concurrency={"download": 2},
    )


async def write_history(h: History) -> None:
    """Two users, two nodes, six jobs in November and December 2026 (all times UTC).

    alice: j1 completes on node-a; j2's first download fails (503) and its retry completes on
    node-b; j1's file is deleted later. bob: j3 fails for good; j4 is cancelled while muxing;
    batch b1 holds j5 (completes on node-a) and j6 (never started).
    """
    await h.record("node-node-a", "2026-11-02T09:59:00", _node_started("node-a"))
    await h.record("node-node-b", "2026-11-02T10:29:00", _node_started("node-b"))

    await h.job("j1", "2026-11-02T10:00:00", _created("j1", "alice"))
    await h.beat("node-a", "2026-11-02T10:00:00", 10.1, 2, downloading=1)
    await h.job("j1", "2026-11-02T10:00:01", _started("download", "node-a"))
    await h.job("j1", "2026-11-02T10:00:05", _downloaded("node-a", 1000, 3.9))
    await h.job("j1", "2026-11-02T10:00:06", _started("mux", "node-a"))
    await h.job("j1", "2026-11-02T10:00:08", _muxed("node-a", 900, 1.9))
    await h.job("j1", "2026-11-02T10:00:09", _started("upload", "node-a"))
    await h.job("j1", "2026-11-02T10:00:10", _uploaded("j1", "node-a", 900, 0.9))
    await h.beat("node-a", "2026-11-02T10:00:20", 20.2, 4, downloading=1)
    await h.beat("node-a", "2026-11-02T10:00:40", 30.3, 6)
    await h.beat("node-a", "2026-11-02T10:01:10", 50.5, 2, muxing=1)

    await h.job("j2", "2026-11-02T10:30:00", _created("j2", "alice"))
    await h.beat("node-b", "2026-11-02T10:30:00", 5.5, 1, downloading=1)
    await h.job("j2", "2026-11-02T10:30:01", _started("download", "node-b"))
    await h.job(
        "j2",
        "2026-11-02T10:30:03",
        job.StageFailed(
            stage="download", run=1, attempt=1, node_id="node-b",
            reason="HTTP Error 503: Service Unavailable", retry_stage="download", retry_attempt=2,
        ),
    )  # fmt: skip
    await h.job("j2", "2026-11-02T10:30:05", _started("download", "node-b", attempt=2))
    await h.beat("node-b", "2026-11-02T10:30:30", 6.5, 1, downloading=1)
    await h.job("j2", "2026-11-02T10:30:15", _downloaded("node-b", 2000, 9.8, attempt=2))
    await h.job("j2", "2026-11-02T10:30:16", _started("mux", "node-b"))
    await h.job("j2", "2026-11-02T10:30:20", _muxed("node-b", 1800, 3.9))
    await h.job("j2", "2026-11-02T10:30:21", _started("upload", "node-b"))
    await h.job("j2", "2026-11-02T10:30:25", _uploaded("j2", "node-b", 1800, 3.8))

    await h.job("j3", "2026-11-02T11:15:00", _created("j3", "bob"))
    await h.job("j3", "2026-11-02T11:15:01", _started("download", "node-a"))
    await h.job(
        "j3",
        "2026-11-02T11:15:02",
        job.StageFailed(
            stage="download", run=1, attempt=1, node_id="node-a", reason="Unsupported URL"
        ),
        job.JobFailed(run=1, stage="download", reason="Unsupported URL"),
    )
    await h.job("j1", "2026-11-20T08:00:00", job.FileDeleted(key="j1.mp4"))

    await h.job("j4", "2026-12-01T09:00:00", _created("j4", "bob"))
    await h.job("j4", "2026-12-01T09:00:01", _started("download", "node-b"))
    await h.job("j4", "2026-12-01T09:00:03", _downloaded("node-b", 5000, 1.9))
    await h.job("j4", "2026-12-01T09:00:04", _started("mux", "node-b"))
    await h.job("j4", "2026-12-01T09:00:05", job.JobCancelled(run=1, stage="mux"))
    await h.beat("node-b", "2026-12-01T09:00:02", 70.0, 4, downloading=1)

    await h.record(
        batch.stream_id("b1"),
        "2026-12-01T09:10:00",
        batch.BatchCreated(batch_id="b1", account_id="bob", kind="bulk", job_ids=["j5", "j6"]),
    )
    await h.job("j5", "2026-12-01T09:10:00", _created("j5", "bob", batch_id="b1"))
    await h.job("j6", "2026-12-01T09:10:00", _created("j6", "bob", batch_id="b1"))
    await h.job("j5", "2026-12-01T09:10:01", _started("download", "node-a"))
    await h.job("j5", "2026-12-01T09:10:03", _downloaded("node-a", 3000, 1.9))
    await h.job("j5", "2026-12-01T09:10:04", _started("mux", "node-a"))
    await h.job("j5", "2026-12-01T09:10:06", _muxed("node-a", 2500, 1.9))
    await h.job("j5", "2026-12-01T09:10:07", _started("upload", "node-a"))
    await h.job("j5", "2026-12-01T09:10:08", _uploaded("j5", "node-a", 2500, 0.95))
    await h.record("node-node-b", "2026-12-01T10:00:00", node.NodeStopped(node_id="node-b"))


@contextlib.asynccontextmanager
async def _history(url: str) -> AsyncIterator[tuple[asyncpg.Pool, ProjectionRunner]]:
    pool = await create_pool(url, max_size=5)
    try:
        await write_history(History(pool))
        runner = ProjectionRunner(EventStore(pool), all_projections())
        await runner.settle()
        yield pool, runner
    finally:
        await pool.close()


@pytest.fixture(scope="module")
async def history(server_url: str) -> AsyncIterator[tuple[asyncpg.Pool, ProjectionRunner]]:
    """A database holding the history above, every projection caught up: for reading only."""
    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    try:
        await migrate(url)
        async with _history(url) as ready:
            yield ready
    finally:
        await drop_database(server_url, name)


@pytest.fixture
async def own_history(
    fresh_database_url: str,
) -> AsyncIterator[tuple[asyncpg.Pool, ProjectionRunner]]:
    """The same history in a database of this test's own, which it may change."""
    async with _history(fresh_database_url) as ready:
        yield ready


# -- the document ------------------------------------------------------------------------------


def documented_columns() -> dict[str, list[tuple[str, str]]]:
    """Each `### reporting.<view>` section's table: [(column, type)] in the documented order."""
    views: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in DOC.read_text().splitlines():
        if heading := re.fullmatch(r"### reporting\.(\w+)", line):
            current = views.setdefault(heading[1], [])
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := re.match(r"\| `(\w+)` \| `([^`]+)` \|", line)):
            current.append((row[1], row[2]))
    return views


def documented_examples() -> dict[str, str]:
    """Each ```sql block under its `### ` heading (every block in the document has one)."""
    text = DOC.read_text()
    examples: dict[str, str] = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        for sql in re.findall(r"```sql\n(.*?)```", body, flags=re.S):
            assert title not in examples, f"two examples under {title!r}"
            examples[title] = sql
    assert len(examples) == text.count("```sql"), "a ```sql block outside a ### section"
    return examples


# information_schema's names for the types the document writes shortly.
_TYPE_NAMES = {"timestamptz": "timestamp with time zone", "text[]": "ARRAY:_text"}


async def test_every_view_is_documented_with_its_columns_and_types_in_order(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    rows = await pool.fetch(
        "SELECT table_name, column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = 'reporting' ORDER BY table_name, ordinal_position"
    )
    actual: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        kind = f"ARRAY:{r['udt_name']}" if r["data_type"] == "ARRAY" else r["data_type"]
        actual.setdefault(r["table_name"], []).append((r["column_name"], kind))
    documented = {
        view: [(c, _TYPE_NAMES.get(t, t)) for c, t in columns]
        for view, columns in documented_columns().items()
    }
    views = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'reporting' "
        "AND table_type = 'VIEW'"
    )
    assert sorted(r[0] for r in views) == sorted(documented)
    expected = {"jobs", "job_stages", "job_minutes", "batches", "usage_daily", "nodes",
                "node_minutes", "tasks", "viewers"}  # fmt: skip
    assert expected <= documented.keys()
    for view in documented:
        assert actual[view] == documented[view], view


async def test_each_documented_example_gives_the_numbers_of_the_history(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    examples = documented_examples()
    expected: dict[str, list[tuple[Any, ...]]] = {
        "Throughput per hour": [
            (_at("2026-11-02T10:00:00"), 2, 0, 0, 2700),
            (_at("2026-11-02T11:00:00"), 0, 1, 0, 0),
            (_at("2026-12-01T09:00:00"), 1, 0, 1, 2500),
        ],
        "Failure reasons": [
            ("download", "HTTP Error 503: Service Unavailable", 1, 0),
            ("download", "Unsupported URL", 1, 1),
        ],
        # Completed attempts: node-a downloads took 4 s (j1) and 2 s (j5), node-b's 10 s (j2's
        # retry) and 2 s (j4, later cancelled while muxing: its mux has no completed row).
        "p95 stage time per node": [
            ("node-a", "download", 2, 3900.0),
            ("node-a", "mux", 2, 2000.0),
            ("node-a", "upload", 2, 1000.0),
            ("node-b", "download", 2, 9600.0),
            ("node-b", "mux", 1, 4000.0),
            ("node-b", "upload", 1, 4000.0),
        ],
        "Bytes per user per month": [
            ("alice", date(2026, 11, 1), 3000, 2700, 1800),
            ("bob", date(2026, 11, 1), 0, 0, 0),
            ("bob", date(2026, 12, 1), 8000, 2500, 2500),
        ],
        # node-a's four beats in hour 10 average (10.1 + 20.2 + 30.3 + 50.5) / 4 = 27.775;
        # node-b's December beat lies outside the day asked for.
        "Node load per hour, from the heartbeat rollup": [
            ("node-a", _at("2026-11-02T10:00:00"), 4, Decimal("27.78"), 50.5, 75.0, 1),
            ("node-b", _at("2026-11-02T10:00:00"), 2, Decimal("6.00"), 6.5, 12.5, 1),
        ],
        "Batches still in progress": [("b1", "bob", 2, 1, 1)],
    }
    assert sorted(examples) == sorted(expected), "each example in the doc has its expectation"
    for title, sql in examples.items():
        got = [tuple(r.values()) for r in await pool.fetch(sql)]
        assert got == expected[title], title


async def test_a_stage_attempt_is_one_row_with_its_node_times_and_outcome(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    rows = await pool.fetch(
        "SELECT job_id, account_id, stage, attempt, node_id, duration_ms, work_ms, outcome, "
        "bytes, reason FROM reporting.job_stages WHERE job_id IN ('j2', 'j4') "
        "ORDER BY job_id, started_at"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("j2", "alice", "download", 1, "node-b", 2000, None, "failed", None,
         "HTTP Error 503: Service Unavailable"),
        ("j2", "alice", "download", 2, "node-b", 10000, 9800, "completed", 2000, None),
        ("j2", "alice", "mux", 1, "node-b", 4000, 3900, "completed", 1800, None),
        ("j2", "alice", "upload", 1, "node-b", 4000, 3800, "completed", 1800, None),
        ("j4", "bob", "download", 1, "node-b", 2000, 1900, "completed", 5000, None),
        ("j4", "bob", "mux", 1, "node-b", 1000, None, "cancelled", None, "cancelled by the user"),
    ]  # fmt: skip


async def test_jobs_batches_and_nodes_read_as_plain_columns(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    jobs = {
        r["job_id"]: r
        for r in await pool.fetch(
            "SELECT job_id, status, error, download_retries, file_size_bytes, file_deleted, "
            "queue_wait_ms, duration_ms, node_id, format FROM reporting.jobs"
        )
    }
    assert dict(jobs["j1"]) == {
        "job_id": "j1", "status": "Completed", "error": None, "download_retries": 0,
        "file_size_bytes": 900, "file_deleted": True, "queue_wait_ms": 1000,
        "duration_ms": 10000, "node_id": "node-a", "format": "mp4",
    }  # fmt: skip
    assert (jobs["j2"]["download_retries"], jobs["j2"]["duration_ms"]) == (1, 25000)
    assert (jobs["j3"]["status"], jobs["j3"]["error"]) == ("Failed", "Unsupported URL")
    assert (jobs["j6"]["status"], jobs["j6"]["queue_wait_ms"]) == ("Pending", None)

    b1 = await pool.fetchrow("SELECT * FROM reporting.batches WHERE batch_id = 'b1'")
    assert (b1["jobs_total"], b1["jobs_completed"], b1["jobs_pending"]) == (2, 1, 1)
    assert (b1["bytes_uploaded"], b1["last_finished_at"]) == (2500, _at("2026-12-01T09:10:08"))

    nodes = {r["node_id"]: r for r in await pool.fetch("SELECT * FROM reporting.nodes")}
    assert nodes["node-a"]["heartbeats"] == 4 and nodes["node-b"]["heartbeats"] == 3
    assert nodes["node-a"]["cpu_percent"] == 50.5
    assert nodes["node-b"]["stopped_at"] == _at("2026-12-01T10:00:00")
    assert not nodes["node-a"]["online"]  # its last heartbeat is weeks old
    assert (nodes["node-a"]["cpu_count"], nodes["node-a"]["tags"]) == (4, ["gpu-less"])


async def test_the_heartbeat_rollup_averages_exactly_per_node_and_minute(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    row = await pool.fetchrow(
        "SELECT samples, cpu_percent_sum, cpu_percent_avg, cpu_percent_max, memory_percent_avg, "
        "memory_percent_max, memory_used_bytes_avg, downloading_max, muxing_max "
        "FROM reporting.node_minutes WHERE node_id = 'node-a' AND minute = $1",
        _at("2026-11-02T10:00:00"),
    )
    # As floats, 10.1 + 20.2 + 30.3 is 60.599999999999994: the rollup sums exactly.
    assert dict(row) == {
        "samples": 3, "cpu_percent_sum": Decimal("60.6"), "cpu_percent_avg": 20.2,
        "cpu_percent_max": 30.3, "memory_percent_avg": 50.0, "memory_percent_max": 75.0,
        "memory_used_bytes_avg": 4 * GIB, "downloading_max": 1, "muxing_max": 0,
    }  # fmt: skip


async def test_a_rebuild_in_other_batches_gives_the_same_rows_and_the_views_survive_it(
    own_history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = own_history
    views = ("node_minutes", "job_stages", "job_minutes", "batches", "jobs", "usage_daily")
    before = {v: await pool.fetch(f"SELECT * FROM reporting.{v} ORDER BY 1, 2") for v in views}
    # A report of the user's own, built on a reporting view, must outlive the swaps.
    await pool.execute(
        "CREATE VIEW public.my_report AS SELECT status, count(*) AS n FROM reporting.jobs "
        "GROUP BY status"
    )
    small = ProjectionRunner(EventStore(pool), all_projections(), batch_size=2)
    for name in ("node_minutes", "job_stages", "job_minutes", "jobs", "usage"):  # jobs: batches
        await small.rebuild(name)
    mine = await pool.fetch("SELECT status, n FROM my_report ORDER BY status")
    assert [tuple(r.values()) for r in mine] == [
        ("Cancelled", 1), ("Completed", 3), ("Failed", 1), ("Pending", 1)
    ]  # fmt: skip
    tables = await pool.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'spool_rebuild'"
    )
    assert tables == 0
    after = {v: await pool.fetch(f"SELECT * FROM reporting.{v} ORDER BY 1, 2") for v in views}
    for v in views:
        assert [tuple(r.values()) for r in after[v]] == [tuple(r.values()) for r in before[v]], v
        assert after[v], v


async def test_replay_verify_finds_the_new_projections_equal_to_the_log(
    own_history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, runner = own_history
    found: list[Any] = []
    result = await verify(EventStore(pool), runner, found.append)
    assert found == [] and result.differences == 0
    assert result.checked["job_stages"] == 6 and result.checked["batch_rows"] == 1
    assert result.checked["job_minutes"] > 0

    await pool.execute(
        "UPDATE job_stages SET node_id = 'node-z' WHERE job_id = 'j1' AND stage = 'mux'"
    )
    await pool.execute("UPDATE job_minutes SET jobs_failed = 7 WHERE jobs_failed = 1")
    await pool.execute("UPDATE batches SET status = 'paused'")
    found.clear()
    result = await verify(EventStore(pool), runner, found.append)
    assert {(d.stream_id, d.column, d.projected, d.folded) for d in found} == {
        ("job-j1", "job_stages.1.mux.1.node_id", "node-z", "node-a"),
        ("job_minutes 2026-11-02T11:15:00+00:00", "jobs_failed", 7, 1),
        ("batch-b1", "status", "paused", "processing"),
    }


async def test_a_real_job_shows_in_the_views_stage_by_stage(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(media_server.url("clip.mp4"), filename="report")
    done = await cluster.wait(job_id, "Completed", "Failed", seconds=90)
    assert done["status"] == "Completed", done
    await cluster.stop_node()
    runner = ProjectionRunner(cluster.store, all_projections())
    await runner.settle()
    node_id = cluster.settings.node_id
    stages = await cluster.pool.fetch(
        "SELECT stage, attempt, node_id, outcome, duration_ms, work_ms, bytes "
        "FROM reporting.job_stages WHERE job_id = $1 ORDER BY started_at",
        job_id,
    )
    assert [(r["stage"], r["attempt"], r["node_id"], r["outcome"]) for r in stages] == [
        ("download", 1, node_id, "completed"),
        ("mux", 1, node_id, "completed"),
        ("upload", 1, node_id, "completed"),
    ]
    assert all(r["duration_ms"] >= 0 for r in stages)
    assert [r["work_ms"] for r in stages] == [
        done["download_duration_ms"],
        done["mux_duration_ms"],
        done["upload_duration_ms"],
    ]
    assert stages[-1]["bytes"] == done["file_size"]
    minutes = await cluster.pool.fetchrow(
        "SELECT sum(completed) AS completed, sum(bytes) AS uploaded FROM reporting.job_minutes"
    )
    assert (minutes["completed"], minutes["uploaded"]) == (1, done["file_size"])
    rollup = await cluster.pool.fetchval(
        "SELECT sum(samples) FROM reporting.node_minutes WHERE node_id = $1", node_id
    )
    beats = await cluster.pool.fetchval(
        "SELECT heartbeats FROM reporting.nodes WHERE node_id = $1", node_id
    )
    assert beats > 0 and rollup == beats


class _JobRowsOnly:
    """The jobs projection as revision 0013 had it: the `jobs` rows (no snapshot stamp, a
    column of 0016, nor failure group, 0023's), no batches."""

    name = "jobs"
    tables = (job_rows.jobs,)
    event_types = job.EVENT_TYPES
    rows = StateProjection(
        name="jobs",
        stream=job_rows.JOBS.stream,
        event_types=job.EVENT_TYPES,
        evolve=job.evolve,
        rows=StateRows(
            job_rows.jobs,
            Field("job_id", ("job_id",), fixed=True),
            [f for f in job_rows.ROWS.fields if f.column != "failure_group"],
            job.JobState,
        ),
    )

    async def apply(self, conn: asyncpg.Connection, events: Any) -> None:
        await self.rows.apply(conn, events)


async def test_migration_0014_refills_batches_so_a_finished_batch_reads_completed(
    server_url: str,
) -> None:
    """Before 0014 a batch whose jobs had all ended stayed `processing` in the report; after it
    (and back down, and up again) the report says what `GET /batch` says."""
    name = f"spool_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    try:
        await migrate(url, "0013")
        pool = await create_pool(url, max_size=5)
        try:
            h = History(pool)
            await write_history(h)
            await h.job("j6", "2026-12-01T09:20:00", job.JobCancelled(run=1, stage=None))
            await ProjectionRunner(EventStore(pool), [_JobRowsOnly()]).settle()
            # The row revision 0013's batches projection wrote, and its checkpoint.
            await pool.execute(
                "INSERT INTO batches (batch_id, account_id, kind, status, job_ids, created_at, "
                "started_at, updated_at, version) VALUES ('b1', 'bob', 'bulk', 'processing', "
                "'{j5,j6}', $1, $1, $1, 1)",
                _at("2026-12-01T09:10:00"),
            )
            await pool.execute(
                "INSERT INTO checkpoints (name, tx, position) "
                "SELECT 'batches', tx, position FROM checkpoints WHERE name = 'jobs'"
            )
            jobs_before = await pool.fetch("SELECT * FROM jobs ORDER BY job_id")

            checkpoint = "SELECT tx, position FROM checkpoints WHERE name = 'jobs'"
            jobs_at = await pool.fetchrow(checkpoint)
            await migrate(url)
            # Refilled by the migration itself: no event applied again, no catch-up needed.
            assert await pool.fetchrow(checkpoint) == jobs_at
            b1 = await pool.fetchrow("SELECT * FROM reporting.batches WHERE batch_id = 'b1'")
            assert (b1["status"], b1["jobs_completed"], b1["jobs_cancelled"]) == (
                "completed", 1, 1
            )  # fmt: skip
            assert (b1["jobs_pending"], b1["bytes_uploaded"]) == (0, 2500)
            runner = ProjectionRunner(EventStore(pool), all_projections())
            await runner.settle()
            # The columns 0013 had (later revisions add their own).
            then = ", ".join(jobs_before[0].keys())
            assert await pool.fetch(f"SELECT {then} FROM jobs ORDER BY job_id") == jobs_before
            found: list[Any] = []
            assert (await verify(EventStore(pool), runner, found.append)).differences == 0

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0013")
            back = await pool.fetchrow("SELECT * FROM reporting.batches WHERE batch_id = 'b1'")
            assert (back["status"], back["jobs_completed"], back["jobs_cancelled"]) == (
                "processing", 1, 1
            )  # fmt: skip
            await migrate(url)
            await runner.settle()
            again = await pool.fetchval(
                "SELECT status FROM reporting.batches WHERE batch_id = 'b1'"
            )
            assert again == "completed"
        finally:
            await pool.close()
    finally:
        await drop_database(server_url, name)


async def test_reporting_nodes_shows_the_state_the_devices_api_shows(
    history: tuple[asyncpg.Pool, ProjectionRunner],
) -> None:
    pool, _ = history
    at = _at("2026-12-01T10:00:00")
    combos = [
        (d, q, f) for d in (None, at) for q in (None, at) for f in (None, "free disk 1 B is low")
    ]
    rows = await pool.fetch(
        "SELECT *, "
        + node_rows.work_state_sql("n")
        + " AS state FROM unnest($1::timestamptz[], $2::timestamptz[], $3::text[]) "
        "AS n(draining_since, quarantined_since, disk_floor), "
        "LATERAL (SELECT 'units failed'::text AS quarantine_reason) r",
        [d for d, _, _ in combos],
        [q for _, q, _ in combos],
        [f for _, _, f in combos],
    )
    assert len(rows) == len(combos)
    assert {r["state"] for r in rows} == {"active", "draining", "quarantined", "disk_floor"}
    for r in rows:
        assert r["state"] == node_rows.work_of(r)[0], dict(r)
