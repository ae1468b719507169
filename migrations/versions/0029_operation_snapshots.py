"""An operation's row is its repository's snapshot: it carries `snapshot_version`.

`GET /operations/{id}` and the operations runner read the `operations` row and the stream's
events after it (adapters/operation_store.py) instead of folding up to `MAX_JOBS` events; as
for `jobs` (0016), a row of another shape than the code's is not used as a snapshot.

Revision ID: 0029_operation_snapshots
Revises: 0025_dispatch_queue
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0029_operation_snapshots"
down_revision = "0027_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "operations",
        sa.Column("snapshot_version", sa.SmallInteger, nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    op.drop_column("operations", "snapshot_version")
