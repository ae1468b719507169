"""Every table Spool owns, as SQLAlchemy Core metadata; Alembic migrations mirror these."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.domain import job, viewer

metadata = sa.MetaData()


class Xid8(sa.types.UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id: the commit-order key of the log."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# The append-only log. `tx` orders subscribers: see docs/architecture.md, "Global order: (tx,
# position)". Partitioned by RANGE on stream_id, a partition per heartbeat day (migration 0011,
# adapters/event_partitions).
events = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("stream_id", sa.Text(collation="C"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.SmallInteger, nullable=False),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column(
        "recorded_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
    ),
    sa.Column("tx", Xid8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
    sa.UniqueConstraint("stream_id", "version", name="events_stream_version_key"),
    sa.Index("events_tx_position_idx", "tx", "position"),
    sa.Index("events_position_idx", "position"),
    postgresql_partition_by="RANGE (stream_id)",
)

# One row per projection or process manager: how far it has read the log.
checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("tx", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
)

# Projection tables. A projection owns its tables: they can be rebuilt aside and swapped in.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_hash", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, nullable=False, unique=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("hint", sa.Text, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Written one way (domain.account.scope_text); `admin` above is "admin" in it.
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("replaced_by", sa.Text),
)

# Not a projection and not the log: when each key was last used (telemetry, written at most once
# a minute a key by api.auth), so a rebuild of `api_keys` keeps it.
api_key_use = sa.Table(
    "api_key_use",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("version", sa.Integer, nullable=False),
    # The whole folded JobState, so the row is exactly the fold of the stream.
    sa.Column("state", pg.JSONB, nullable=False),
    # The shape `state` was written in: every row the projection writes takes the default,
    # which a migration moves with domain.job.AGGREGATE.snapshot_version (adapters/job_store.py).
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(job.AGGREGATE.snapshot_version)),
    ),
    sa.Index("jobs_account_created_idx", "account_id", sa.text("created_at DESC"), "job_id"),
    sa.Index("jobs_batch_idx", "batch_id", postgresql_where=sa.text("batch_id IS NOT NULL")),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("ip", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False, server_default="worker"),
    sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("capabilities", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("concurrency", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
    sa.Column("last_heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("downloading", sa.Integer, nullable=False, server_default="0"),
    sa.Column("muxing", sa.Integer, nullable=False, server_default="0"),
    sa.Column("uploading", sa.Integer, nullable=False, server_default="0"),
    sa.Column("running", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("usage", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("heartbeats", sa.BigInteger, nullable=False, server_default="0"),
    # Set by NodeRemoved: the node is hidden until it registers again (NodeStarted).
    sa.Column("removed_at", sa.DateTime(timezone=True)),
    sa.Index("nodes_last_heartbeat_idx", "last_heartbeat_at"),
)

# The cluster's config (domain.cluster_config): one row per section, the fold of `config`.
cluster_config = sa.Table(
    "cluster_config",
    metadata,
    sa.Column("section", sa.Text, primary_key=True),
    sa.Column("settings", pg.JSONB, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Per UTC minute: the sum of heartbeats' CPU and memory use, for utilisation over time windows.
usage_minutes = sa.Table(
    "usage_minutes",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cpu_percent_sum", sa.Float, nullable=False, server_default="0"),
    sa.Column("memory_percent_sum", sa.Float, nullable=False, server_default="0"),
)

# Not a projection and not the log: each account's data key, wrapped (adapters.secret_box).
account_keys = sa.Table(
    "account_keys",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.Column("destroyed_at", sa.DateTime(timezone=True)),
)

# Per account and UTC day: job activity and bytes moved. Storage held is uploaded minus deleted.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_deleted", sa.BigInteger, nullable=False, server_default="0"),
)

# Scheduled tasks (domain.task): one row per task, its folded state plus the columns that
# lists, the scheduler and `/metrics` filter and aggregate on.
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("task_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("priority_rank", sa.Integer, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("requirements", pg.JSONB, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("device_id", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("timeout_seconds", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("result", pg.JSONB),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("assigned_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("execution_time_seconds", sa.Float(precision=53)),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", pg.JSONB, nullable=False),
    sa.Index("tasks_status_rank_idx", "status", sa.text("priority_rank DESC"), "created_at"),
    sa.Index("tasks_account_created_idx", "account_id", sa.text("created_at DESC"), "task_id"),
    sa.Index("tasks_device_status_idx", "device_id", "status"),
)

# Live viewers (domain.viewer): one row per connected viewer, deleted at ViewerDisconnected (the
# history stays in the log). Stats rewrite a row every few seconds, so no index covers a column
# they change: updates stay HOT, and the fill factor leaves them room on the page.
viewers = sa.Table(
    "viewers",
    metadata,
    sa.Column("viewer_id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("harness_type", sa.Text, nullable=False),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Column("application_id", sa.Text, nullable=False),
    sa.Column("stream_key", sa.Text, nullable=False),
    sa.Column("remote_address", sa.Text, nullable=False),
    sa.Column("device_type", sa.Text, nullable=False),
    sa.Column("os_name", sa.Text, nullable=False),
    sa.Column("browser_name", sa.Text, nullable=False),
    sa.Column("country_code", sa.Text, nullable=False),
    sa.Column("country_name", sa.Text, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),  # Unix ms, the seed's startTime
    sa.Column("in_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("out_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("in_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("out_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("health_score", sa.Integer, nullable=False, server_default="0"),
    sa.Column("health_grade", sa.Text, nullable=False, server_default="No Data"),
    sa.Column("bitrate", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("measured", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # The shape the row holds, as for `jobs` (domain.viewer.AGGREGATE.snapshot_version).
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(viewer.AGGREGATE.snapshot_version)),
    ),
    postgresql_with={"fillfactor": 80},
)

# The viewer list's index: one row per live viewer and search term (`''` for every viewer, then
# its lower-cased id, stream key, address, country code and country name). Every list query,
# searched or not, is then a range of one narrow index in the list's order, which an index-only
# scan walks from either end. Rows are only inserted and deleted, never updated.
viewer_terms = sa.Table(
    "viewer_terms",
    metadata,
    sa.Column("term", sa.Text, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("viewer_id", sa.Text, nullable=False),
    sa.Column("harness_type", sa.Text, nullable=False),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Index(
        "viewer_terms_order_idx", "term", sa.text("started_at DESC"), "viewer_id", unique=True
    ),
    sa.Index(
        "viewer_terms_harness_idx", "term", "harness_type", sa.text("started_at DESC"), "viewer_id"
    ),
    sa.Index(
        "viewer_terms_viewers_idx",
        "term",
        sa.text("started_at DESC"),
        "viewer_id",
        postgresql_where=sa.text("NOT system"),
    ),
)

# Live viewers per term and harness type, kept in the same transaction as `viewer_terms`, so a
# list's totalItems is a sum of at most ten rows however many viewers match.
viewer_term_counts = sa.Table(
    "viewer_term_counts",
    metadata,
    sa.Column("term", sa.Text, primary_key=True),
    sa.Column("harness_type", sa.Text, primary_key=True),
    sa.Column("live", sa.BigInteger, nullable=False),
)

# Live viewers per term, harness type and span of start times (an hour, and a minute), so a deep
# page finds the minute where it begins by summing a few hundred rows instead of walking the
# list index from its end: OFFSET then only skips within that minute.
viewer_term_spans = sa.Table(
    "viewer_term_spans",
    metadata,
    sa.Column("term", sa.Text, primary_key=True),
    sa.Column("width", sa.BigInteger, primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("harness_type", sa.Text, primary_key=True),
    sa.Column("live", sa.BigInteger, nullable=False),
)

VIEWER_SPAN_WIDTHS: tuple[int, ...] = (3_600_000, 60_000)
"""The spans of start times (ms) in `viewer_term_spans`: hours to find the hour, then minutes."""

# Reporting (the `reporting` views read these; see adapters/reporting.py and docs/reporting.md).

# One row per attempt of a stage: (job, run, stage, attempt), when and where it ran, how it ended.
job_stages = sa.Table(
    "job_stages",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.Text),  # completed | failed | cancelled; NULL while it runs
    sa.Column("work_ms", sa.BigInteger),  # the worker's own measure of a completed attempt
    sa.Column("bytes", sa.BigInteger),
    sa.Column("reason", sa.Text),
    sa.Index("job_stages_finished_idx", "finished_at"),
)

# Per UTC minute, cluster-wide: job events counted on the minute each was recorded.
job_minutes = sa.Table(
    "job_minutes",
    metadata,
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
)

# Per node and UTC minute: its heartbeats rolled up. Sums are exact (numeric), so a rebuild in
# other batches gives the same rows; the table outlives the heartbeat events it was made from.
node_minutes = sa.Table(
    "node_minutes",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("cpu_percent_sum", sa.Numeric, nullable=False),
    sa.Column("cpu_percent_max", sa.Float(precision=53), nullable=False),
    sa.Column("memory_used_sum", sa.Numeric, nullable=False),
    sa.Column("memory_total_sum", sa.Numeric, nullable=False),
    sa.Column("memory_percent_max", sa.Float(precision=53), nullable=False),
    sa.Column("downloading_max", sa.Integer, nullable=False),
    sa.Column("muxing_max", sa.Integer, nullable=False),
    sa.Column("uploading_max", sa.Integer, nullable=False),
    sa.Index("node_minutes_minute_idx", "minute"),
)

# One row per batch (domain.batch): its folded state and what its jobs add up to
# (`domain.batch.summarize`), kept by the jobs projection. `status` is the status shown,
# `stream_status` the batch stream's own.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("source_url", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("job_ids", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("stream_status", sa.Text, nullable=False),
    sa.Column("jobs_pending", sa.Integer, nullable=False),
    sa.Column("jobs_processing", sa.Integer, nullable=False),
    sa.Column("jobs_completed", sa.Integer, nullable=False),
    sa.Column("jobs_failed", sa.Integer, nullable=False),
    sa.Column("jobs_cancelled", sa.Integer, nullable=False),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False),
    sa.Column("last_finished_at", sa.DateTime(timezone=True)),
    sa.Index("batches_account_created_idx", "account_id", sa.text("created_at DESC")),
)
