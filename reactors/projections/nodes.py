"""The `nodes` table: each worker node's registration and latest heartbeat."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec
import sqlalchemy as sa

from spool.adapters.tables import nodes
from spool.domain import node
from spool.domain.events import RecordedEvent

_encode = msgspec.json.Encoder().encode

_HEARTBEAT = """
INSERT INTO nodes (node_id, hostname, ip, last_heartbeat_at, downloading, muxing, uploading,
                   running, usage, heartbeats)
SELECT n, h, ip, at, d, m, u, r::text[], us, c
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::int[],
            $7::int[], $8::text[], $9::jsonb[], $10::bigint[]) AS t(n, h, ip, at, d, m, u, r, us, c)
ON CONFLICT (node_id) DO UPDATE SET
    hostname = excluded.hostname, ip = excluded.ip,
    last_heartbeat_at = excluded.last_heartbeat_at, downloading = excluded.downloading,
    muxing = excluded.muxing, uploading = excluded.uploading, running = excluded.running,
    usage = excluded.usage, heartbeats = nodes.heartbeats + excluded.heartbeats,
    stopped_at = NULL
"""


class NodesProjection:
    name = "nodes"
    tables: Sequence[sa.Table] = (nodes,)
    event_types: frozenset[str] = node.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # Heartbeats dominate: keep only each node's latest of the batch, written in one upsert.
        latest: dict[str, tuple[node.NodeHeartbeat, RecordedEvent]] = {}
        counts: dict[str, int] = {}
        for e in events:
            ev = e.data
            if isinstance(ev, node.NodeHeartbeat):
                latest[ev.node_id] = (ev, e)
                counts[ev.node_id] = counts.get(ev.node_id, 0) + 1
            elif isinstance(ev, node.NodeStarted):
                await self._flush(conn, latest, counts)
                await conn.execute(
                    """
                    INSERT INTO nodes (node_id, hostname, ip, role, tags, capabilities,
                                       concurrency, started_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (node_id) DO UPDATE SET hostname = $2, ip = $3, role = $4,
                        tags = $5, capabilities = $6, concurrency = $7, started_at = $8,
                        stopped_at = NULL, removed_at = NULL
                    """,
                    ev.node_id,
                    ev.hostname,
                    ev.ip,
                    ev.role,
                    ev.tags,
                    _encode(ev.capabilities),
                    _encode(ev.concurrency),
                    e.recorded_at,
                )
            elif isinstance(ev, node.NodeStopped):
                await self._flush(conn, latest, counts)
                await conn.execute(
                    "UPDATE nodes SET stopped_at = $2, downloading = 0, muxing = 0, "
                    "uploading = 0, running = '{}' WHERE node_id = $1",
                    ev.node_id,
                    e.recorded_at,
                )
            elif isinstance(ev, node.NodeRemoved):
                await self._flush(conn, latest, counts)
                # Heartbeats keep updating the row but never clear this: only NodeStarted does.
                await conn.execute(
                    "UPDATE nodes SET removed_at = $2 WHERE node_id = $1", ev.node_id, e.recorded_at
                )
        await self._flush(conn, latest, counts)

    async def _flush(
        self,
        conn: asyncpg.Connection,
        latest: dict[str, tuple[node.NodeHeartbeat, RecordedEvent]],
        counts: dict[str, int],
    ) -> None:
        if not latest:
            return
        beats = list(latest.values())
        await conn.execute(
            _HEARTBEAT,
            [b.node_id for b, _ in beats],
            [b.hostname for b, _ in beats],
            [b.ip for b, _ in beats],
            [e.recorded_at for _, e in beats],
            [b.downloading for b, _ in beats],
            [b.muxing for b, _ in beats],
            [b.uploading for b, _ in beats],
            [_running(b.running) for b, _ in beats],
            [_encode(b.usage) for b, _ in beats],
            [counts[b.node_id] for b, _ in beats],
        )
        latest.clear()
        counts.clear()


def _running(ids: list[str]) -> str:
    """A Postgres text[] literal: unnest cannot take ragged arrays of arrays."""
    return (
        "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in ids) + "}"
    )
