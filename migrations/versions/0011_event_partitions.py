"""Partition `events` by stream so heartbeat days can be archived; record what was archived.

`events` becomes a table partitioned by RANGE on `stream_id` (collation "C"): every stream but
heartbeats in `events_before_heartbeats` / `events_after_heartbeats`, and one partition per UTC
day of heartbeat streams (`heartbeat-<YYYY-MM-DD>-<node_id>`), made on demand by the event
store (adapters/event_partitions.py). Readers still see one table named `events` with the same
columns, the same (tx, position) index, unique (stream_id, version) and the correlation index.

A partitioned table cannot have a primary key without its partition key, so `position` has a
plain index; the identity sequence still hands out every position once, and a restored archive
brings back positions that were taken out.

Existing rows are copied in place with their positions, tx ids and times unchanged; the
sequence continues where the old one stood. Heartbeats recorded before this revision stay in
their node streams (`node-<id>`, in the main partition): moving them would rewrite history.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = "position, stream_id, version, type, schema_version, data, metadata, recorded_at, tx"


def _triggers(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION events_append_only()"
    )
    op.execute(
        f"CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()"
    )


def _indexes() -> None:
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)"
    )
    op.execute("CREATE INDEX events_position_idx ON events (position)")
    op.execute("CREATE INDEX events_tx_position_idx ON events (tx, position)")
    op.execute(
        "CREATE INDEX events_correlation_idx ON events ((metadata->>'correlation_id'), position) "
        "WHERE (metadata->>'correlation_id') IS NOT NULL"
    )


def _set_sequence(old: str) -> None:
    # Where the old sequence stood, not max(position): a rolled-back append took numbers too.
    op.execute(
        f"""
        SELECT setval(pg_get_serial_sequence('events', 'position'),
                      greatest((SELECT last_value FROM {old}), 1),
                      (SELECT is_called FROM {old}))
        """
    )


def upgrade() -> None:
    op.execute("ALTER TABLE events RENAME TO events_unpartitioned")
    op.execute("ALTER SEQUENCE events_position_seq RENAME TO events_unpartitioned_position_seq")
    op.execute("ALTER TABLE events_unpartitioned DROP CONSTRAINT events_stream_version_key")
    op.execute("DROP INDEX events_tx_position_idx")
    op.execute("DROP INDEX events_correlation_idx")
    op.execute(
        """
        CREATE TABLE events (
            position bigint GENERATED ALWAYS AS IDENTITY,
            stream_id text COLLATE "C" NOT NULL,
            version integer NOT NULL,
            type text NOT NULL,
            schema_version smallint NOT NULL,
            data jsonb NOT NULL,
            metadata jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            tx xid8 NOT NULL DEFAULT pg_current_xact_id()
        ) PARTITION BY RANGE (stream_id)
        """
    )
    op.execute(
        "CREATE TABLE events_before_heartbeats PARTITION OF events "
        "FOR VALUES FROM (MINVALUE) TO ('heartbeat-')"
    )
    # '.' follows '-': every `heartbeat-...` stream sorts below this bound.
    op.execute(
        "CREATE TABLE events_after_heartbeats PARTITION OF events "
        "FOR VALUES FROM ('heartbeat.') TO (MAXVALUE)"
    )
    # Heartbeat days already in the log (a database migrated down and up again) get theirs.
    op.execute(
        """
        DO $$
        DECLARE d date;
        BEGIN
            FOR d IN SELECT DISTINCT substr(stream_id, 11, 10)::date FROM events_unpartitioned
                     WHERE stream_id COLLATE "C" >= 'heartbeat-'
                       AND stream_id COLLATE "C" < 'heartbeat.'
            LOOP
                EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                               'events_heartbeat_' || to_char(d, 'YYYYMMDD'),
                               'heartbeat-' || to_char(d, 'YYYY-MM-DD'),
                               'heartbeat-' || to_char(d + 1, 'YYYY-MM-DD'));
            END LOOP;
        END $$
        """
    )
    op.execute(
        f"INSERT INTO events ({_COLUMNS}) OVERRIDING SYSTEM VALUE "
        f"SELECT {_COLUMNS} FROM events_unpartitioned ORDER BY position"
    )
    _indexes()
    _set_sequence("events_unpartitioned_position_seq")
    op.execute("DROP TABLE events_unpartitioned")
    _triggers("events")
    op.execute("ANALYZE events")
    op.execute(
        """
        CREATE TABLE event_archives (
            day date PRIMARY KEY,
            file text NOT NULL,
            events bigint NOT NULL,
            first_position bigint NOT NULL,
            last_position bigint NOT NULL,
            sha256 text NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now(),
            restored_at timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE event_archives")
    op.execute("ALTER TABLE events RENAME TO events_partitioned")
    op.execute("ALTER SEQUENCE events_position_seq RENAME TO events_partitioned_position_seq")
    op.execute("ALTER TABLE events_partitioned DROP CONSTRAINT events_stream_version_key")
    for index in ("events_position_idx", "events_tx_position_idx", "events_correlation_idx"):
        op.execute(f"DROP INDEX {index}")
    op.execute(
        """
        CREATE TABLE events (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream_id text NOT NULL,
            version integer NOT NULL,
            type text NOT NULL,
            schema_version smallint NOT NULL,
            data jsonb NOT NULL,
            metadata jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
            CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
        )
        """
    )
    op.execute(
        f"INSERT INTO events ({_COLUMNS}) OVERRIDING SYSTEM VALUE "
        f"SELECT {_COLUMNS} FROM events_partitioned ORDER BY position"
    )
    op.execute("CREATE INDEX events_tx_position_idx ON events (tx, position)")
    op.execute(
        "CREATE INDEX events_correlation_idx ON events ((metadata->>'correlation_id'), position) "
        "WHERE (metadata->>'correlation_id') IS NOT NULL"
    )
    _set_sequence("events_partitioned_position_seq")
    # Detached heartbeat days (archived, not yet dropped) stay as they are.
    op.execute("DROP TABLE events_partitioned CASCADE")
    _triggers("events")
