"""Key lifecycle: each key's scope, expiry and successor; when each key was last used.

Keys issued before this revision get the scope they had: `admin`, or `jobs,tasks` for a plain
key (domain.account.scope_of folds their events the same way on a rebuild).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("scope", sa.Text))
    op.execute("UPDATE api_keys SET scope = CASE WHEN admin THEN 'admin' ELSE 'jobs,tasks' END")
    op.alter_column("api_keys", "scope", nullable=False)
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("api_keys", sa.Column("replaced_by", sa.Text))
    op.create_table(
        "api_key_use",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_key_use")
    op.drop_column("api_keys", "replaced_by")
    op.drop_column("api_keys", "expires_at")
    op.drop_column("api_keys", "scope")
