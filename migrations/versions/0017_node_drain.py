"""A node an admin drained (`nodes.draining_since`): it finishes what it runs, takes nothing new.

Set by `NodeDrainRequested`, cleared by `NodeUndrained` (domain/node.py); a restart or a
heartbeat leaves it as it is. Nodes drained before this revision do not exist: the events are
new with it.

Revision ID: 0017_node_drain
Revises: 0016_snapshot_version
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_node_drain"
down_revision = "0016_snapshot_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("draining_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("nodes", "draining_since")
