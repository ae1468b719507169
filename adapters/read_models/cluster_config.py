"""The `cluster_config` table: one row per config section, the fold of the `config` stream."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.tables import metadata
from spool.domain import cluster_config as config
from spool.domain.events import RecordedEvent

# The cluster's config (domain.cluster_config): one row per section, the fold of `config`.
cluster_config = sa.Table(
    "cluster_config",
    metadata,
    sa.Column("section", sa.Text, primary_key=True),
    sa.Column("settings", pg.JSONB, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

_encode = msgspec.json.Encoder().encode


class ClusterConfigProjection:
    name = "cluster_config"
    tables: Sequence[sa.Table] = (cluster_config,)
    event_types: frozenset[str] = config.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            ev = e.data
            sections: dict[str, object]
            if isinstance(ev, config.ServerConfigChanged):
                sections = {"server": ev.server}
            elif isinstance(ev, config.HeartbeatConfigChanged):
                sections = {"heartbeat": ev.heartbeat}
            elif isinstance(ev, config.ConfigReset):
                sections = {"server": config.ServerConfig(), "heartbeat": config.HeartbeatConfig()}
            else:
                continue
            for section, value in sections.items():
                await conn.execute(
                    """
                    INSERT INTO cluster_config (section, settings, version, updated_at)
                    VALUES ($1, $2, $3, $4)
                    ON CONFLICT (section) DO UPDATE SET settings = $2, version = $3, updated_at = $4
                    """,
                    section,
                    _encode(value),
                    e.version,
                    e.recorded_at,
                )


_decode_heartbeat = msgspec.json.Decoder(config.HeartbeatConfig).decode


async def heartbeat(pool: asyncpg.Pool) -> config.HeartbeatConfig:
    """The heartbeat settings as the projection holds them (defaults before any change)."""
    row = await pool.fetchval("SELECT settings FROM cluster_config WHERE section = 'heartbeat'")
    return _decode_heartbeat(row) if row is not None else config.HeartbeatConfig()
