"""Users' own storage: the `storage_configs` projection and the crypto-shredding key table.

`account_keys` is deliberately not part of the log: destroying a row's `wrapped_key` is what
makes an account's sealed secrets in the (immutable) log unreadable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_keys",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("destroyed_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "storage_configs",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("config", pg.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("storage_configs")
    op.drop_table("account_keys")
