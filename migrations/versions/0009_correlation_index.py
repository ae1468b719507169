"""Events by correlation id: the index behind `GET /jobs/{id}/trace`.

Partial: heartbeats and other events no request caused carry no correlation id and stay out of
it. A plain (not concurrent) build: migrations run in one transaction under the migration lock.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "events_correlation_idx",
        "events",
        [sa.text("(metadata->>'correlation_id')"), "position"],
        postgresql_where=sa.text("(metadata->>'correlation_id') IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("events_correlation_idx", table_name="events")
