"""Batches show one status everywhere: the `batches` row holds what its jobs add up to.

`batches.status` now holds the status every read shows (`domain.batch.status_of`: a started
batch whose jobs all ended is `completed`), `stream_status` the batch stream's own, and the
job counts, bytes and last end that `reporting.batches` used to count itself. The table moves
from the `batches` projection to the `jobs` projection (which writes them in one transaction).

The rows are refilled from the log: the table is emptied and the `jobs` checkpoint goes back to
the start, so the next catch-up folds every batch again. Job rows already current are left as
they are (their version guard); job reads keep answering meanwhile.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from importlib import import_module

import sqlalchemy as sa
from alembic import op

from adapters import reporting

BATCHES_VIEW_0010 = import_module("migrations.versions.0010_reporting").BATCHES_VIEW

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COUNTS = ("jobs_pending", "jobs_processing", "jobs_completed", "jobs_failed", "jobs_cancelled")


def upgrade() -> None:
    op.execute("DELETE FROM batches")
    op.add_column("batches", sa.Column("stream_status", sa.Text, nullable=False))
    for name in _COUNTS:
        op.add_column("batches", sa.Column(name, sa.Integer, nullable=False))
    op.add_column("batches", sa.Column("bytes_uploaded", sa.BigInteger, nullable=False))
    op.add_column("batches", sa.Column("last_finished_at", sa.DateTime(timezone=True)))
    op.execute("DELETE FROM checkpoints WHERE name IN ('batches', 'jobs')")
    for statement in reporting.statements():
        op.execute(statement)


def downgrade() -> None:
    op.execute("UPDATE batches SET status = stream_status")
    # 0010's view, which counted the jobs itself: back first, as the new one reads the columns.
    op.execute(BATCHES_VIEW_0010)
    for name in ("stream_status", *_COUNTS, "bytes_uploaded", "last_finished_at"):
        op.drop_column("batches", name)
    # The batches projection follows its checkpoint again, from where the jobs one stands.
    op.execute(
        "INSERT INTO checkpoints (name, tx, position) SELECT 'batches', tx, position "
        "FROM checkpoints WHERE name = 'jobs' ON CONFLICT (name) DO NOTHING"
    )
