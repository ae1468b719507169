"""The `cluster_config` table: one row per config section, the fold of the `config` stream."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.tables import cluster_config
from spool.domain import cluster_config as config
from spool.domain.events import RecordedEvent

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
