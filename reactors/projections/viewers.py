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
from datetime import datetime

import asyncpg
import sqlalchemy as sa

from spool.adapters.tables import (
    VIEWER_SPAN_WIDTHS,
    viewer_term_counts,
    viewer_term_spans,
    viewer_terms,
    viewers,
)
from spool.domain import viewer
from spool.domain.events import RecordedEvent

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


_INSERT = """
INSERT INTO viewers (viewer_id, state, harness_type, system, application_id, stream_key,
                     remote_address, device_type, os_name, browser_name, country_code,
                     country_name, started_at, in_bandwidth, out_bandwidth, in_total_bytes,
                     out_total_bytes, health_score, health_grade, bitrate, measured, node_id,
                     last_seen_at, version)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int[],
                     $19::text[], $20::int8[], $21::bool[], $22::text[], $23::timestamptz[],
                     $24::int[])
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
            stats = p.stats
            bitrate = c.bitrate if p.bitrate is None else p.bitrate
            in_bw = stats.in_bandwidth if stats else 0
            out_bw = stats.out_bandwidth if stats else 0
            score, grade = viewer.health(c.harness_type, bitrate, in_bw, out_bw, stats is not None)
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
                    in_bw,
                    out_bw,
                    stats.in_total_bytes if stats else 0,
                    stats.out_total_bytes if stats else 0,
                    score,
                    grade,
                    bitrate,
                    stats is not None,
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
            stats = p.stats
            bitrate = r["bitrate"] if p.bitrate is None else p.bitrate
            measured = r["measured"] or stats is not None
            in_bw = stats.in_bandwidth if stats else r["in_bandwidth"]
            out_bw = stats.out_bandwidth if stats else r["out_bandwidth"]
            score, grade = viewer.health(r["harness_type"], bitrate, in_bw, out_bw, measured)
            rows.append(
                (
                    r["viewer_id"],
                    p.state,
                    in_bw,
                    out_bw,
                    stats.in_total_bytes if stats else 0,
                    stats.out_total_bytes if stats else 0,
                    bitrate,
                    measured,
                    score,
                    grade,
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
