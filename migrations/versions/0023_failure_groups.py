"""Why jobs fail: `jobs.failure_group`, the group of a Failed job's failure
(domain/failure_groups.py), with an index per account, so `GET /jobs/failures` is one GROUP BY.

The projection writes the column from the folded state (`JobState.failure_group`); the rows of
jobs that failed before this revision get theirs here, computed by the same function.

Revision ID: 0023_failure_groups
Revises: 0022_job_query
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from spool.domain import failure_groups

revision = "0023_failure_groups"
down_revision = "0022_job_query"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("failure_group", sa.Text))
    bind = op.get_bind()
    failed = bind.execute(
        sa.text(
            "SELECT job_id, coalesce(state->>'error_type', 'error'), state->>'error' FROM jobs "
            "WHERE status = 'Failed' AND state ? 'error'"
        )
    ).all()
    if failed:
        bind.execute(
            sa.text("UPDATE jobs SET failure_group = :group WHERE job_id = :job_id"),
            [
                {"job_id": job_id, "group": failure_groups.group_id(error_type, error)}
                for job_id, error_type, error in failed
            ],
        )
    op.create_index(
        "jobs_account_failure_idx",
        "jobs",
        ["account_id", "failure_group"],
        postgresql_where=sa.text("failure_group IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_account_failure_idx", table_name="jobs")
    op.drop_column("jobs", "failure_group")
