"""The line of jobs whose download may start, kept in PostgreSQL beside the pipeline's checkpoint.

The pipeline reactor (reactors/pipeline.py) puts a job in line when its run may download
(`join`), sends the next ones to Redis when the nodes have room for them (`lines`, `send`; the
room is judged by what Redis's download queue holds), and takes a job out of line when it is
cancelled or fails before it was sent (`leave`). Every function runs on the reactor's
connection, in the transaction that moves its checkpoint: a batch applied again after a crash
finds the tables as the log left them. Which account's jobs go first is
`domain.fair_share.plan`'s decision; within an account, the line's index orders them
(priority, then their place in the log).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from spool.domain.fair_share import Line


class Entry(NamedTuple):
    """A job run whose download waits for room."""

    job_id: str
    account_id: str
    batch_id: str | None
    run: int
    priority: int
    seq: int
    """The position of the event that put it in line: its place among equal priorities."""
    correlation_id: str | None
    causation_id: str | None


class Sent(NamedTuple):
    """A job taken out of line to be sent to the download queue."""

    job_id: str
    account_id: str
    run: int
    correlation_id: str | None
    causation_id: str | None


# A job joins at most once per run (replays find it there); an account whose line was empty
# joins the fair shares `credit` turns before the latest virtual time of those waiting (so one
# joining after another on credit is not ahead of it too), with none waiting at the latest
# reached, or at its own if that is later (domain/fair_share.py).
_JOIN = """
WITH new AS (
    INSERT INTO dispatch_waiting
        (job_id, account_id, batch_id, run, priority, seq, correlation_id, causation_id, paused)
    SELECT u.*,
           -- A retry keeps the job's own pause (its row has it); a new job has none.
           CASE WHEN u.run > 1 THEN coalesce(
               (SELECT j.state->>'paused' = 'true' FROM jobs j WHERE j.job_id = u.job_id), false
           ) ELSE false END
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::smallint[],
                $6::bigint[], $7::text[], $8::text[])
         AS u(job_id, account_id, batch_id, run, priority, seq, correlation_id, causation_id)
    ON CONFLICT (job_id) DO NOTHING
    RETURNING account_id
), counts AS (
    SELECT account_id, count(*)::int AS n FROM new GROUP BY account_id
)
INSERT INTO dispatch_accounts AS a (account_id, waiting, served, waiting_since)
SELECT c.account_id, c.n,
       coalesce(
           (SELECT max(served) - $9 FROM dispatch_accounts WHERE waiting > 0),
           (SELECT max(served) FROM dispatch_accounts),
           0
       ),
       now()
FROM counts c
ON CONFLICT (account_id) DO UPDATE SET
    waiting = a.waiting + excluded.waiting,
    served = CASE WHEN a.waiting = 0 THEN greatest(a.served, excluded.served) ELSE a.served END,
    waiting_since = CASE WHEN a.waiting = 0 THEN excluded.waiting_since ELSE a.waiting_since END
"""


async def join(conn: asyncpg.Connection, entries: Sequence[Entry], *, credit: float = 0.0) -> None:
    """Put job runs in line (a run already there stays where it is); an account that had none
    waiting may go up to `credit` turns ahead of those that did (domain/fair_share.py)."""
    if entries:
        columns = (list(column) for column in zip(*entries, strict=True))
        await conn.execute(_JOIN, *columns, float(credit))


_LEAVE = """
WITH gone AS (
    DELETE FROM dispatch_waiting w
    USING unnest($1::text[], $2::int[]) AS g(job_id, run)
    WHERE w.job_id = g.job_id AND w.run <= g.run
    RETURNING w.account_id
), counts AS (
    SELECT account_id, count(*)::int AS n FROM gone GROUP BY account_id
)
UPDATE dispatch_accounts a SET waiting = a.waiting - c.n
FROM counts c WHERE a.account_id = c.account_id
"""


async def leave(conn: asyncpg.Connection, runs: Sequence[tuple[str, int]]) -> None:
    """Take job runs (and any earlier run of the same jobs) out of line: they were cancelled
    or failed while they waited."""
    if runs:
        job_ids, numbers = zip(*runs, strict=True)
        await conn.execute(_LEAVE, list(job_ids), list(numbers))


_LINES = """
SELECT a.account_id, a.waiting, a.served
FROM dispatch_accounts a
WHERE a.waiting > 0
  AND NOT EXISTS (
      SELECT 1 FROM pauses p
      WHERE p.scope = 'cluster' OR (p.scope = 'account' AND p.scope_id = a.account_id)
  )
ORDER BY a.waiting_since, a.account_id
"""


async def lines(conn: asyncpg.Connection) -> list[Line]:
    """The accounts with jobs in line, who waited longest first, but for accounts paused or
    all of them while the cluster's intake is (domain/pause.py); each at weight 1 (the caller
    knows the accounts' shares)."""
    return [Line(r[0], r[1], 1, r[2]) for r in await conn.fetch(_LINES)]


_SEND = """
WITH quota AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::float8[]) AS q(account_id, n, served)
), picked AS (
    SELECT w.job_id FROM quota q CROSS JOIN LATERAL (
        SELECT job_id FROM dispatch_waiting w
        WHERE w.account_id = q.account_id
          AND NOT EXISTS (
              SELECT 1 FROM pauses p WHERE p.scope = 'batch' AND p.scope_id = w.batch_id
          )
          AND NOT w.paused
        ORDER BY w.priority DESC, w.seq, w.job_id
        LIMIT q.n
    ) w
), moved AS (
    -- By key, one lookup a job: joined to `picked`, whose size the planner cannot know (each
    -- account's LIMIT is a parameter), it would scan the whole line once it is deep.
    DELETE FROM dispatch_waiting w WHERE w.job_id = ANY (ARRAY(SELECT job_id FROM picked))
    RETURNING w.job_id, w.account_id, w.run, w.priority, w.seq, w.correlation_id, w.causation_id
), counts AS (
    SELECT account_id, count(*)::int AS n FROM moved GROUP BY account_id
), served AS (
    UPDATE dispatch_accounts a SET waiting = a.waiting - c.n, served = q.served
    FROM counts c JOIN quota q USING (account_id)
    WHERE a.account_id = c.account_id
)
SELECT job_id, account_id, run, correlation_id, causation_id FROM moved
ORDER BY account_id, priority DESC, seq, job_id
"""


async def send(
    conn: asyncpg.Connection, order: Sequence[str], served: dict[str, float]
) -> list[Sent]:
    """Take out of line the jobs `order` gives each account (one entry per job, in the order
    they are to go), passing over jobs held by their own pause or their batch's, and record
    each account's new virtual time; the jobs come back in `order`'s order
    (an account with fewer jobs free to go than asked gives what it has)."""
    if not order:
        return []
    counts = Counter(order)
    accounts = list(counts)
    rows = await conn.fetch(
        _SEND, accounts, [counts[a] for a in accounts], [served[a] for a in accounts]
    )
    by_account: dict[str, list[Sent]] = {}
    for r in rows:
        by_account.setdefault(r[1], []).append(Sent(*r))
    for jobs in by_account.values():
        jobs.reverse()
    return [by_account[a].pop() for a in order if by_account.get(a)]


_RECOUNT = """
UPDATE dispatch_accounts a SET waiting = c.n
FROM (
    SELECT d.account_id,
           (SELECT count(*) FROM dispatch_waiting w WHERE w.account_id = d.account_id)::int AS n
    FROM dispatch_accounts d
) c
WHERE a.account_id = c.account_id AND a.waiting <> c.n
"""


async def tidy(conn: asyncpg.Connection) -> None:
    """Mend the accounts' counts where they differ from the line (a missed event)."""
    await conn.execute(_RECOUNT)


async def hold(conn: asyncpg.Connection, held: dict[str, bool]) -> None:
    """Mark waiting jobs paused (True) or not by their own pause: a paused one is passed over."""
    if held:
        await conn.execute(
            "UPDATE dispatch_waiting w SET paused = h.paused "
            "FROM unnest($1::text[], $2::bool[]) AS h(job_id, paused) WHERE w.job_id = h.job_id",
            list(held),
            list(held.values()),
        )


async def waiting_ids(conn: asyncpg.Connection | asyncpg.Pool, job_ids: Sequence[str]) -> set[str]:
    """Which of `job_ids` wait in line (no unit of theirs is in Redis yet)."""
    rows = await conn.fetch(
        "SELECT job_id FROM dispatch_waiting WHERE job_id = ANY($1::text[])", list(job_ids)
    )
    return {r[0] for r in rows}
