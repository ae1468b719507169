"""Reporting: the tables of the job_stages, job_minutes, node_minutes and batches projections,
and the `reporting` schema of views over the projection tables (adapters/reporting.py).

The new projections start with no checkpoint, so on an existing database the runner fills
their tables from the whole log on its first pass.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from spool.adapters import reporting

# reporting.nodes as this revision made it, until 0019 added each node's work state (the current
# definition reads columns that only 0019 adds).
NODES_VIEW = """CREATE OR REPLACE VIEW reporting.nodes AS
SELECT n.node_id::text AS node_id,
       n.hostname::text AS hostname,
       n.ip::text AS ip,
       n.role::text AS role,
       n.tags::text[] AS tags,
       (n.capabilities->>'cpu_count')::integer AS cpu_count,
       (n.capabilities->>'memory_total_gb')::double precision AS memory_total_gb,
       (n.capabilities->>'storage_total_gb')::double precision AS storage_total_gb,
       coalesce((n.capabilities->>'has_gpu')::boolean, false)::boolean AS has_gpu,
       n.started_at::timestamptz AS started_at,
       n.stopped_at::timestamptz AS stopped_at,
       n.removed_at::timestamptz AS removed_at,
       n.last_heartbeat_at::timestamptz AS last_heartbeat_at,
       (n.stopped_at IS NULL AND n.removed_at IS NULL AND coalesce(n.last_heartbeat_at > now()
        - make_interval(secs => coalesce((SELECT (c.settings->>'timeout')::int
          FROM public.cluster_config c WHERE c.section = 'heartbeat'), 30)), false))::boolean
        AS online,
       n.downloading::integer AS downloading,
       n.muxing::integer AS muxing,
       n.uploading::integer AS uploading,
       n.heartbeats::bigint AS heartbeats,
       (n.usage->>'cpu_percent')::double precision AS cpu_percent,
       (n.usage->>'memory_used')::bigint AS memory_used_bytes,
       (n.usage->>'memory_total')::bigint AS memory_total_bytes,
       (n.usage->>'disk_free')::bigint AS disk_free_bytes,
       (n.usage->>'disk_total')::bigint AS disk_total_bytes
FROM public.nodes n"""

# reporting.batches as this revision made it: it counted the jobs itself, until 0014 moved the
# counts into the `batches` table (adapters/reporting.py holds the current definition).
BATCHES_VIEW = """CREATE OR REPLACE VIEW reporting.batches AS
SELECT b.batch_id::text AS batch_id,
       b.account_id::text AS account_id,
       b.kind::text AS kind,
       b.status::text AS status,
       b.source_url::text AS source_url,
       b.title::text AS title,
       b.created_at::timestamptz AS created_at,
       b.started_at::timestamptz AS started_at,
       b.updated_at::timestamptz AS updated_at,
       cardinality(b.job_ids)::integer AS jobs_total,
       coalesce(c.pending, 0)::integer AS jobs_pending,
       coalesce(c.processing, 0)::integer AS jobs_processing,
       coalesce(c.completed, 0)::integer AS jobs_completed,
       coalesce(c.failed, 0)::integer AS jobs_failed,
       coalesce(c.cancelled, 0)::integer AS jobs_cancelled,
       coalesce(c.bytes_uploaded, 0)::bigint AS bytes_uploaded,
       c.last_finished_at::timestamptz AS last_finished_at
FROM public.batches b
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.status = 'Pending') AS pending,
           count(*) FILTER (WHERE j.status = 'Processing') AS processing,
           count(*) FILTER (WHERE j.status = 'Completed') AS completed,
           count(*) FILTER (WHERE j.status = 'Failed') AS failed,
           count(*) FILTER (WHERE j.status = 'Cancelled') AS cancelled,
           sum((j.state->>'file_size')::bigint) FILTER (WHERE j.status = 'Completed')
               AS bytes_uploaded,
           max(j.finished_at) AS last_finished_at
    FROM public.jobs j WHERE j.batch_id = b.batch_id
) c ON true
"""

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_stages",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("run", sa.Integer, primary_key=True),
        sa.Column("stage", sa.Text, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.Text),
        sa.Column("work_ms", sa.BigInteger),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("reason", sa.Text),
    )
    op.create_index("job_stages_finished_idx", "job_stages", ["finished_at"])
    op.create_table(
        "job_minutes",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "node_minutes",
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
    )
    op.create_index("node_minutes_minute_idx", "node_minutes", ["minute"])
    op.create_table(
        "batches",
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
    )
    op.create_index(
        "batches_account_created_idx", "batches", ["account_id", sa.text("created_at DESC")]
    )
    older = ("batches", "nodes")
    for statement in reporting.statements(views=[v for v in reporting.VIEWS if v not in older]):
        op.execute(statement)
    op.execute(BATCHES_VIEW)
    op.execute(NODES_VIEW)


def downgrade() -> None:
    for statement in reporting.drop_statements():
        op.execute(statement)
    op.execute(f"DROP SCHEMA IF EXISTS {reporting.SCHEMA}")
    for table in ("batches", "node_minutes", "job_minutes", "job_stages"):
        op.drop_table(table)
