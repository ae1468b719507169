"""Live viewers: the `viewers` projection's table, its list index and its counts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "viewers",
        sa.Column("viewer_id", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("harness_type", sa.Text, nullable=False),
        sa.Column("system", sa.Boolean, nullable=False),
        sa.Column("application_id", sa.Text, nullable=False),
        sa.Column("stream_key", sa.Text, nullable=False),
        sa.Column("remote_address", sa.Text, nullable=False),
        sa.Column("device_type", sa.Text, nullable=False),
        sa.Column("os_name", sa.Text, nullable=False),
        sa.Column("browser_name", sa.Text, nullable=False),
        sa.Column("country_code", sa.Text, nullable=False),
        sa.Column("country_name", sa.Text, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("in_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("out_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("in_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("out_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("health_score", sa.Integer, nullable=False, server_default="0"),
        sa.Column("health_grade", sa.Text, nullable=False, server_default="No Data"),
        sa.Column("bitrate", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("measured", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        postgresql_with={"fillfactor": 80},
    )
    op.create_table(
        "viewer_terms",
        sa.Column("term", sa.Text, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("viewer_id", sa.Text, nullable=False),
        sa.Column("harness_type", sa.Text, nullable=False),
        sa.Column("system", sa.Boolean, nullable=False),
    )
    op.create_index(
        "viewer_terms_order_idx",
        "viewer_terms",
        ["term", sa.text("started_at DESC"), "viewer_id"],
        unique=True,
    )
    op.create_index(
        "viewer_terms_harness_idx",
        "viewer_terms",
        ["term", "harness_type", sa.text("started_at DESC"), "viewer_id"],
    )
    op.create_index(
        "viewer_terms_viewers_idx",
        "viewer_terms",
        ["term", sa.text("started_at DESC"), "viewer_id"],
        postgresql_where=sa.text("NOT system"),
    )
    op.create_table(
        "viewer_term_counts",
        sa.Column("term", sa.Text, primary_key=True),
        sa.Column("harness_type", sa.Text, primary_key=True),
        sa.Column("live", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "viewer_term_spans",
        sa.Column("term", sa.Text, primary_key=True),
        sa.Column("width", sa.BigInteger, primary_key=True),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("harness_type", sa.Text, primary_key=True),
        sa.Column("live", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("viewer_term_spans")
    op.drop_table("viewer_term_counts")
    op.drop_table("viewer_terms")
    op.drop_table("viewers")
