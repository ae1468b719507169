"""The `pauses` table: one row per paused scope (a batch, an account, the cluster's intake),
and the one read that says which of them hold jobs back (domain/pause.py).

A job's own pause lives on its stream and its `jobs` row (`JobState.paused`); the scopes live
here, so a node about to start a download, the reconciler, the API and a dispatcher choosing
what to enqueue ask one small table, for one job or many at once (`paused_scopes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg
import sqlalchemy as sa

from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import account_policy, batch, cluster_config, job, pause
from spool.domain.events import Event, RecordedEvent

pauses = sa.Table(
    "pauses",
    metadata,
    sa.Column("scope", sa.Text, primary_key=True),
    sa.Column("scope_id", sa.Text, primary_key=True),
    sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
)

_PAUSES: dict[type[Event], bool] = {
    batch.BatchPaused: True,
    batch.BatchResumed: False,
    account_policy.AccountPaused: True,
    account_policy.AccountResumed: False,
    cluster_config.IntakePaused: True,
    cluster_config.IntakeResumed: False,
}
"""Each scope event and whether it pauses (True) or resumes (False)."""


def scope_of(e: RecordedEvent) -> pause.Scope | None:
    """The scope a pause or resume event is about; None for any other event."""
    ev = e.data
    if isinstance(ev, batch.BatchPaused | batch.BatchResumed):
        return ("batch", e.stream_id.removeprefix("batch-"))
    if isinstance(ev, account_policy.AccountPaused | account_policy.AccountResumed):
        return ("account", ev.account_id)
    if isinstance(ev, cluster_config.IntakePaused | cluster_config.IntakeResumed):
        return ("cluster", pause.CLUSTER)
    return None


def pauses_scope(e: RecordedEvent) -> bool:
    """Whether a scope event pauses (True) or resumes (False) its scope."""
    return _PAUSES.get(type(e.data), False)


class PausesProjection:
    name = "pauses"
    tables: Sequence[sa.Table] = (pauses,)
    event_types: frozenset[str] = types_of(*_PAUSES)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            scope = scope_of(e)
            if scope is None:
                continue
            if pauses_scope(e):
                await conn.execute(
                    "INSERT INTO pauses (scope, scope_id, paused_at) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    *scope,
                    e.recorded_at,
                )
            else:
                await conn.execute("DELETE FROM pauses WHERE scope = $1 AND scope_id = $2", *scope)


_PAUSED = """
SELECT scope, scope_id FROM pauses
WHERE (scope, scope_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""


async def paused_among(
    executor: asyncpg.Pool | asyncpg.Connection, wanted: Iterable[pause.Scope]
) -> set[pause.Scope]:
    """Which of `wanted` are paused now, in one query (for a dispatcher holding rows, not
    states: `pause.scopes(account_id, batch_id)` of each)."""
    asked = set(wanted)
    if not asked:
        return set()
    kinds, ids = zip(*asked, strict=True)
    rows = await executor.fetch(_PAUSED, list(kinds), list(ids))
    return {(r["scope"], r["scope_id"]) for r in rows}


async def paused_scopes(
    executor: asyncpg.Pool | asyncpg.Connection, states: Iterable[job.JobState]
) -> set[pause.Scope]:
    """Which of the scopes that could hold these jobs back are paused now, in one query: give
    it to `pause.paused_by` with each job. Jobs under way are not looked up (no scope holds
    them back)."""
    return await paused_among(
        executor,
        (s for state in states if state.status == "Pending" for s in pause.scopes_of(state)),
    )


PAUSED_OF = """
SELECT coalesce(array_agg(p.scope || ' ' || p.scope_id), '{{}}') FROM pauses p
WHERE p.scope = 'cluster' OR (p.scope = 'account' AND p.scope_id = {account})
   OR (p.scope = 'batch' AND p.scope_id = {batch})
"""
"""SQL: the paused scopes that could hold back a job of account `{account}` and batch
`{batch}` (SQL expressions to fill in), as `kind id` texts for `scopes_from`: for reads that
bring them with the job's own (adapters/read_models/jobs.py `gated_row_and_tail`)."""


def scopes_from(texts: Sequence[str]) -> set[pause.Scope]:
    """The scopes of `PAUSED_OF`'s texts."""
    found: set[pause.Scope] = set()
    for text in texts:
        kind, scope_id = text.split(" ", 1)
        found.add((kind, scope_id))  # type: ignore[arg-type]  # the table holds PausedBy kinds
    return found


async def is_paused(executor: asyncpg.Pool | asyncpg.Connection, scope: pause.Scope) -> bool:
    """Whether one scope is paused now, as the projection holds it."""
    found: bool = await executor.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pauses WHERE scope = $1 AND scope_id = $2)", *scope
    )
    return found


_APPLIED = """
SELECT EXISTS (
    SELECT 1 FROM checkpoints WHERE name = 'pauses' AND (tx, position) >= ($1::bigint, $2::bigint)
)
"""


async def applied(executor: asyncpg.Pool | asyncpg.Connection, e: RecordedEvent) -> bool:
    """Whether the projection has applied `e` (a pause or a resume) to the table."""
    done: bool = await executor.fetchval(_APPLIED, e.tx, e.position)
    return done
