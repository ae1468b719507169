"""Scheduled tasks: the `tasks` projection's table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("priority_rank", sa.Integer, nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("requirements", pg.JSONB, nullable=False),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("device_id", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("result", pg.JSONB),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("execution_time_seconds", sa.Float(precision=53)),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", pg.JSONB, nullable=False),
    )
    op.create_index(
        "tasks_status_rank_idx",
        "tasks",
        ["status", sa.text("priority_rank DESC"), "created_at"],
    )
    op.create_index(
        "tasks_account_created_idx",
        "tasks",
        ["account_id", sa.text("created_at DESC"), "task_id"],
    )
    op.create_index("tasks_device_status_idx", "tasks", ["device_id", "status"])


def downgrade() -> None:
    op.drop_table("tasks")
