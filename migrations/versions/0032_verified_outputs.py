"""Jobs' snapshot rows hold the shape of version 2 (domain/job.py `AGGREGATE.snapshot_version`).

`JobState` gained `source_quality`, which the fold takes from every `DownloadCompleted`'s width
and height (older rows never kept it), and `verification`: a row written before this revision
is no snapshot of today's fold. The column's default moves to 2 with the aggregate, so rows the
projection writes from now on are stamped 2; older rows keep their 1, and the loaders fold
those jobs' streams until the projection writes them again (or `spool projections rebuild`).

Revision ID: 0032_verified_outputs
Revises: 0027_subscriptions
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0032_verified_outputs"
down_revision = "0031_subscription_items"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("2"))


def downgrade() -> None:
    op.alter_column("jobs", "snapshot_version", server_default=sa.text("1"))
