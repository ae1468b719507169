"""Job rows of the state's shape 4 (`domain.job.AGGREGATE.snapshot_version`): a job's state now
holds its HLS package on the node and its master playlist's stored key (issue 26). The column's
default moves to 4 with it; rows stamped 3 or earlier are folded from their streams until the
projection writes them again (migration 0016 says how stamps are used).

Revision ID: 0034_job_hls
Revises: 0033_job_previews
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0034_job_hls"
down_revision = "0033_job_previews"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("4"))


def downgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("3"))
