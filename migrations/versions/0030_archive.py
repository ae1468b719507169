"""The download archive: `archive`, one row per item an account's jobs fetched, keyed by the
account and yt-dlp's archive id (adapters/read_models/archive.py); and `batches.jobs_skipped`,
the jobs of a batch skipped as already archived (`JobSkipped`, status `Skipped`), which
`reporting.batches` shows at its end.

The archive starts empty and fills from the log: the `archive` projection has no checkpoint
yet, so it reads every `JobCompleted` from the start. Jobs completed before this revision
recorded no archive id and put nothing in it.

Revision ID: 0030_archive
Revises: 0025_dispatch_queue
Create Date: 2026-12-08
"""

from importlib import import_module

import sqlalchemy as sa
from alembic import op

from spool.adapters import reporting

BATCHES_VIEW_0014 = import_module("spool.migrations.versions.0014_batch_summary").BATCHES_VIEW

revision = "0030_archive"
down_revision = "0029_operation_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archive",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("archive_id", sa.Text, primary_key=True),
        sa.Column("extractor", sa.Text, nullable=False),
        sa.Column("item_id", sa.Text, nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "archive_account_archived_idx",
        "archive",
        ["account_id", sa.text("archived_at DESC"), sa.text("archive_id DESC")],
    )
    op.add_column(
        "batches", sa.Column("jobs_skipped", sa.Integer, nullable=False, server_default="0")
    )
    # reporting.batches gains jobs_skipped, at its end.
    for statement in reporting.statements(views=["batches"]):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS reporting.batches")
    op.execute(BATCHES_VIEW_0014)
    op.drop_column("batches", "jobs_skipped")
    op.drop_table("archive")
