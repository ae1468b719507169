"""Subscriptions (issue 25): `subscriptions`, each subscription's folded state, and
`subscription_checks`, the history of its checks (adapters/read_models/subscriptions.py).

Both start empty: no subscription existed before this revision.

Revision ID: 0027_subscriptions
Revises: 0025_dispatch_queue
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0027_subscriptions"
down_revision = "0025_dispatch_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("next_check_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", pg.JSONB, nullable=False),
        sa.Column("snapshot_version", sa.SmallInteger, nullable=False, server_default=sa.text("1")),
    )
    op.create_index(
        "subscriptions_account_created_idx",
        "subscriptions",
        ["account_id", sa.text("created_at DESC"), "subscription_id"],
    )
    op.create_index(
        "subscriptions_due_idx",
        "subscriptions",
        ["next_check_at"],
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "subscription_checks",
        sa.Column("check_id", sa.Text, primary_key=True),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("seen", sa.Integer),
        sa.Column("new", sa.Integer),
        sa.Column("job_ids", pg.JSONB),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "subscription_checks_started_idx",
        "subscription_checks",
        ["subscription_id", sa.text("started_at DESC"), "check_id"],
    )


def downgrade() -> None:
    op.drop_table("subscription_checks")
    op.drop_table("subscriptions")
