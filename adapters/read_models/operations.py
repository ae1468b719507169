"""The `operations` read model: each bulk action's folded state (domain/operation.py), for
the runner to find the unfinished ones, for the per-account bound on running ones, and as the
snapshot its repository reads (adapters/operation_store.py): `GET /operations/{id}` costs one
row, not a fold of up to `operation.MAX_JOBS` events."""

from __future__ import annotations

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.read_models.state_projection import Field, StateProjection, StateRows
from spool.adapters.tables import metadata
from spool.domain import operation

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("operation_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", pg.JSONB, nullable=False),
    # The shape `state` was written in (as `jobs.snapshot_version`): a row of another is not
    # used as a snapshot. The default stamps rows older than the column (migration 0029).
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(operation.AGGREGATE.snapshot_version)),
    ),
    sa.Index(
        "operations_running_idx",
        "account_id",
        "created_at",
        postgresql_where=sa.text("status = 'running'"),
    ),
)

ROWS = StateRows(
    operations,
    Field("operation_id", ("operation_id",), fixed=True),
    [
        Field("account_id", ("account_id",), fixed=True),
        Field("action", ("action",), fixed=True),
        Field("status", ("status",)),
        Field("created_at", ("created_at",), "timestamptz", fixed=True),
        Field("updated_at", ("updated_at",), "timestamptz"),
        Field("version", ("version",), "int", default=0),
        Field("state", (), "jsonb"),
    ],
    operation.OperationState,
    snapshot=operation.AGGREGATE,
)

OPERATIONS = StateProjection(
    name="operations",
    stream=operation.stream_id(""),
    event_types=operation.EVENT_TYPES,
    evolve=operation.evolve,
    rows=ROWS,
)


# -- queries ---------------------------------------------------------------------------------


async def running(pool: asyncpg.Pool, limit: int) -> list[str]:
    """Up to `limit` operations not finished, oldest first."""
    rows = await pool.fetch(
        "SELECT operation_id FROM operations WHERE status = 'running'"
        " ORDER BY created_at, operation_id LIMIT $1",
        limit,
    )
    return [r[0] for r in rows]


async def running_of(pool: asyncpg.Pool, account_id: str) -> int:
    """How many of the account's operations are not finished (as far as the rows know)."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM operations WHERE account_id = $1 AND status = 'running'",
            account_id,
        )
    )
