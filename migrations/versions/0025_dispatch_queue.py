"""The line of jobs waiting for a download slot: `dispatch_waiting` and `dispatch_accounts`
(adapters/dispatch_queue.py).

The pipeline reactor no longer sends every new job's download to Redis at once: it keeps the job
in line here and sends, in fair shares between accounts and by priority within one, only what
the nodes can start soon. Jobs created before this revision were sent at their creation and stay
in Redis's queue; the line starts empty.

Revision ID: 0025_dispatch_queue
Revises: 0024_pauses
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0025_dispatch_queue"
down_revision = "0024_pauses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dispatch_waiting",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("batch_id", sa.Text),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.Column("causation_id", sa.Text),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "dispatch_waiting_line_idx",
        "dispatch_waiting",
        ["account_id", sa.text("priority DESC"), "seq", "job_id"],
    )
    op.create_table(
        "dispatch_accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("waiting", sa.Integer, nullable=False, server_default="0"),
        sa.Column("served", sa.Float(precision=53), nullable=False, server_default="0"),
        sa.Column("waiting_since", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "dispatch_accounts_waiting_idx",
        "dispatch_accounts",
        ["account_id"],
        postgresql_where=sa.text("waiting > 0"),
    )


def downgrade() -> None:
    op.drop_table("dispatch_accounts")
    op.drop_table("dispatch_waiting")
