"""The live viewers: `viewers` (one row per connected viewer), its list index `viewer_terms`,
the counts per term and harness type `viewer_term_counts`, and the same counts per span of
start times `viewer_term_spans` (which let a deep page start near its place).

A batch is folded per viewer first, so each viewer costs at most one write however many of its
events the batch holds: stats dominate (one per viewer every few seconds), and a viewer's
latest stats of a batch are all that show. Inserts, updates and deletes then go out as one
statement each over arrays (`unnest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import asyncpg
import sqlalchemy as sa

from spool.adapters.tables import metadata
from spool.domain import viewer
from spool.domain.events import RecordedEvent

# Live viewers (domain.viewer): one row per connected viewer, deleted at ViewerDisconnected (the
# history stays in the log). Stats rewrite a row every few seconds, so no index covers a column
# they change: updates stay HOT, and the fill factor leaves them room on the page.
viewers = sa.Table(
    "viewers",
    metadata,
    sa.Column("viewer_id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("harness_type", sa.Text, nullable=False),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Column("application_id", sa.Text, nullable=False),
    sa.Column("stream_key", sa.Text, nullable=False),
    sa.Column("remote_address", sa.Text, nullable=False),
    sa.Column("device_type", sa.Text, nullable=False),
    sa.Column("os_name", sa.Text, nullable=False),
    sa.Column("browser_name", sa.Text, nullable=False),
    sa.Column("country_code", sa.Text, nullable=False),
    sa.Column("country_name", sa.Text, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),  # Unix ms, the seed's startTime
    sa.Column("in_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("out_bandwidth", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("in_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("out_total_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("health_score", sa.Integer, nullable=False, server_default="0"),
    sa.Column("health_grade", sa.Text, nullable=False, server_default="No Data"),
    sa.Column("bitrate", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("measured", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # The shape the row holds, as for `jobs`: an insert stamps domain.viewer.AGGREGATE's
    # snapshot_version, and `snapshots` leaves out a row stamped otherwise.
    sa.Column(
        "snapshot_version",
        sa.SmallInteger,
        nullable=False,
        server_default=sa.text(str(viewer.AGGREGATE.snapshot_version)),
    ),
    postgresql_with={"fillfactor": 80},
)

# The viewer list's index: one row per live viewer and search term (`''` for every viewer, then
# its lower-cased id, stream key, address, country code and country name). Every list query,
# searched or not, is then a range of one narrow index in the list's order, which an index-only
# scan walks from either end. Rows are only inserted and deleted, never updated.
viewer_terms = sa.Table(
    "viewer_terms",
    metadata,
    sa.Column("term", sa.Text, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("viewer_id", sa.Text, nullable=False),
    sa.Column("harness_type", sa.Text, nullable=False),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Index(
        "viewer_terms_order_idx", "term", sa.text("started_at DESC"), "viewer_id", unique=True
    ),
    sa.Index(
        "viewer_terms_harness_idx", "term", "harness_type", sa.text("started_at DESC"), "viewer_id"
    ),
    sa.Index(
        "viewer_terms_viewers_idx",
        "term",
        sa.text("started_at DESC"),
        "viewer_id",
        postgresql_where=sa.text("NOT system"),
    ),
)

# Live viewers per term and harness type, kept in the same transaction as `viewer_terms`, so a
# list's totalItems is a sum of at most ten rows however many viewers match.
viewer_term_counts = sa.Table(
    "viewer_term_counts",
    metadata,
    sa.Column("term", sa.Text, primary_key=True),
    sa.Column("harness_type", sa.Text, primary_key=True),
    sa.Column("live", sa.BigInteger, nullable=False),
)

# Live viewers per term, harness type and span of start times (an hour, and a minute), so a deep
# page finds the minute where it begins by summing a few hundred rows instead of walking the
# list index from its end: OFFSET then only skips within that minute.
viewer_term_spans = sa.Table(
    "viewer_term_spans",
    metadata,
    sa.Column("term", sa.Text, primary_key=True),
    sa.Column("width", sa.BigInteger, primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("harness_type", sa.Text, primary_key=True),
    sa.Column("live", sa.BigInteger, nullable=False),
)

VIEWER_SPAN_WIDTHS: tuple[int, ...] = (3_600_000, 60_000)
"""The spans of start times (ms) in `viewer_term_spans`: hours to find the hour, then minutes."""

ALL = ""
"""The term every live viewer carries: the unsearched list."""


def terms(
    viewer_id: str, stream_key: str, remote_address: str, country_code: str, country_name: str
) -> list[str]:
    """The list-index terms of one viewer: `''` and each searchable field, lower-cased, once."""
    found = [ALL]
    for value in (viewer_id, stream_key, remote_address, country_code, country_name):
        term = value.strip().lower()
        if term and term not in found:
            found.append(term)
    return found


@dataclass
class _Pending:
    """What one batch does to one viewer."""

    connect: viewer.ViewerConnected | None = None
    state: str | None = None
    stats: viewer.ViewerStats | None = None
    bitrate: int | None = None
    version: int = 0
    seen_at: datetime | None = None
    disconnected: bool = False


class _Traffic(NamedTuple):
    """What a viewer's row shows of its traffic and health."""

    in_bandwidth: int
    out_bandwidth: int
    in_total_bytes: int
    out_total_bytes: int
    bitrate: int
    measured: bool
    score: int
    grade: str


def _traffic(
    p: _Pending, harness_type: str, bitrate: int, in_bw: int, out_bw: int, *, measured: bool
) -> _Traffic:
    """The row's traffic once `p` is applied over what it showed (`bitrate`, bandwidths,
    whether it was ever `measured`); the totals are the latest stats' (0 without any)."""
    stats = p.stats
    if p.bitrate is not None:
        bitrate = p.bitrate
    if stats is not None:
        in_bw, out_bw, measured = stats.in_bandwidth, stats.out_bandwidth, True
    score, grade = viewer.health(harness_type, bitrate, in_bw, out_bw, measured)
    return _Traffic(
        in_bw,
        out_bw,
        stats.in_total_bytes if stats else 0,
        stats.out_total_bytes if stats else 0,
        bitrate,
        measured,
        score,
        grade,
    )


# The stamp is this code's, not the column's default, which a migration moves while an older
# release may still insert rows of its own shape. An update leaves the stamp: it rewrites a few
# columns from the row it finds, so a stale row stays stale until the viewer leaves.
_INSERT = f"""
INSERT INTO viewers (viewer_id, state, harness_type, system, application_id, stream_key,
                     remote_address, device_type, os_name, browser_name, country_code,
                     country_name, started_at, in_bandwidth, out_bandwidth, in_total_bytes,
                     out_total_bytes, health_score, health_grade, bitrate, measured, node_id,
                     last_seen_at, version, snapshot_version)
SELECT *, {viewer.AGGREGATE.snapshot_version}
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int[],
            $19::text[], $20::int8[], $21::bool[], $22::text[], $23::timestamptz[], $24::int[])
ON CONFLICT (viewer_id) DO NOTHING
RETURNING viewer_id
"""

_EXISTING = """
SELECT viewer_id, harness_type, bitrate, measured, in_bandwidth, out_bandwidth
FROM viewers WHERE viewer_id = ANY($1::text[])
"""

_UPDATE = """
UPDATE viewers AS v SET
    state = coalesce(u.state, v.state),
    in_bandwidth = u.in_bw, out_bandwidth = u.out_bw,
    in_total_bytes = greatest(v.in_total_bytes, u.in_total),
    out_total_bytes = greatest(v.out_total_bytes, u.out_total),
    bitrate = u.bitrate, measured = u.measured,
    health_score = u.score, health_grade = u.grade,
    last_seen_at = u.seen_at, version = u.version
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::bool[], $9::int[], $10::text[], $11::timestamptz[], $12::int[])
     AS u(viewer_id, state, in_bw, out_bw, in_total, out_total, bitrate, measured, score, grade,
          seen_at, version)
WHERE v.viewer_id = u.viewer_id
"""

_DELETE = """
DELETE FROM viewers WHERE viewer_id = ANY($1::text[])
RETURNING viewer_id, harness_type, stream_key, remote_address, country_code, country_name,
          started_at
"""

_ADD_TERMS = """
INSERT INTO viewer_terms (term, started_at, viewer_id, harness_type, system)
SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::bool[])
"""

_DROP_TERMS = """
DELETE FROM viewer_terms AS t
USING unnest($1::text[], $2::int8[], $3::text[]) AS d(term, started_at, viewer_id)
WHERE t.term = d.term AND t.started_at = d.started_at AND t.viewer_id = d.viewer_id
"""

_COUNT = """
INSERT INTO viewer_term_counts AS c (term, harness_type, live)
SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
ON CONFLICT (term, harness_type) DO UPDATE SET live = c.live + excluded.live
"""

# A term's count row goes when its last viewer does: ids and addresses come and go by the million.
_FORGET = """
DELETE FROM viewer_term_counts
WHERE (term, harness_type) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND live <= 0
"""


_SPAN = """
INSERT INTO viewer_term_spans AS c (term, width, start, harness_type, live)
SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[])
ON CONFLICT (term, width, start, harness_type) DO UPDATE SET live = c.live + excluded.live
"""

_FORGET_SPANS = """
DELETE FROM viewer_term_spans
WHERE (term, width, start, harness_type) IN (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[])
) AND live <= 0
"""


class ViewersProjection:
    name = "viewers"
    tables: Sequence[sa.Table] = (viewers, viewer_terms, viewer_term_counts, viewer_term_spans)
    event_types: frozenset[str] = viewer.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        pending: dict[str, _Pending] = {}
        for e in events:
            ev = e.data
            if not isinstance(
                ev,
                viewer.ViewerConnected
                | viewer.ViewerStats
                | viewer.ViewerStateChanged
                | viewer.ViewerDisconnected,
            ):
                continue
            p = pending.setdefault(ev.viewer_id, _Pending())
            p.version, p.seen_at = e.version, e.recorded_at
            if isinstance(ev, viewer.ViewerConnected):
                p.connect = ev
            elif isinstance(ev, viewer.ViewerStats):
                p.stats = ev
                if ev.bitrate is not None:
                    p.bitrate = ev.bitrate
            elif isinstance(ev, viewer.ViewerStateChanged):
                p.state = ev.state
            else:
                p.disconnected = True
        await self._insert(conn, {k: p for k, p in pending.items() if p.connect is not None})
        later = {k: p for k, p in pending.items() if p.connect is None}
        await self._update(conn, {k: p for k, p in later.items() if not p.disconnected})
        await self._delete(conn, [k for k, p in later.items() if p.disconnected])

    async def _insert(self, conn: asyncpg.Connection, new: dict[str, _Pending]) -> None:
        rows = []
        for p in new.values():
            c = p.connect
            assert c is not None and p.seen_at is not None
            if p.disconnected:
                continue  # came and went within one batch: nothing to show
            t = _traffic(p, c.harness_type, c.bitrate, 0, 0, measured=False)
            rows.append(
                (
                    c.viewer_id,
                    p.state or c.state,
                    c.harness_type,
                    c.harness_type in viewer.SYSTEM_HARNESS_TYPES,
                    c.application_id,
                    c.stream_key,
                    c.remote_address,
                    c.device_type,
                    c.os_name,
                    c.browser_name,
                    c.country_code,
                    c.country_name,
                    c.started_at,
                    t.in_bandwidth,
                    t.out_bandwidth,
                    t.in_total_bytes,
                    t.out_total_bytes,
                    t.score,
                    t.grade,
                    t.bitrate,
                    t.measured,
                    c.node_id,
                    p.seen_at,
                    p.version,
                )
            )
        if not rows:
            return
        inserted = {r["viewer_id"] for r in await conn.fetch(_INSERT, *_columns(rows, 24))}
        added = [new[v].connect for v in inserted]
        await _index(
            conn,
            [
                (a.viewer_id, a.harness_type, a.stream_key, a.remote_address, a.country_code,
                 a.country_name, a.started_at)
                for a in added
                if a is not None
            ],
            +1,
        )  # fmt: skip

    async def _update(self, conn: asyncpg.Connection, changed: dict[str, _Pending]) -> None:
        if not changed:
            return
        rows = []
        # Health needs what the row already holds; stats and state for a viewer with no row
        # (it has disconnected) are dropped here.
        for r in await conn.fetch(_EXISTING, list(changed)):
            p = changed[r["viewer_id"]]
            t = _traffic(
                p,
                r["harness_type"],
                r["bitrate"],
                r["in_bandwidth"],
                r["out_bandwidth"],
                measured=r["measured"],
            )
            rows.append(
                (
                    r["viewer_id"],
                    p.state,
                    t.in_bandwidth,
                    t.out_bandwidth,
                    t.in_total_bytes,
                    t.out_total_bytes,
                    t.bitrate,
                    t.measured,
                    t.score,
                    t.grade,
                    p.seen_at,
                    p.version,
                )
            )
        if rows:
            await conn.execute(_UPDATE, *_columns(rows, 12))

    async def _delete(self, conn: asyncpg.Connection, gone: list[str]) -> None:
        if not gone:
            return
        rows = await conn.fetch(_DELETE, gone)
        await _index(conn, [tuple(r.values()) for r in rows], -1)  # type: ignore[misc]


_Indexed = tuple[str, str, str, str, str, str, int]
"""viewer_id, harness_type, stream_key, remote_address, country_code, country_name, started_at"""


async def _index(conn: asyncpg.Connection, rows: Iterable[_Indexed], delta: int) -> None:
    """Add (delta +1) or remove (-1) viewers' list-index rows, and move the counts with them."""
    term_rows: list[tuple[str, int, str, str, bool]] = []
    counts: dict[tuple[str, str], int] = {}
    spans: dict[tuple[str, int, int, str], int] = {}
    for viewer_id, harness, key, address, code, country, started_at in rows:
        system = harness in viewer.SYSTEM_HARNESS_TYPES
        for term in terms(viewer_id, key, address, code, country):
            term_rows.append((term, started_at, viewer_id, harness, system))
            counts[term, harness] = counts.get((term, harness), 0) + delta
            for width in VIEWER_SPAN_WIDTHS:
                span = (term, width, started_at - started_at % width, harness)
                spans[span] = spans.get(span, 0) + delta
    if not term_rows:
        return
    if delta > 0:
        await conn.execute(_ADD_TERMS, *_columns(term_rows, 5))
    else:
        await conn.execute(_DROP_TERMS, *_columns([t[:3] for t in term_rows], 3))
    keys = list(counts)
    await conn.execute(
        _COUNT, [k[0] for k in keys], [k[1] for k in keys], [counts[k] for k in keys]
    )
    span_keys = list(spans)
    await conn.execute(_SPAN, *_columns([(*k, spans[k]) for k in span_keys], 5))
    if delta < 0:
        await conn.execute(_FORGET, [k[0] for k in keys], [k[1] for k in keys])
        await conn.execute(_FORGET_SPANS, *_columns(span_keys, 4))


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows turned into one list per column, for `unnest`."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


# -- the list --------------------------------------------------------------------------------

DEFAULT_ROWS_PER_PAGE = 10

NON_SYSTEM_TYPES: tuple[str, ...] = tuple(
    t for t in viewer.HARNESS_TYPES if t not in viewer.SYSTEM_HARNESS_TYPES
)


class ViewerQuery(NamedTuple):
    """One list request, checked: what the query function needs."""

    page: int = 1
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE
    search: str = ""
    harness_type: str | None = None
    system_clients: bool | None = None


_COLUMNS = """
v.viewer_id, v.state, v.harness_type, v.application_id, v.stream_key, v.remote_address,
v.device_type, v.os_name, v.browser_name, v.country_code, v.country_name, v.started_at,
v.in_bandwidth, v.out_bandwidth, v.in_total_bytes, v.out_total_bytes, v.health_score,
v.health_grade
"""

# One statement per filter shape, with and without a start-time bound, so each (prepared, later
# generic) plan is an index scan of the one `viewer_terms` index that holds that range in the
# list's order.
_WHERE = {
    "all": "t.term = $1",
    "harness": "t.term = $1 AND t.harness_type = $4",
    "viewers": "t.term = $1 AND NOT t.system",
}


def _page_sql(shape: str, bounded: bool) -> str:
    where = _WHERE[shape]
    if bounded:
        where += f" AND t.started_at < ${5 if shape == 'harness' else 4}"
    return f"""
WITH page AS (
    SELECT t.viewer_id FROM viewer_terms t WHERE {where}
    ORDER BY t.started_at DESC, t.viewer_id OFFSET $2 LIMIT $3
)
SELECT {_COLUMNS} FROM page JOIN viewers v USING (viewer_id)
"""


_PAGES = {(s, b): _page_sql(s, b) for s in _WHERE for b in (False, True)}

DIRECT_OFFSET = 2_000
"""Pages that begin this close to the newest viewer skip rows of the list index; deeper pages
first find the minute they begin in from `viewer_term_spans`, then skip within it."""

_SPANS = """
SELECT start, sum(live)::bigint AS live FROM viewer_term_spans
WHERE term = $1 AND width = $2 AND harness_type = ANY($3::text[]) AND start >= $4 AND start < $5
GROUP BY start ORDER BY start DESC
"""

_TOTAL = """
SELECT coalesce(sum(live), 0)::bigint FROM viewer_term_counts
WHERE term = $1 AND harness_type = ANY($2::text[])
"""


class ViewerPage(NamedTuple):
    total: int
    rows: list[asyncpg.Record]


def _types(q: ViewerQuery) -> tuple[str, ...]:
    """The harness types a query admits."""
    if q.harness_type is not None:
        if q.system_clients is False and q.harness_type in viewer.SYSTEM_HARNESS_TYPES:
            return ()
        return (q.harness_type,)
    if q.system_clients is False:
        return NON_SYSTEM_TYPES
    return viewer.HARNESS_TYPES


async def list_viewers(
    pool: asyncpg.Pool, q: ViewerQuery, *, direct_offset: int = DIRECT_OFFSET
) -> ViewerPage:
    """The total matching `q` and its page of rows, newest first, from one snapshot."""
    types = _types(q)
    if not types:
        return ViewerPage(0, [])
    term = q.search.lower()
    if q.harness_type is not None:
        shape, extra = "harness", [q.harness_type]
    elif q.system_clients is False:
        shape, extra = "viewers", []
    else:
        shape, extra = "all", []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total: int = await conn.fetchval(_TOTAL, term, list(types))
        offset = (q.page - 1) * q.rows_per_page
        if offset >= total:
            return ViewerPage(total, [])
        bound = None
        if offset >= direct_offset:
            bound, offset = await _locate(conn, term, list(types), offset)
        args: list[object] = [term, offset, q.rows_per_page, *extra]
        if bound is not None:
            args.append(bound)
        rows = await conn.fetch(_PAGES[shape, bound is not None], *args)
    rows.sort(key=lambda r: (-r["started_at"], r["viewer_id"]))
    return ViewerPage(total, rows)


async def _locate(
    conn: asyncpg.Connection, term: str, types: list[str], offset: int
) -> tuple[int | None, int]:
    """Where a deep page begins: a start-time bound and the rows to skip below it.

    Hours newest first until the one holding row `offset`, then that hour's minutes: every
    matching viewer at or after the bound was counted, so only the rest of one minute is
    skipped row by row.
    """
    low, high = 0, 2**62
    skipped = 0
    bound: int | None = None
    for width in VIEWER_SPAN_WIDTHS:
        for start, live in await conn.fetch(_SPANS, term, width, types, low, high):
            if skipped + live > offset:
                low, high = start, start + width
                bound = high
                break
            skipped += live
        else:  # the spans do not reach that far (cannot happen in one snapshot): plain skip
            return None, offset
    return bound, offset - skipped


_SNAPSHOTS = """
SELECT viewer_id, harness_type, state, started_at, bitrate, in_bandwidth, out_bandwidth,
       in_total_bytes, out_total_bytes, measured, version
FROM viewers WHERE viewer_id = ANY($1::text[]) AND snapshot_version = $2
"""


async def snapshots(pool: asyncpg.Pool, viewer_ids: list[str]) -> dict[str, viewer.ViewerState]:
    """The rows of these viewers as their states at each row's version (adapters/viewer_store.py
    folds what follows): connected viewers' rows of this code's snapshot version only."""
    rows = await pool.fetch(_SNAPSHOTS, viewer_ids, viewer.AGGREGATE.snapshot_version)
    return {r["viewer_id"]: viewer.ViewerState(**dict(r)) for r in rows}


# No index on last_seen_at: stats rewrite it every few seconds and an index would turn those
# HOT updates into index writes. A pass reads the table once every few seconds instead.
_SILENT = """
SELECT viewer_id, version, in_total_bytes, out_total_bytes FROM viewers
WHERE last_seen_at < now() - $1::interval
ORDER BY last_seen_at LIMIT $2
"""


async def silent_for(pool: asyncpg.Pool, silent: timedelta, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` viewers not heard from for `silent`, longest silent first: viewer_id,
    version, in_total_bytes, out_total_bytes."""
    return list(await pool.fetch(_SILENT, silent, limit))
