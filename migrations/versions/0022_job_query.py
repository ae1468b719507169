"""Finding jobs: `jobs.host` (the source URL's host) and `jobs.labels` (the user's tags), both
generated from the row's own values, so rows written before this revision have them at once and
every later write, replay and rebuild keeps them; indexes for the `JobQuery` filters
(adapters/read_models/jobs.py, `where`).

`q` (text search) is ILIKE over one account's rows, without pg_trgm: the embedded server need
not ship the extension.

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


def downgrade() -> None:
    op.drop_index("jobs_labels_idx", table_name="jobs")
    op.drop_index("jobs_account_host_idx", table_name="jobs")
    op.drop_column("jobs", "labels")
    op.drop_column("jobs", "host")
