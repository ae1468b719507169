"""Finding jobs: `jobs.host` (the source URL's host) and `jobs.labels` (the user's tags), both
generated from the row's own values, so rows written before this revision have them at once and
every later write, replay and rebuild keeps them; indexes for the `JobQuery` filters
(adapters/read_models/jobs.py, `where`).

`q` (text search) is ILIKE over one account's rows, without pg_trgm: the embedded server need
not ship the extension.

`operations`: each bulk action's folded state (adapters/read_models/operations.py), the
`operations` projection's table.

Revision ID: 0022_job_query
Revises: 0021_live_progress
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0022_job_query"
down_revision = "0021_live_progress"
branch_labels = None
depends_on = None

# adapters/read_models/jobs.py HOST_OF_URL as of this revision (a later change is a migration).
HOST_OF_URL = (
    "lower(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\\[[^]]*\\]|[^:/?#]+)'))"
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("host", sa.Text, sa.Computed(HOST_OF_URL, persisted=True)))
    op.add_column(
        "jobs", sa.Column("labels", pg.JSONB, sa.Computed("state -> 'labels'", persisted=True))
    )
    op.create_index("jobs_account_host_idx", "jobs", ["account_id", "host"])
    op.create_index(
        "jobs_labels_idx",
        "jobs",
        ["labels"],
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
    )
    op.create_table(
        "operations",
        sa.Column("operation_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", pg.JSONB, nullable=False),
    )
    op.create_index(
        "operations_running_idx",
        "operations",
        ["account_id", "created_at"],
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_table("operations")
    op.drop_index("jobs_labels_idx", table_name="jobs")
    op.drop_index("jobs_account_host_idx", table_name="jobs")
    op.drop_column("jobs", "labels")
    op.drop_column("jobs", "host")
