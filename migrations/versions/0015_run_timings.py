"""The `reporting.jobs` timings describe the job's current run (from its latest retry), as
`GET /jobs/{id}` does: the views are replaced with their definitions in adapters/reporting.py.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

from spool.adapters import reporting

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # reporting.nodes stays as 0010 made it until 0019 (its columns are 0019's), batches as
    # 0014 made it until 0030.
    older = ("nodes", "batches")
    for statement in reporting.statements(views=[v for v in reporting.VIEWS if v not in older]):
        op.execute(statement)


def downgrade() -> None:
    # The views read the same columns either way; the older timings are not worth restoring.
    pass
