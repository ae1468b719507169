"""When a node is online: one rule for every read of the `nodes` table.

A node is online while it has neither stopped nor been removed and its latest heartbeat is
younger than the heartbeat config's `timeout` (`domain.cluster_config.HeartbeatConfig`, which an
admin may change through `/api/v1/config`). It depends on the time of the read, so no projection
can store it: every read that shows a node online or offline (devices, `/ws`, `/metrics`, the
dashboard, task types, the scheduler's offers, `reporting.nodes`) writes this one predicate, with
the timeout the `cluster_config` table holds.
"""

from __future__ import annotations

from spool.domain.cluster_config import HeartbeatConfig


def online(timeout: str, alias: str | None = None) -> str:
    """SQL: whether the `nodes` row (`alias`, if the query names it) is online, `timeout` being
    an SQL interval (a parameter of the heartbeat config's timeout, or `configured_timeout()`)."""
    n = f"{alias}." if alias else ""
    return (
        f"({n}stopped_at IS NULL AND {n}removed_at IS NULL "
        f"AND coalesce({n}last_heartbeat_at > now() - {timeout}, false))"
    )


def configured_timeout(table: str = "cluster_config") -> str:
    """SQL: the heartbeat timeout `table` (the `cluster_config` projection) holds, as an
    interval; the config's default before any change."""
    return (
        "make_interval(secs => coalesce((SELECT (c.settings->>'timeout')::int FROM "
        f"{table} c WHERE c.section = 'heartbeat'), {HeartbeatConfig().timeout}))"
    )
