"""The log and the tables outside projections, on the one SQLAlchemy `metadata`.

Each read model's tables are defined in its module (adapters/read_models/); importing
`spool.adapters.read_models` puts them all on `metadata`. Alembic migrations mirror the whole of
it (tests/test_schema.py compares them with a migrated database).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()


class Xid8(sa.types.UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id: the commit-order key of the log."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# The append-only log. `tx` orders subscribers: see docs/architecture.md, "Global order: (tx,
# position)". Partitioned by RANGE on stream_id, a partition per heartbeat day (migration 0011,
# adapters/event_partitions).
events = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("stream_id", sa.Text(collation="C"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.SmallInteger, nullable=False),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column(
        "recorded_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
    ),
    sa.Column("tx", Xid8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
    sa.UniqueConstraint("stream_id", "version", name="events_stream_version_key"),
    sa.Index("events_tx_position_idx", "tx", "position"),
    sa.Index("events_position_idx", "position"),
    # Events a request caused, by its correlation id: `GET /jobs/{id}/trace` (migration 0009).
    sa.Index(
        "events_correlation_idx",
        sa.text("(metadata->>'correlation_id')"),
        "position",
        postgresql_where=sa.text("(metadata->>'correlation_id') IS NOT NULL"),
    ),
    postgresql_partition_by="RANGE (stream_id)",
)

# One row per projection or process manager: how far it has read the log.
checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("tx", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
)


# Not a projection and not the log: when each key was last used (telemetry, written at most once
# a minute a key by api.auth), so a rebuild of `api_keys` keeps it.
api_key_use = sa.Table(
    "api_key_use",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
)


# Not a projection and not the log: each account's data key, wrapped (adapters.secret_box).
account_keys = sa.Table(
    "account_keys",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.Column("destroyed_at", sa.DateTime(timezone=True)),
)

# Not a projection and not the log: which days of heartbeats are archived, in which file
# (adapters/event_archive.py).
event_archives = sa.Table(
    "event_archives",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("file", sa.Text, nullable=False),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Column("first_position", sa.BigInteger, nullable=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column(
        "archived_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.Column("restored_at", sa.DateTime(timezone=True)),
)

# Not a projection and not the log: the one id of this database's cluster
# (adapters/cluster_identity.py).
cluster_identity = sa.Table(
    "cluster_identity",
    metadata,
    sa.Column("cluster_id", sa.Text, primary_key=True),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    # One row at most.
    sa.Column("one", sa.Boolean, nullable=False, server_default=sa.true(), unique=True),
    sa.CheckConstraint("one", name="cluster_identity_one_row"),
)

# Not a projection and not the log: the node health reactor's working state
# (reactors/node_health.py), written under its checkpoint: each node's node-side unit failures
# since its last success or release, the newest last, and whether the log last said it is
# quarantined.
node_failures = sa.Table(
    "node_failures",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("failures", pg.JSONB, nullable=False, server_default="[]"),
    sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Not a projection and not the log: each running unit's latest progress as its node last sent it
# (adapters/live_progress.py), rewritten every heartbeat. Unlogged: a server crash empties it,
# and the next heartbeats fill it again; its writes cost no WAL. One row per unit, so a unit the
# job has moved off never overwrites the current one's.
live_progress = sa.Table(
    "live_progress",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("progress", pg.JSONB, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    prefixes=["UNLOGGED"],
)

# Not projections and not the log: the pipeline reactor's line of jobs whose download may start
# (adapters/dispatch_queue.py, domain/fair_share.py), written under its checkpoint, so a batch
# applied again after a crash finds them as the log left them. `dispatch_waiting`: jobs not yet
# sent to the download queue; `dispatch_accounts`: each account's count of waiting jobs and its
# virtual time in the fair shares.
dispatch_waiting = sa.Table(
    "dispatch_waiting",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text),
    sa.Column("run", sa.Integer, nullable=False),
    sa.Column("priority", sa.SmallInteger, nullable=False),
    # The position of the event that put the job in line: its place among equal priorities.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("correlation_id", sa.Text),
    sa.Column("causation_id", sa.Text),
    # Paused by its own `JobPaused` while it waits (its batch's, account's or the cluster's
    # pause is read from `pauses`).
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("dispatch_waiting_line_idx", "account_id", sa.text("priority DESC"), "seq", "job_id"),
)

dispatch_accounts = sa.Table(
    "dispatch_accounts",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("waiting", sa.Integer, nullable=False, server_default="0"),
    sa.Column("served", sa.Float(precision=53), nullable=False, server_default="0"),
    sa.Column("waiting_since", sa.DateTime(timezone=True)),
    sa.Index(
        "dispatch_accounts_waiting_idx", "account_id", postgresql_where=sa.text("waiting > 0")
    ),
)
