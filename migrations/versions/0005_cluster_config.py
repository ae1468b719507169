"""Cluster config, node removal, and per-minute cluster usage for `/api/v1/cluster/metrics`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("removed_at", sa.DateTime(timezone=True)))
    op.create_table(
        "cluster_config",
        sa.Column("section", sa.Text, primary_key=True),
        sa.Column("settings", pg.JSONB, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "usage_minutes",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("samples", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cpu_percent_sum", sa.Float, nullable=False, server_default="0"),
        sa.Column("memory_percent_sum", sa.Float, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("usage_minutes")
    op.drop_table("cluster_config")
    op.drop_column("nodes", "removed_at")
