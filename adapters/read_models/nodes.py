"""The `nodes` read model: each worker node's registration and latest heartbeat, and when a
node is online.

A node is online while it has neither stopped nor been removed and its latest heartbeat is
younger than the heartbeat config's `timeout` (`domain.cluster_config.HeartbeatConfig`, which an
admin may change through `/api/v1/config`). It depends on the time of the read, so no projection
can store it: every read that shows a node online or offline (devices, `/ws`, `/metrics`, the
dashboard, task types, the scheduler's offers, `reporting.nodes`) uses `online` below, with the
timeout the `cluster_config` table holds (`configured_timeout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.read_models import cluster_config
from spool.adapters.tables import metadata
from spool.domain import node, task
from spool.domain.cluster_config import HeartbeatConfig
from spool.domain.events import RecordedEvent
from spool.domain.node import Capabilities

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("ip", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False, server_default="worker"),
    sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("capabilities", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("concurrency", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
    sa.Column("last_heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("downloading", sa.Integer, nullable=False, server_default="0"),
    sa.Column("muxing", sa.Integer, nullable=False, server_default="0"),
    sa.Column("uploading", sa.Integer, nullable=False, server_default="0"),
    sa.Column("running", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("usage", pg.JSONB, nullable=False, server_default="{}"),
    sa.Column("heartbeats", sa.BigInteger, nullable=False, server_default="0"),
    # Set by NodeRemoved: the node is hidden until it registers again (NodeStarted).
    sa.Column("removed_at", sa.DateTime(timezone=True)),
    # Set by NodeDrainRequested, cleared by NodeUndrained only: the node takes no new work.
    sa.Column("draining_since", sa.DateTime(timezone=True)),
    # Set by NodeQuarantined, cleared by NodeReleased only; the probe by NodeProbeStarted.
    sa.Column("quarantined_since", sa.DateTime(timezone=True)),
    sa.Column("quarantine_reason", sa.Text),
    sa.Column("probe_started_at", sa.DateTime(timezone=True)),
    # The latest heartbeat's reason for taking no download (its disk below the floor), or NULL.
    sa.Column("disk_floor", sa.Text),
    sa.Index("nodes_last_heartbeat_idx", "last_heartbeat_at"),
)

_encode = msgspec.json.Encoder().encode

_HEARTBEAT = """
INSERT INTO nodes (node_id, hostname, ip, last_heartbeat_at, downloading, muxing, uploading,
                   running, usage, heartbeats, disk_floor)
SELECT n, h, ip, at, d, m, u, r::text[], us, c, f
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::int[],
            $7::int[], $8::text[], $9::jsonb[], $10::bigint[], $11::text[])
     AS t(n, h, ip, at, d, m, u, r, us, c, f)
ON CONFLICT (node_id) DO UPDATE SET disk_floor = excluded.disk_floor,
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
            elif isinstance(ev, node.NodeDrainRequested | node.NodeUndrained):
                # A drain names a node that registered, so its row is there (domain.node.drain).
                since = e.recorded_at if isinstance(ev, node.NodeDrainRequested) else None
                await conn.execute(
                    "UPDATE nodes SET draining_since = $2 WHERE node_id = $1", ev.node_id, since
                )
            elif isinstance(ev, node.NodeQuarantined):
                await conn.execute(
                    "UPDATE nodes SET quarantined_since = $2, quarantine_reason = $3 "
                    "WHERE node_id = $1",
                    ev.node_id,
                    e.recorded_at,
                    ev.reason,
                )
            elif isinstance(ev, node.NodeProbeStarted):
                await conn.execute(
                    "UPDATE nodes SET probe_started_at = $2 WHERE node_id = $1",
                    ev.node_id,
                    e.recorded_at,
                )
            elif isinstance(ev, node.NodeReleased):
                await conn.execute(
                    "UPDATE nodes SET quarantined_since = NULL, quarantine_reason = NULL, "
                    "probe_started_at = NULL WHERE node_id = $1",
                    ev.node_id,
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
            [b.disk_floor for b, _ in beats],
        )
        latest.clear()
        counts.clear()


def _running(ids: list[str]) -> str:
    """A Postgres text[] literal: unnest cannot take ragged arrays of arrays."""
    return (
        "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in ids) + "}"
    )


# -- when a node is online -------------------------------------------------------------------


def _beat_within(timeout: str, n: str) -> str:
    return f"coalesce({n}last_heartbeat_at > now() - {timeout}, false)"


def online(timeout: str, alias: str | None = None) -> str:
    """SQL: whether the `nodes` row (`alias`, if the query names it) is online, `timeout` being
    an SQL interval (a parameter of the heartbeat config's timeout, or `configured_timeout()`)."""
    n = f"{alias}." if alias else ""
    return f"({n}stopped_at IS NULL AND {n}removed_at IS NULL AND {_beat_within(timeout, n)})"


def working(timeout: str) -> str:
    """SQL: whether a `nodes` row may still be doing its work: it has not stopped and beat
    within `timeout`. Removal does not count: a removed node that still runs registers again
    and keeps its units, so the reconciler gives up no work for it (reactors/reconciler.py)."""
    return f"(stopped_at IS NULL AND {_beat_within(timeout, '')})"


def configured_timeout(table: str = "cluster_config") -> str:
    """SQL: the heartbeat timeout `table` (the `cluster_config` projection) holds, as an
    interval; the config's default before any change."""
    return (
        "make_interval(secs => coalesce((SELECT (c.settings->>'timeout')::int FROM "
        f"{table} c WHERE c.section = 'heartbeat'), {HeartbeatConfig().timeout}))"
    )


# -- queries ---------------------------------------------------------------------------------

_decode_caps = msgspec.json.Decoder(Capabilities).decode
_decode_counts = msgspec.json.Decoder(dict[str, int]).decode

_ONLINE = f"""
SELECT n.node_id, n.role, n.tags, n.capabilities, n.concurrency, n.draining_since,
       n.quarantined_since,
       (SELECT count(*) FROM tasks t
        WHERE t.device_id = n.node_id AND t.status IN ('assigned', 'running')) AS busy
FROM nodes n
WHERE {online(f"coalesce($1::interval, {configured_timeout()})", "n")}
ORDER BY n.node_id
"""


async def online_offers(
    pool: asyncpg.Pool, online_seconds: float | None = None
) -> list[task.NodeOffer]:
    """Every online node as the scheduler sees it, with the task slots it has in use.

    `online_seconds`: the heartbeat timeout (default: the heartbeat config's, read in the
    same query)."""
    given = None if online_seconds is None else timedelta(seconds=online_seconds)
    rows = await pool.fetch(_ONLINE, given)
    offers = []
    for r in rows:
        caps = _decode_caps(r["capabilities"])
        offers.append(
            task.NodeOffer(
                node_id=r["node_id"],
                role=r["role"],
                tags=list(r["tags"]),
                capabilities=caps,
                task_types=list(caps.task_types),
                internet=caps.internet,
                slots=_decode_counts(r["concurrency"]).get("task", 0),
                busy=r["busy"],
                draining=r["draining_since"] is not None,
                quarantined=r["quarantined_since"] is not None,
            )
        )
    return offers


# A device as the cluster API shows it (api/device_view.py): its row, and `$1` the heartbeat
# timeout it is judged by.
_DEVICE = f"""
node_id, hostname, ip, role, tags, capabilities, concurrency, started_at, stopped_at,
last_heartbeat_at, downloading, muxing, uploading, running, usage, heartbeats, draining_since,
quarantined_since, quarantine_reason, disk_floor,
coalesce(capabilities->>'platform', 'linux') AS platform,
{online("$1::interval")} AS online,
extract(epoch FROM now() - last_heartbeat_at)::float8 AS heartbeat_age,
extract(epoch FROM now() - started_at)::float8 AS up_seconds
"""


class DeviceFilter(msgspec.Struct, frozen=True):
    status: str = "all"
    role: str | None = None
    platform: str | None = None
    tags: tuple[str, ...] = ()


def _where(f: DeviceFilter) -> tuple[str, list[Any]]:
    """SQL conditions after $1 (the timeout interval) and their arguments."""
    conds = ["removed_at IS NULL"]
    args: list[Any] = []
    is_online = online("$1::interval")
    if f.status == "online":
        conds.append(is_online)
    elif f.status == "offline":
        conds.append(f"NOT {is_online}")
    if f.role:
        args.append(f.role)
        conds.append(f"role = ${len(args) + 1}")
    if f.platform:
        args.append(f.platform)
        conds.append(f"coalesce(capabilities->>'platform', 'linux') = ${len(args) + 1}")
    if f.tags:
        args.append(list(f.tags))
        conds.append(f"tags @> ${len(args) + 1}::text[]")
    return " AND ".join(conds), args


async def timeout_of(pool: asyncpg.Pool) -> tuple[HeartbeatConfig, timedelta]:
    """The heartbeat config the `cluster_config` table holds, and its timeout."""
    hb = await cluster_config.heartbeat(pool)
    return hb, timedelta(seconds=hb.timeout)


async def device_rows(
    pool: asyncpg.Pool, f: DeviceFilter, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """One page of the devices matching `f`, by id, and how many match in all."""
    _, timeout = await timeout_of(pool)
    where, args = _where(f)
    n = len(args) + 2
    rows = await pool.fetch(
        f"SELECT {_DEVICE}, count(*) OVER () AS total FROM nodes WHERE {where} "
        f"ORDER BY node_id LIMIT ${n} OFFSET ${n + 1}",
        timeout,
        *args,
        limit,
        offset,
    )
    if rows:
        return list(rows), int(rows[0]["total"])
    if offset == 0:
        return [], 0
    # `$1` must appear even when no condition reads the timeout (status "all"): the server
    # counts the parameters a statement uses, and a page past the end was a 500.
    total = await pool.fetchval(
        f"SELECT count(*) FROM nodes WHERE $1::interval IS NOT NULL AND {where}", timeout, *args
    )
    return [], int(total)


async def device_row(
    pool: asyncpg.Pool, device_id: str
) -> tuple[asyncpg.Record | None, HeartbeatConfig]:
    """One device's row (None if unknown or removed) and the heartbeat config it was judged by."""
    hb, timeout = await timeout_of(pool)
    row = await pool.fetchrow(
        f"SELECT {_DEVICE} FROM nodes WHERE node_id = $2 AND removed_at IS NULL",
        timeout,
        device_id,
    )
    return row, hb


async def all_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every device that is not removed."""
    _, timeout = await timeout_of(pool)
    return list(await pool.fetch(f"SELECT {_DEVICE} FROM nodes WHERE removed_at IS NULL", timeout))


_ONLINE_COUNT = f"""
SELECT count(*) FILTER (WHERE {online(configured_timeout())}), count(*)
FROM nodes WHERE removed_at IS NULL
"""


async def online_count(pool: asyncpg.Pool) -> tuple[int, int]:
    """How many nodes are online, and how many there are (removed ones left out)."""
    online_nodes, total = await pool.fetchrow(_ONLINE_COUNT)
    return int(online_nodes), int(total)


_BUSY_ONLINE = f"""
SELECT coalesce(sum(downloading), 0), coalesce(sum(muxing), 0), coalesce(sum(uploading), 0)
FROM nodes WHERE {online(configured_timeout())}
"""


async def busy_online(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """What every online node is doing right now: stages downloading, muxing and uploading."""
    row = await pool.fetchrow(_BUSY_ONLINE)
    return int(row[0]), int(row[1]), int(row[2])


_HEARD_WITHIN = f"""
SELECT node_id, hostname, ip, downloading, muxing, uploading, cardinality(running),
       (usage->>'cpu_percent')::float8,
       (usage->>'memory_used')::float8 / nullif((usage->>'memory_total')::float8, 0) * 100,
       {online(configured_timeout())},
       extract(epoch FROM now() - last_heartbeat_at)::float8,
       draining_since, quarantined_since, quarantine_reason, disk_floor
FROM nodes
WHERE removed_at IS NULL AND last_heartbeat_at > now() - $1::interval
ORDER BY 10 DESC, node_id
LIMIT $2
"""


async def heard_within(pool: asyncpg.Pool, within: timedelta, limit: int) -> list[asyncpg.Record]:
    """Nodes heard from within `within`, online first: rows of node_id, hostname, ip,
    downloading, muxing, uploading, units running, CPU %, memory %, online, heartbeat age (s),
    then the columns `work_of` reads (draining_since, quarantined_since, quarantine_reason,
    disk_floor)."""
    return list(await pool.fetch(_HEARD_WITHIN, within, limit))


_ONLINE_BY_NODE = f"""
SELECT node_id, {online(configured_timeout())} AS online
FROM nodes WHERE removed_at IS NULL
"""


async def online_by_node(pool: asyncpg.Pool) -> dict[str, bool]:
    """Whether each node (removed ones left out) is online."""
    return {r["node_id"]: bool(r["online"]) for r in await pool.fetch(_ONLINE_BY_NODE)}


_NODE = """
SELECT node_id, hostname, ip, capabilities, usage, last_heartbeat_at,
       draining_since, quarantined_since, quarantine_reason, disk_floor
FROM nodes WHERE node_id = $1 AND removed_at IS NULL
"""


async def registration(pool: asyncpg.Pool, node_id: str) -> asyncpg.Record | None:
    """A node's registration and latest heartbeat (None if unknown or removed): node_id,
    hostname, ip, capabilities, usage, last_heartbeat_at, and the columns `work_of` reads."""
    row: asyncpg.Record | None = await pool.fetchrow(_NODE, node_id)
    return row


async def removed_at(pool: asyncpg.Pool, node_id: str) -> datetime | None:
    """When an admin last removed the node, if it has not registered again since."""
    at: datetime | None = await pool.fetchval(
        "SELECT removed_at FROM nodes WHERE node_id = $1", node_id
    )
    return at


_RUNNING_UNITS = f"SELECT node_id, running FROM nodes WHERE {working('$1::interval')}"


async def running_units(pool: asyncpg.Pool, within: timedelta) -> dict[str, set[str]]:
    """The units each node still working (`working`, heard from within `within`) runs."""
    return {r["node_id"]: set(r["running"]) for r in await pool.fetch(_RUNNING_UNITS, within)}


class Gate(msgspec.Struct, frozen=True):
    """What a node's download worker follows of its own row: a drain, a quarantine, its probes."""

    draining: bool = False
    quarantined_since: datetime | None = None
    probe_started_at: datetime | None = None
    now: datetime | None = None
    """The database's clock, which the times above are of."""


GATE_OF = """
SELECT draining_since IS NOT NULL, quarantined_since, probe_started_at, now()
FROM nodes WHERE node_id = {}
"""
"""The gate's query, the node id's parameter to fill in (`gate_of` reads its row)."""
_GATE = GATE_OF.format("$1")


async def gate(pool: asyncpg.Pool, node_id: str) -> Gate:
    """The node's drain and quarantine (nothing for a node the table does not hold)."""
    row = await pool.fetchrow(_GATE, node_id)
    return Gate() if row is None else gate_of(tuple(row))


def gate_of(row: Sequence[Any]) -> Gate:
    """The gate from a row of `GATE_OF`'s four columns (all NULL: a node the table lacks)."""
    return Gate(
        draining=bool(row[0]), quarantined_since=row[1], probe_started_at=row[2], now=row[3]
    )


STATE_COLUMNS: dict[node.WorkState, str] = {
    "quarantined": "quarantined_since",
    "draining": "draining_since",
    "disk_floor": "disk_floor",
}
"""The `nodes` column that holds when each work state but "active" holds: not NULL."""


def work_of(row: asyncpg.Record) -> tuple[node.WorkState, str | None]:
    """A `nodes` row's `state` and why it takes no new work (`domain.node.work_state`), from
    its columns draining_since, quarantined_since, quarantine_reason and disk_floor."""
    holds = {s: row[c] is not None for s, c in STATE_COLUMNS.items()}
    draining = holds["draining"]
    state = node.work_state(
        draining, quarantined=holds["quarantined"], disk_floor=holds["disk_floor"]
    )
    reason = node.work_reason(
        draining,
        quarantine_reason=row["quarantine_reason"] if row["quarantined_since"] else None,
        disk_floor=row["disk_floor"],
    )
    return state, reason


def work_state_sql(alias: str) -> str:
    """SQL: the `state` of the `nodes` row `alias` by the same rule as `work_of` (the domain's
    `WORK_STATE_ORDER` over `STATE_COLUMNS`), for SQL readers such as `reporting.nodes`."""
    whens = " ".join(
        f"WHEN {alias}.{STATE_COLUMNS[s]} IS NOT NULL THEN '{s}'" for s in node.WORK_STATE_ORDER
    )
    return f"(CASE {whens} ELSE 'active' END)"


_ONLINE_WORK = f"""
SELECT draining_since, quarantined_since, quarantine_reason, disk_floor
FROM nodes WHERE {online(configured_timeout())}
"""


async def online_by_state(pool: asyncpg.Pool) -> dict[node.WorkState, int]:
    """How many online nodes are in each work state (`work_of`), every state named."""
    counts: dict[node.WorkState, int] = dict.fromkeys(("active", *node.WORK_STATE_ORDER), 0)
    for r in await pool.fetch(_ONLINE_WORK):
        counts[work_of(r)[0]] += 1
    return counts


_DOWNLOAD_SLOTS = f"""
SELECT coalesce(sum((concurrency->>'download')::int), 0) FROM nodes
WHERE {online(configured_timeout())} AND draining_since IS NULL AND quarantined_since IS NULL
"""


async def download_slots(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The download slots of the online nodes that take downloads (not draining, not
    quarantined), by their registrations."""
    slots: int = await conn.fetchval(_DOWNLOAD_SLOTS)
    return slots


_ONLINE_NODE = f"SELECT {online(configured_timeout())} FROM nodes WHERE node_id = $1"


async def is_online(pool: asyncpg.Pool, node_id: str) -> bool:
    """Whether the node is online (`online`): registered, not stopped nor removed, and heard
    from within the heartbeat timeout."""
    return bool(await pool.fetchval(_ONLINE_NODE, node_id))
