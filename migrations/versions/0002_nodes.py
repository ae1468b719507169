"""Worker nodes and their latest heartbeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("ip", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False, server_default="worker"),
        sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("capabilities", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("concurrency", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("downloading", sa.Integer, nullable=False, server_default="0"),
        sa.Column("muxing", sa.Integer, nullable=False, server_default="0"),
        sa.Column("uploading", sa.Integer, nullable=False, server_default="0"),
        sa.Column("running", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("usage", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("heartbeats", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("nodes_last_heartbeat_idx", "nodes", ["last_heartbeat_at"])


def downgrade() -> None:
    op.drop_table("nodes")
