"""The `batches` table: each batch's folded state (domain.batch) and when it last changed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa

from adapters.tables import batches
from domain import batch
from domain.events import RecordedEvent

COLUMNS = (
    "account_id",
    "kind",
    "status",
    "source_url",
    "title",
    "job_ids",
    "created_at",
    "started_at",
    "updated_at",
    "version",
)


def row(state: batch.BatchState, updated_at: datetime) -> dict[str, Any]:
    """The `batches` row (without its key) for a batch's state."""
    return {
        "account_id": state.account_id,
        "kind": state.kind,
        "status": state.status,
        "source_url": state.source_url,
        "title": state.title,
        "job_ids": list(state.job_ids),
        "created_at": state.created_at,
        "started_at": state.started_at,
        "updated_at": updated_at,
        "version": state.version,
    }


def fold(events: Sequence[RecordedEvent]) -> dict[str, Any] | None:
    """The row one batch stream folds to (None for no events)."""
    state = batch.fold([(e.data, e.recorded_at, e.version) for e in events])
    return None if state is None else row(state, events[-1].recorded_at)


_UPSERT = f"""
INSERT INTO batches (batch_id, {", ".join(COLUMNS)})
SELECT b, a, k, s, u, t, string_to_array(j, chr(31)), c, st, up, v
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::int[])
     AS r(b, a, k, s, u, t, j, c, st, up, v)
ON CONFLICT (batch_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in COLUMNS)}
WHERE batches.version < excluded.version
"""
# job_ids travel joined by the unit separator: unnest cannot take ragged arrays of arrays, and
# a uuid never holds that character.


class BatchesProjection:
    name = "batches"
    tables: Sequence[sa.Table] = (batches,)
    event_types: frozenset[str] = batch.EVENT_TYPES

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        first: dict[str, int] = {}
        for e in events:
            first.setdefault(e.stream_id.removeprefix("batch-"), e.version)
        touched = [batch_id for batch_id, version in first.items() if version > 1]
        states: dict[str, batch.BatchState | None] = {}
        updated: dict[str, datetime] = {}
        if touched:
            for r in await conn.fetch(
                "SELECT b.* FROM unnest($1::text[]) AS t(batch_id) JOIN batches b USING (batch_id)",
                touched,
            ):
                states[r["batch_id"]] = batch.BatchState(
                    batch_id=r["batch_id"],
                    account_id=r["account_id"],
                    kind=r["kind"],
                    job_ids=list(r["job_ids"]),
                    status=r["status"],
                    source_url=r["source_url"],
                    title=r["title"],
                    created_at=r["created_at"],
                    started_at=r["started_at"],
                    version=r["version"],
                )
        for e in events:
            batch_id = e.stream_id.removeprefix("batch-")
            current = states.get(batch_id)
            if current is not None and e.version <= current.version:
                continue  # already applied (a rebuild overlapping the live runner)
            states[batch_id] = batch.evolve(current, e.data, e.recorded_at, e.version)
            updated[batch_id] = e.recorded_at
        rows = [
            (batch_id, row(s, updated[batch_id]))
            for batch_id, s in states.items()
            if s is not None and batch_id in updated
        ]
        if not rows:
            return
        await conn.execute(
            _UPSERT,
            [b for b, _ in rows],
            *([chr(31).join(r[c]) if c == "job_ids" else r[c] for _, r in rows] for c in COLUMNS),
        )
