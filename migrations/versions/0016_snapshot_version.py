"""Snapshot rows carry the version of the state's shape they hold (`snapshot_version`).

`jobs.state` and the `viewers` row serve the repositories as snapshots (adapters/job_store.py,
adapters/viewer_store.py). Each row is stamped with the column's default when the projection
writes it; the loaders take a row only when its stamp is the aggregate's `snapshot_version`
(domain/aggregate.py) and fold the whole stream otherwise. Rows written before this revision
hold the shape of version 1. Raising an aggregate's `snapshot_version` takes a migration that
moves the default with it: older rows keep their stamp until `spool projections rebuild`.

Revision ID: 0016_snapshot_version
Revises: 0015
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_snapshot_version"
down_revision = "0015"
branch_labels = None
depends_on = None

_TABLES = ("jobs", "viewers")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(
            table,
            sa.Column(
                "snapshot_version", sa.SmallInteger, nullable=False, server_default=sa.text("1")
            ),
        )


def downgrade() -> None:
    for table in _TABLES:
        op.drop_column(table, "snapshot_version")
