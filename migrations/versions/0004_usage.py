"""Per-account daily usage: the `usage` projection's table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("jobs_created", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_completed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_failed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("jobs_cancelled", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_downloaded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_uploaded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_deleted", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
