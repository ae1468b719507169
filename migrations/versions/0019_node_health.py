"""Node health: a quarantine and a free-disk floor on `nodes`, and the node health reactor's
working state (`node_failures`).

`nodes.quarantined_since` and `quarantine_reason` are set by `NodeQuarantined` and cleared by
`NodeReleased`, `probe_started_at` set by `NodeProbeStarted` (domain/node.py); `disk_floor` is
the latest heartbeat's reason for taking no download. `node_failures` holds each node's
node-side failures in a row (reactors/node_health.py). `reporting.nodes` shows them and the
node's `state`. Nodes quarantined before this revision
do not exist: the events are new with it.

Revision ID: 0019_node_health
Revises: 0018_task_snapshot_version
Create Date: 2026-12-07
"""

from importlib import import_module

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from spool.adapters import reporting

NODES_VIEW_0010 = import_module("spool.migrations.versions.0010_reporting").NODES_VIEW

revision = "0019_node_health"
down_revision = "0018_task_snapshot_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("quarantined_since", sa.DateTime(timezone=True)))
    op.add_column("nodes", sa.Column("quarantine_reason", sa.Text))
    op.add_column("nodes", sa.Column("probe_started_at", sa.DateTime(timezone=True)))
    op.add_column("nodes", sa.Column("disk_floor", sa.Text))
    op.create_table(
        "node_failures",
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("failures", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    # reporting.nodes gains the work state and its facts, at its end.
    for statement in reporting.statements(views=["nodes"]):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS reporting.nodes")
    op.execute(NODES_VIEW_0010)
    op.drop_table("node_failures")
    for column in ("disk_floor", "probe_started_at", "quarantine_reason", "quarantined_since"):
        op.drop_column("nodes", column)
