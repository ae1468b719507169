"""The `subscriptions` read model: each subscription's folded state (domain/subscription.py),
as `GET /subscriptions` lists it and the checks reactor finds the due ones; and its checks'
history (`subscription_checks`), written in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from spool.adapters.event_store import EVENT_COLUMNS
from spool.adapters.read_models.state_projection import Field, StateProjection, StateRows
from spool.adapters.tables import metadata
from spool.domain import subscription
from spool.domain.events import RecordedEvent

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("next_check_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", pg.JSONB, nullable=False),
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(subscription.AGGREGATE.snapshot_version)),
    ),
    sa.Index(
        "subscriptions_account_created_idx",
        "account_id",
        sa.text("created_at DESC"),
        "subscription_id",
    ),
    sa.Index(
        "subscriptions_due_idx", "next_check_at", postgresql_where=sa.text("status = 'active'")
    ),
)

subscription_checks = sa.Table(
    "subscription_checks",
    metadata,
    sa.Column("check_id", sa.Text, primary_key=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("seen", sa.Integer),
    sa.Column("new", sa.Integer),
    sa.Column("job_ids", pg.JSONB),
    sa.Column("error", sa.Text),
    sa.Index(
        "subscription_checks_started_idx",
        "subscription_id",
        sa.text("started_at DESC"),
        "check_id",
    ),
)

ROWS = StateRows(
    subscriptions,
    Field("subscription_id", ("subscription_id",), fixed=True),
    [
        Field("account_id", ("account_id",), fixed=True),
        Field("status", ("status",), computed=True),
        Field("next_check_at", ("next_check_at",), "timestamptz", computed=True),
        Field("created_at", ("created_at",), "timestamptz", fixed=True),
        Field("updated_at", ("updated_at",), "timestamptz"),
        Field("version", ("version",), "int", default=0),
        Field("state", (), "jsonb"),
    ],
    subscription.SubscriptionState,
    snapshot=subscription.AGGREGATE,
)

SUBSCRIPTIONS = StateProjection(
    name="subscriptions",
    stream=subscription.stream_id(""),
    event_types=subscription.EVENT_TYPES,
    evolve=subscription.evolve,
    rows=ROWS,
)

_STARTED = """
INSERT INTO subscription_checks (check_id, subscription_id, status, started_at)
VALUES ($1, $2, 'running', $3) ON CONFLICT (check_id) DO NOTHING
"""
_ABANDONED = """
UPDATE subscription_checks SET status = 'abandoned', error = 'its process went silent'
WHERE check_id = $1 AND status = 'running'
"""
_FINISHED = """
UPDATE subscription_checks
SET status = 'finished', finished_at = $2, seen = $3, new = $4, job_ids = $5::jsonb, error = $6
WHERE check_id = $1
"""
_encode = msgspec.json.Encoder().encode


class SubscriptionsProjection:
    name = "subscriptions"
    tables: Sequence[sa.Table] = (subscriptions, subscription_checks)
    event_types: frozenset[str] = subscription.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        await SUBSCRIPTIONS.apply(conn, events)
        for e in events:
            ev = e.data
            if isinstance(ev, subscription.CheckStarted):
                key = SUBSCRIPTIONS.key(e.stream_id)
                if ev.took_over is not None:
                    await conn.execute(_ABANDONED, ev.took_over)
                await conn.execute(_STARTED, ev.check_id, key, ev.started_at)
            elif isinstance(ev, subscription.CheckFinished):
                job_ids = _encode([n.job_id for n in ev.new])
                await conn.execute(
                    _FINISHED, ev.check_id, ev.finished_at, ev.seen, len(ev.new), job_ids, ev.error
                )


# -- queries ---------------------------------------------------------------------------------

# The row as a snapshot and the stream's events after it in one round trip, as
# adapters/read_models/jobs.py `row_and_tail` reads a job: a subscription's stream grows by a
# check every few minutes, and every check and command reads it.
_ROW_AND_TAIL = f"""
SELECT s.state, t.*
FROM (SELECT 1) AS one
LEFT JOIN subscriptions s ON s.subscription_id = $1 AND s.snapshot_version = $3
LEFT JOIN LATERAL (
    SELECT {EVENT_COLUMNS} FROM events
    WHERE stream_id = $2 AND version > coalesce(s.version, 0)
    ORDER BY version
) AS t ON true
ORDER BY t.version
"""


class RowAndTail(NamedTuple):
    state: subscription.SubscriptionState | None
    tail: list[Sequence[Any]]


async def row_and_tail(
    executor: asyncpg.Pool | asyncpg.Connection, subscription_id: str
) -> RowAndTail:
    """The subscription's row (if of this code's snapshot version) and the later events of its
    stream (every event without such a row), in version order."""
    rows = await executor.fetch(
        _ROW_AND_TAIL,
        subscription_id,
        subscription.stream_id(subscription_id),
        subscription.AGGREGATE.snapshot_version,
    )
    state = ROWS.decode(rows[0][0]) if rows[0][0] is not None else None
    return RowAndTail(state, [tuple(r)[1:] for r in rows if r[1] is not None])


class Page(NamedTuple):
    states: list[subscription.SubscriptionState]
    more: bool
    last: tuple[datetime, str] | None


async def page(
    pool: asyncpg.Pool, account_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> Page:
    """An account's subscriptions (not deleted), newest first, after a previous page's last."""
    args: list[Any] = [account_id, limit + 1]
    condition = "account_id = $1 AND status <> 'deleted'"
    if after is not None:
        condition += " AND (created_at, subscription_id) < ($3, $4)"
        args += list(after)
    rows = await pool.fetch(
        f"SELECT state, created_at, subscription_id FROM subscriptions WHERE {condition}"
        " ORDER BY created_at DESC, subscription_id DESC LIMIT $2",
        *args,
    )
    shown = rows[:limit]
    return Page(
        [ROWS.decode(r[0]) for r in shown],
        len(rows) > limit,
        (shown[-1][1], shown[-1][2]) if shown else None,
    )


class Due(NamedTuple):
    subscription_id: str
    account_id: str


async def due(pool: asyncpg.Pool, now: datetime, stale_before: datetime, limit: int) -> list[Due]:
    """Up to `limit` active subscriptions whose check is due at `now` (as far as the rows know),
    longest due first; a running check started before `stale_before` is due again."""
    rows = await pool.fetch(
        """
        SELECT subscription_id, account_id FROM subscriptions
        WHERE status = 'active' AND next_check_at <= $1
          AND (NOT state ? 'running'
               OR (state->'running'->>'started_at')::timestamptz < $2)
        ORDER BY next_check_at, subscription_id LIMIT $3
        """,
        now,
        stale_before,
        limit,
    )
    return [Due(r[0], r[1]) for r in rows]


async def with_retention(pool: asyncpg.Pool, *, after: str | None, limit: int) -> list[str]:
    """Up to `limit` ids of subscriptions (active or paused) that have a retention, in id
    order after `after` (None: from the first): a retention pass goes round them a page at a
    time."""
    rows = await pool.fetch(
        """
        SELECT subscription_id FROM subscriptions
        WHERE status <> 'deleted' AND state ? 'retention'
          AND ($1::text IS NULL OR subscription_id > $1)
        ORDER BY subscription_id LIMIT $2
        """,
        after,
        limit,
    )
    return [r[0] for r in rows]


class CheckRow(NamedTuple):
    check_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    seen: int | None
    new: int | None
    job_ids: list[str]
    error: str | None


async def checks(
    pool: asyncpg.Pool,
    subscription_id: str,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[list[CheckRow], bool]:
    """A subscription's checks, newest first, after a previous page's last; whether more follow."""
    args: list[Any] = [subscription_id, limit + 1]
    condition = "subscription_id = $1"
    if after is not None:
        condition += " AND (started_at, check_id) < ($3, $4)"
        args += list(after)
    rows = await pool.fetch(
        "SELECT check_id, status, started_at, finished_at, seen, new, job_ids, error"
        f" FROM subscription_checks WHERE {condition}"
        " ORDER BY started_at DESC, check_id DESC LIMIT $2",
        *args,
    )
    found = [
        CheckRow(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            msgspec.json.decode(r[6]) if r[6] is not None else [],
            r[7],
        )
        for r in rows[:limit]
    ]
    return found, len(rows) > limit
