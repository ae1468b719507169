"""Batches show one status everywhere: the `batches` row holds what its jobs add up to.

`batches.status` now holds the status every read shows (`domain.batch.status_of`: a started
batch whose jobs all ended is `completed`), `stream_status` the batch stream's own, and the
job counts, bytes and last end that `reporting.batches` used to count itself. The table moves
from the `batches` projection to the `jobs` projection (which writes them in one transaction).

The rows are refilled here from the log, up to where the `jobs` checkpoint stands (the `jobs`
rows are there too): each batch stream folded by `domain.batch`, summed up from its jobs' rows
by `domain.batch.summarize`, exactly as the projection will go on. The `jobs` checkpoint does not
move, so nothing is applied twice and no read (a quota's count of unfinished jobs) sees the log
as unprojected meanwhile.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from collections import defaultdict
from datetime import datetime
from importlib import import_module

import msgspec
import sqlalchemy as sa
from alembic import op

from spool.adapters import reporting
from spool.adapters.read_models import batches as batch_rows
from spool.domain import batch

BATCHES_VIEW_0010 = import_module("spool.migrations.versions.0010_reporting").BATCHES_VIEW

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COUNTS = ("jobs_pending", "jobs_processing", "jobs_completed", "jobs_failed", "jobs_cancelled")
_LATER_COLUMNS = ("jobs_skipped",)

BATCHES_VIEW = """CREATE OR REPLACE VIEW reporting.batches AS
SELECT b.batch_id::text AS batch_id,
       b.account_id::text AS account_id,
       b.kind::text AS kind,
       b.status::text AS status,
       b.source_url::text AS source_url,
       b.title::text AS title,
       b.created_at::timestamptz AS created_at,
       b.started_at::timestamptz AS started_at,
       b.updated_at::timestamptz AS updated_at,
       cardinality(b.job_ids)::integer AS jobs_total,
       b.jobs_pending::integer AS jobs_pending,
       b.jobs_processing::integer AS jobs_processing,
       b.jobs_completed::integer AS jobs_completed,
       b.jobs_failed::integer AS jobs_failed,
       b.jobs_cancelled::integer AS jobs_cancelled,
       b.bytes_uploaded::bigint AS bytes_uploaded,
       b.last_finished_at::timestamptz AS last_finished_at
FROM public.batches b
"""
"""reporting.batches as this revision made it (0030 adds `jobs_skipped` at its end)."""


_EVENTS = {
    cls.__name__: cls for cls in (batch.BatchCreated, batch.BatchStarted, batch.BatchCancelled)
}

_BATCH_EVENTS = """
SELECT stream_id, version, type, data::text, recorded_at FROM events
WHERE stream_id LIKE 'batch-%' AND (tx, position) <= (CAST(:tx AS text)::xid8, :position)
ORDER BY stream_id, version
"""

_JOB_FACTS = """
SELECT batch_id, status, (state->>'file_size')::bigint, finished_at
FROM jobs WHERE batch_id IS NOT NULL
"""


def _refill(conn: sa.Connection) -> None:
    """Write every batch's row as the jobs projection would at its checkpoint."""
    at = conn.execute(sa.text("SELECT tx, position FROM checkpoints WHERE name = 'jobs'")).first()
    if at is None:
        return  # the jobs projection has not begun: it folds every batch from the start
    states: dict[str, batch.BatchState] = {}
    updated: dict[str, datetime] = {}
    for stream_id, version, kind, data, recorded_at in conn.execute(
        sa.text(_BATCH_EVENTS), {"tx": str(at[0]), "position": at[1]}
    ):
        ev = msgspec.json.decode(data, type=_EVENTS[kind])
        batch_id = stream_id.removeprefix("batch-")
        states[batch_id] = batch.evolve(states.get(batch_id), ev, recorded_at, version)
        updated[batch_id] = recorded_at
    facts: dict[str, list[batch.JobFacts]] = defaultdict(list)
    for batch_id, status, size, finished_at in conn.execute(sa.text(_JOB_FACTS)):
        facts[batch_id].append(batch.JobFacts(status, size, finished_at))
    # The columns this revision makes: later ones (0030's jobs_skipped) come with their own.
    made = [c for c in batch_rows.COLUMNS if c not in _LATER_COLUMNS]
    columns = ", ".join(made)
    insert = sa.text(
        f"INSERT INTO batches (batch_id, {columns}) "
        f"VALUES (:batch_id, {', '.join(':' + c for c in made)})"
    )
    rows = [
        {
            c: v
            for c, v in (
                {"batch_id": batch_id}
                | batch_rows.own_row(state, updated[batch_id])
                | batch_rows.summary_row(batch.summarize(state, facts[batch_id]))
            ).items()
            if c not in _LATER_COLUMNS
        }
        for batch_id, state in states.items()
    ]
    if rows:
        conn.execute(insert, rows)


def upgrade() -> None:
    op.execute("DELETE FROM batches")
    op.add_column("batches", sa.Column("stream_status", sa.Text, nullable=False))
    for name in _COUNTS:
        op.add_column("batches", sa.Column(name, sa.Integer, nullable=False))
    op.add_column("batches", sa.Column("bytes_uploaded", sa.BigInteger, nullable=False))
    op.add_column("batches", sa.Column("last_finished_at", sa.DateTime(timezone=True)))
    _refill(op.get_bind())
    op.execute("DELETE FROM checkpoints WHERE name = 'batches'")
    # reporting.nodes stays as 0010 made it until 0019 (its columns are 0019's); batches is
    # this revision's until 0030.
    older = ("nodes", "batches")
    for statement in reporting.statements(views=[v for v in reporting.VIEWS if v not in older]):
        op.execute(statement)
    op.execute(BATCHES_VIEW)


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
