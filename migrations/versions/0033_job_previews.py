"""Job rows of the state's shape 3 (`domain.job.AGGREGATE.snapshot_version`): a job's state now
holds its loudness before and after normalising, its previews on the node and their stored keys
(issue 26). The column's default moves to 3 with it; rows stamped 2 or 1 are folded from their
streams until the projection writes them again (migration 0016 says how stamps are used).

Revision ID: 0033_job_previews
Revises: 0032_verified_outputs
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0033_job_previews"
down_revision = "0032_verified_outputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("3"))


def downgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("2"))
