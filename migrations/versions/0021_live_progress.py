"""Live progress outside the log: `live_progress`, an UNLOGGED table of each running unit's
latest progress.

A node upserts its running units' rows every heartbeat and deletes those of units it no longer
runs (adapters/live_progress.py); the job's stream keeps `StageProgressed` only at each tenth of
a stage (`domain.job.progress_milestone`). Unlogged: no WAL for a row rewritten every second,
and a crash of the server only empties it until the next heartbeats. Histories written before
this revision, with a `StageProgressed` every second, fold as before.

Revision ID: 0021_live_progress
Revises: 0020_lease_expiries
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0021_live_progress"
down_revision = "0020_lease_expiries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "live_progress",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("run", sa.Integer, primary_key=True),
        sa.Column("stage", sa.Text, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("progress", pg.JSONB, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("live_progress")
