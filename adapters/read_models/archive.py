"""The `archive` table: each account's download archive (domain/archive.py), one row per item
it holds, and the reads of it: the node's look-up before a download fetches anything
(`holder`), `GET /archive` (`page`) and `DELETE /archive/{archive_id}` (`item`).

A job's `JobCompleted` puts its item in (the job's stream folded up to it gives the account, the
URL, the title and the archive id its download recorded); the latest completion of an item holds
it. `ArchiveItemRemoved` takes it out. A job without an archive id (a live recording, or one
completed before the archive) puts nothing in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import sqlalchemy as sa

from spool.adapters.event_store import read_prefixes
from spool.adapters.read_models.jobs import like_anywhere
from spool.adapters.read_models.projection import types_of
from spool.adapters.tables import metadata
from spool.domain import archive, job
from spool.domain.aggregate import steps
from spool.domain.events import RecordedEvent

archive_items = sa.Table(
    "archive",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("archive_id", sa.Text, primary_key=True),
    sa.Column("extractor", sa.Text, nullable=False),
    sa.Column("item_id", sa.Text, nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(
        "archive_account_archived_idx",
        "account_id",
        sa.text("archived_at DESC"),
        sa.text("archive_id DESC"),
    ),
)

_PUT = """
INSERT INTO archive (account_id, archive_id, extractor, item_id, title, url, job_id, archived_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (account_id, archive_id) DO UPDATE SET
    extractor = excluded.extractor, item_id = excluded.item_id, title = excluded.title,
    url = excluded.url, job_id = excluded.job_id, archived_at = excluded.archived_at
"""


class ArchiveProjection:
    name = "archive"
    tables: Sequence[sa.Table] = (archive_items,)
    event_types: frozenset[str] = types_of(job.JobCompleted, archive.ArchiveItemRemoved)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        # A completion without an archive id (none recorded, or completed before this field
        # was: their downloads recorded none either) puts nothing in: its history is not read.
        completed = {
            e.stream_id: e.version
            for e in events
            if isinstance(e.data, job.JobCompleted) and e.data.archive_id is not None
        }
        histories = await read_prefixes(conn, completed) if completed else {}
        for e in events:
            ev = e.data
            if isinstance(ev, archive.ArchiveItemRemoved):
                await conn.execute(
                    "DELETE FROM archive WHERE account_id = $1 AND archive_id = $2",
                    ev.account_id,
                    ev.archive_id,
                )
                continue
            if e.stream_id not in completed:
                continue
            done = job.fold(steps(histories.get(e.stream_id, [])))
            if done is None or done.archive_id is None:
                continue
            await conn.execute(
                _PUT,
                done.account_id,
                done.archive_id,
                done.archive_id.split(" ", 1)[0],
                done.item_id or "",
                done.title,
                done.url,
                done.job_id,
                e.recorded_at,
            )


class ArchiveItem(NamedTuple):
    """One item of an account's archive."""

    archive_id: str
    extractor: str
    item_id: str
    title: str | None
    url: str
    job_id: str
    archived_at: datetime


_COLUMNS = "archive_id, extractor, item_id, title, url, job_id, archived_at"


async def holder(
    pool: asyncpg.Pool, account_id: str, archive_id: str, *, besides: str | None = None
) -> str | None:
    """The job that holds `archive_id` in the account's archive (other than `besides`), or
    None: what a download asks before it fetches anything."""
    found: str | None = await pool.fetchval(
        "SELECT job_id FROM archive WHERE account_id = $1 AND archive_id = $2"
        " AND job_id IS DISTINCT FROM $3",
        account_id,
        archive_id,
        besides,
    )
    return found


async def item(pool: asyncpg.Pool, account_id: str, archive_id: str) -> ArchiveItem | None:
    """One item of the account's archive; None when the account's archive does not hold it."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM archive WHERE account_id = $1 AND archive_id = $2",
        account_id,
        archive_id,
    )
    return None if row is None else ArchiveItem(*row)


class ArchivePage(NamedTuple):
    items: list[ArchiveItem]
    more: bool
    """Whether another page follows the last item."""


async def page(
    pool: asyncpg.Pool,
    account_id: str,
    *,
    q: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> ArchivePage:
    """The account's archive, newest first, `after` the (archived_at, archive_id) of a previous
    page's last item; `q`: text the title, URL or archive id contains (case-insensitive)."""
    args: list[Any] = [account_id]
    condition = "account_id = $1"
    if q is not None:
        args.append(like_anywhere(q))
        n = len(args)
        condition += f" AND (title ILIKE ${n} OR url ILIKE ${n} OR archive_id ILIKE ${n})"
    if after is not None:
        args += [after[0], after[1]]
        condition += f" AND (archived_at, archive_id) < (${len(args) - 1}, ${len(args)})"
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM archive WHERE {condition}"
        f" ORDER BY archived_at DESC, archive_id DESC LIMIT ${len(args)}",
        *args,
    )
    return ArchivePage([ArchiveItem(*r) for r in rows[:limit]], len(rows) > limit)
