"""`tasks` rows carry the version of the state's shape they hold, as `jobs` rows do (0016).

The tasks projection loads each task's `state` column and applies new events over it, so a row
an older release wrote is a snapshot like a job's: the projection stamps every row it writes
with `domain.task.AGGREGATE.snapshot_version` and folds a row stamped otherwise from its
stream (adapters/read_models/state_projection.py). Rows written before this revision hold the
shape of version 1.

Revision ID: 0018_task_snapshot_version
Revises: 0017_node_drain
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_task_snapshot_version"
down_revision = "0017_node_drain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("snapshot_version", sa.SmallInteger, nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    op.drop_column("tasks", "snapshot_version")
