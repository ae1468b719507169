"""Pauses: one row per paused scope (a batch after its start, an account, the cluster's
intake), the `pauses` projection's table (adapters/read_models/pauses.py). A job's own pause
is in its `jobs` row's state and needs no column.

Revision ID: 0024_pauses
Revises: 0023_failure_groups
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0024_pauses"
down_revision = "0023_failure_groups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pauses",
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("scope_id", sa.Text, primary_key=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pauses")
