"""The `reporting.jobs` timings describe the job's current run (from its latest retry), as
`GET /jobs/{id}` does: the views are replaced with their definitions in adapters/reporting.py.

Revision ID: 0014_smalla
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

from adapters import reporting

revision = "0014_smalla"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in reporting.statements():
        op.execute(statement)


def downgrade() -> None:
    # The views read the same columns either way; the older timings are not worth restoring.
    pass
