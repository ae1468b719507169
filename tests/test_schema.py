"""The table definitions and the migrations describe one schema: a read model's table, column or
index cannot be changed in one without the other."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from spool.adapters import tables
from spool.adapters.database import sqlalchemy_url
from spool.adapters.read_models import all_projections, metadata

# Partitions of `events` (migration 0011) are made at run time, one per heartbeat day
# (adapters/event_partitions.py): the log's definition is its parent table, `events`.
_PARTITION = re.compile(r"^events_(before_heartbeats|after_heartbeats|heartbeat_\d{8})$")

OUTSIDE_PROJECTIONS = {
    tables.events,
    tables.checkpoints,
    tables.api_key_use,
    tables.account_keys,
    tables.event_archives,
    tables.cluster_identity,
    tables.node_failures,
    tables.live_progress,
    tables.dispatch_waiting,
    tables.dispatch_accounts,
}
"""The log, the operational tables, the node health reactor's and the pipeline's state and the
nodes' live progress: no projection writes them."""


def _of_the_schema(obj: Any, name: str | None, type_: str, reflected: bool, _: Any) -> bool:
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return not (table and _PARTITION.match(table))


def _differences(conn: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "include_object": _of_the_schema,
        },
    )
    return list(compare_metadata(context, metadata))


# Reflection does not know xid8 (events.tx); its type is not compared, its default is.
@pytest.mark.filterwarnings("ignore:Did not recognize type 'xid8'")
async def test_table_definitions_match_a_migrated_database(database_url: str) -> None:
    engine = create_async_engine(sqlalchemy_url(database_url), poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


def test_every_table_is_a_projections_or_named_outside_them() -> None:
    owned = [t for p in all_projections() for t in p.tables]
    assert len(owned) == len(set(owned)), "a table written by two projections"
    assert set(owned) | OUTSIDE_PROJECTIONS == set(metadata.tables.values())
    assert not set(owned) & OUTSIDE_PROJECTIONS
