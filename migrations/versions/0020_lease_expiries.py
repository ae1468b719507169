"""Attempts handed on because their node's lease expired (`job_stages.lease_expired`).

Set from `StageFailed.lease_expired` (domain/job.py), which the reconciler writes when it hands
on a unit whose lease ran out (domain/lease.py); `/metrics` counts them by stage
(`spool_lease_expiries_total`). Attempts failed before this revision were not judged by leases:
they keep `false`.

Revision ID: 0020_lease_expiries
Revises: 0019_node_health
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0020_lease_expiries"
down_revision = "0019_node_health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "job_stages",
        sa.Column("lease_expired", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "job_stages_lease_expired_idx",
        "job_stages",
        ["stage"],
        postgresql_where=sa.text("lease_expired"),
    )


def downgrade() -> None:
    op.drop_index("job_stages_lease_expired_idx", table_name="job_stages")
    op.drop_column("job_stages", "lease_expired")
