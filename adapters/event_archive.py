"""Heartbeat days out of the database into files, and back: see docs/retention.md.

Archive: each heartbeat day before a date is detached from `events` (CONCURRENTLY: readers and
writers go on), written to `events-heartbeat-<YYYY-MM-DD>.jsonl.gz` (one event a line, every
column), recorded in `event_archives`, and dropped. Each step can be run again: a day detached
but not yet dropped is picked up by the next run. Restore: the file's rows go into a fresh
table shaped like `events`, which is then attached as that day's partition, positions and tx
ids as they were, so every reader sees the log exactly as before the archive.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, BinaryIO

import asyncpg
import msgspec

from spool.adapters import event_partitions
from spool.domain import node


class ArchiveError(RuntimeError):
    """An archive or restore that cannot go ahead; the message says why and what to do."""


class ArchivedEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One line of an archive file: every column of one `events` row."""

    position: int
    tx: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: msgspec.Raw
    metadata: msgspec.Raw
    recorded_at: Annotated[datetime, msgspec.Meta(tz=True)]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ArchivedEvent).decode

FILE_PREFIX = "events-heartbeat-"
CHUNK = 5000


def file_name(day: date) -> str:
    """The archive file of one day."""
    return f"{FILE_PREFIX}{day.isoformat()}.jsonl.gz"


@dataclass(frozen=True)
class Archived:
    """What one day's archive holds."""

    day: date
    file: Path | None
    events: int


@dataclass(frozen=True)
class Restored:
    """What a restore did: `events` rows back, or none when the day was already there."""

    day: date
    events: int
    already: bool


@dataclass(frozen=True)
class Outstanding:
    """An archived day not restored: its heartbeats are out of the log."""

    day: date
    file: str


async def outstanding(db: asyncpg.Pool | asyncpg.Connection) -> list[Outstanding]:
    """Days archived and not restored, oldest first."""
    rows = await db.fetch(
        "SELECT day, file FROM event_archives WHERE restored_at IS NULL ORDER BY day"
    )
    return [Outstanding(r["day"], r["file"]) for r in rows]


# -- archive ---------------------------------------------------------------------------------


async def _lagging(conn: asyncpg.Connection, table: str, readers: Sequence[str]) -> list[str]:
    """The `readers` not yet past `table` (one that never ran neither), and rebuilds of them
    (`a+b@rebuild`) still inside it."""
    last = await conn.fetchrow(
        f"SELECT tx::text::bigint AS tx, position FROM {table} "
        "ORDER BY tx DESC, position DESC LIMIT 1"
    )
    if last is None:
        return []
    past = {
        r["name"]
        for r in await conn.fetch(
            "SELECT name FROM checkpoints WHERE (tx, position) >= ($1, $2) AND name = ANY($3)",
            last["tx"],
            last["position"],
            list(readers),
        )
    }
    rebuilds = await conn.fetch(
        "SELECT name FROM checkpoints WHERE (tx, position) < ($1, $2) AND name LIKE '%@rebuild' "
        "AND string_to_array(split_part(name, '@', 1), '+') && $3::text[] ORDER BY name",
        last["tx"],
        last["position"],
        list(readers),
    )
    return [r for r in readers if r not in past] + [r["name"] for r in rebuilds]


def _lines(rows: list[asyncpg.Record]) -> Iterator[bytes]:
    for r in rows:
        yield (
            _encode(
                ArchivedEvent(
                    position=r[0],
                    tx=r[1],
                    stream_id=r[2],
                    version=r[3],
                    type=r[4],
                    schema_version=r[5],
                    data=msgspec.Raw(r[6]),
                    metadata=msgspec.Raw(r[7]),
                    recorded_at=r[8],
                )
            )
            + b"\n"
        )


async def _drain(buffer: io.BytesIO, out: BinaryIO) -> None:
    """Move what the compressor has produced so far to the file, off the event loop."""
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    if data:
        await asyncio.to_thread(out.write, data)


def _sync_close(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()


async def _write(conn: asyncpg.Connection, table: str, path: Path) -> tuple[int, int, int, str]:
    """Write a detached day's rows to `path` (atomically); (count, first, last, sha256)."""
    tmp = path.with_name(path.name + ".partial")
    count, first, last = 0, 0, 0
    buffer = io.BytesIO()
    out: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
    try:
        # mtime 0: the same rows always make the same file (and digest).
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
            async with conn.transaction():
                cursor = await conn.cursor(
                    "SELECT position, tx::text::bigint, stream_id, version, type, schema_version, "
                    f"data, metadata, recorded_at FROM {table} ORDER BY position"
                )
                while rows := await cursor.fetch(CHUNK):
                    gz.writelines(_lines(rows))
                    if not count:
                        first = rows[0][0]
                    count += len(rows)
                    last = rows[-1][0]
                    await _drain(buffer, out)
        await _drain(buffer, out)  # the gzip trailer, written on close
    finally:
        await asyncio.to_thread(_sync_close, out)
    await asyncio.to_thread(os.replace, tmp, path)
    blob = await asyncio.to_thread(path.read_bytes)
    return count, first, last, hashlib.sha256(blob).hexdigest()


async def archive(
    pool: asyncpg.Pool, before: date, directory: Path, today: date, readers: Sequence[str]
) -> list[Archived]:
    """Archive every heartbeat day before `before` (which must lie before `today`).

    `readers` name the checkpoints that follow heartbeats: each must be past a day first.
    """
    if before >= today:
        raise ArchiveError(
            f"--before {before} is not in the past: heartbeats of today ({today}) and later are "
            "still being written; give a date up to today"
            f" - 1 ({date.fromordinal(today.toordinal() - 1)})"
        )
    days = [t for t in await event_partitions.day_tables(pool) if t.day < before]
    async with pool.acquire() as conn:
        for t in days:
            if t.attached and not t.detach_pending:
                behind = await _lagging(conn, t.table, readers)
                if behind:
                    rebuilds = [b for b in behind if b.endswith("@rebuild")]
                    hint = (
                        "; a rebuild is running or was interrupted: let it finish, or run "
                        "`spool projections rebuild` again"
                        if rebuilds
                        else ""
                    )
                    raise ArchiveError(
                        f"heartbeats of {t.day} are not yet read by {', '.join(behind)}: "
                        f"let them catch up (is `spool up` running?) and archive again{hint}"
                    )
        for t in days:
            if t.detach_pending:  # an earlier DETACH ... CONCURRENTLY was interrupted
                await conn.execute(f"ALTER TABLE events DETACH PARTITION {t.table} FINALIZE")
            elif t.attached:
                # Outside a transaction, as CONCURRENTLY requires: appends and reads go on.
                await conn.execute(f"ALTER TABLE events DETACH PARTITION {t.table} CONCURRENTLY")
        directory.mkdir(parents=True, exist_ok=True)
        done: list[Archived] = []
        for t in days:
            count = await conn.fetchval(f"SELECT count(*) FROM {t.table}")
            if not count:
                await conn.execute(f"DROP TABLE {t.table}")
                done.append(Archived(t.day, None, 0))
                continue
            path = directory / file_name(t.day)
            count, first, last, digest = await _write(conn, t.table, path)
            async with conn.transaction():
                await conn.execute(
                    """
                    INSERT INTO event_archives (day, file, events, first_position, last_position,
                                                sha256)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (day) DO UPDATE SET file = $2, events = $3, first_position = $4,
                        last_position = $5, sha256 = $6, archived_at = now(), restored_at = NULL
                    """,
                    t.day,
                    str(path.resolve()),
                    count,
                    first,
                    last,
                    digest,
                )
                await conn.execute(f"DROP TABLE {t.table}")
            done.append(Archived(t.day, path, count))
    return done


# -- restore ---------------------------------------------------------------------------------


def read_file(path: Path) -> tuple[date, list[ArchivedEvent], str]:
    """An archive file's day, its events and its sha256; ArchiveError if it is not one."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path} is not a complete gzip file: {exc}") from None
    events: list[ArchivedEvent] = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            events.append(_decode(line))
        except msgspec.DecodeError as exc:
            raise ArchiveError(f"{path}, line {n}: not an archived event: {exc}") from None
    if not events:
        raise ArchiveError(f"{path} holds no events")
    days = {node.heartbeat_day(e.stream_id) for e in events}
    if None in days or len(days) != 1:
        raise ArchiveError(f"{path} is not one day of heartbeat streams")
    positions = {e.position for e in events}
    if len(positions) != len(events):
        raise ArchiveError(f"{path} repeats positions")
    (day,) = days
    assert day is not None
    return day, events, hashlib.sha256(blob).hexdigest()


_INSERT = """
INSERT INTO {table} (position, tx, stream_id, version, type, schema_version, data, metadata,
                     recorded_at)
OVERRIDING SYSTEM VALUE
SELECT p, t::text::xid8, s, v, ty, sv, d, m, r
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::int2[],
            $7::jsonb[], $8::jsonb[], $9::timestamptz[]) AS e(p, t, s, v, ty, sv, d, m, r)
"""


async def _insert(conn: asyncpg.Connection, table: str, events: list[ArchivedEvent]) -> None:
    sql = _INSERT.format(table=table)
    for i in range(0, len(events), CHUNK):
        part = events[i : i + CHUNK]
        await conn.execute(
            sql,
            [e.position for e in part],
            [e.tx for e in part],
            [e.stream_id for e in part],
            [e.version for e in part],
            [e.type for e in part],
            [e.schema_version for e in part],
            [bytes(e.data) for e in part],
            [bytes(e.metadata) for e in part],
            [e.recorded_at for e in part],
        )


async def restore(pool: asyncpg.Pool, path: Path) -> Restored:
    """Bring an archived day back as it was; a day already back is left alone."""
    day, events, digest = read_file(path)
    table = event_partitions.table_name(day)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(event_partitions.LOCK)
        record = await conn.fetchrow(
            "SELECT events, sha256, restored_at FROM event_archives WHERE day = $1", day
        )
        if record is not None and record["sha256"] != digest:
            raise ArchiveError(
                f"{path} is not the archive recorded for {day} ({record['events']} events, "
                f"sha256 {record['sha256'][:12]}...): it was changed or comes from elsewhere"
            )
        held = {t.day: t for t in await event_partitions.day_tables(conn)}.get(day)
        if held is not None and not held.attached:
            raise ArchiveError(
                f"heartbeats of {day} are being archived (table {table} is detached): "
                "run `spool events archive` again to finish, then restore"
            )
        positions = [e.position for e in events]
        present = await conn.fetchval(
            "SELECT count(*) FROM events WHERE position = ANY($1::bigint[])", positions
        )
        if present == len(events):
            return Restored(day, 0, already=True)
        if present:
            raise ArchiveError(
                f"{present} of the {len(events)} events in {path} are in the log already: "
                "refusing a partial restore"
            )
        if held is None:
            await event_partitions.create_day_table(conn, day)
            await _insert(conn, table, events)
            await event_partitions.attach_day_table(conn, day)
        else:  # the day's partition was made again since (a late beat): add the rows to it
            await _insert(conn, table, events)
        await conn.execute("UPDATE event_archives SET restored_at = now() WHERE day = $1", day)
    return Restored(day, len(events), already=False)
