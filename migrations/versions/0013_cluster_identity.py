"""The cluster's identity: one random id per database, which its Redis is claimed with.

A process whose Redis is already claimed by another database's cluster refuses to start
(adapters/cluster_identity.py), so two clusters never take each other's queued work.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_identity",
        sa.Column("cluster_id", sa.Text, primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        # One row at most: the id of this database's cluster.
        sa.Column("one", sa.Boolean, nullable=False, server_default=sa.true(), unique=True),
        sa.CheckConstraint("one", name="cluster_identity_one_row"),
    )
    op.execute("INSERT INTO cluster_identity (cluster_id) VALUES (gen_random_uuid()::text)")


def downgrade() -> None:
    op.drop_table("cluster_identity")
