"""Job rows of the state's shape 2 (`domain.job.AGGREGATE.snapshot_version`): a job's state now
holds its loudness before and after normalising, its previews on the node and their stored keys
(issue 26). The column's default moves to 2 with it; rows stamped 1 are folded from their
streams until the projection writes them again (migration 0016 says how stamps are used).

Revision ID: 0033_job_previews
Revises: 0027_subscriptions
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0033_job_previews"
down_revision = "0027_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("2"))


def downgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("1"))
