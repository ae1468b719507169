"""A subscription's items: `jobs_subscription_idx`, the jobs a subscription created by when
they finished, so its retention pass (reactors/subscription_retention.py) and `GET
/jobs?subscription_id=` read that subscription's jobs, not all of its account's.

Revision ID: 0031_subscription_items
Revises: 0027_subscriptions
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0031_subscription_items"
down_revision = "0030_archive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "jobs_subscription_idx",
        "jobs",
        [sa.text("(state ->> 'subscription_id')"), "finished_at"],
        postgresql_where=sa.text("(state ->> 'subscription_id') IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_subscription_idx", table_name="jobs")
