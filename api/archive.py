"""The download archive (Spool's, beside seed 002): `GET /archive` lists and searches the
caller's archive, `DELETE /archive/{archive_id}` takes an item out so it may be fetched again."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec
from litestar import Controller, Request, delete, get
from litestar.params import Parameter

from spool.adapters.read_models import archive as archive_rows
from spool.api.auth import Principal
from spool.api.errors import JobApiError
from spool.api.jobs import page_cursor, parse_page_cursor
from spool.api.requests import command_metadata
from spool.api.services import Services
from spool.application import archive as commands
from spool.domain.archive import MAX_ARCHIVE_ID_LENGTH

MAX_QUERY_LENGTH = 200
"""The longest `q` a search takes."""


class ArchiveItemView(msgspec.Struct):
    """One item of the archive; `archived_at` is ms since the epoch."""

    archive_id: str
    extractor: str
    item_id: str
    title: str | None
    url: str
    job_id: str
    archived_at: int


class ArchivePage(msgspec.Struct):
    items: list[ArchiveItemView]
    next_cursor: str | None


class ArchiveRemoved(msgspec.Struct):
    archive_id: str
    job_id: str
    removed: bool


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _view(item: archive_rows.ArchiveItem) -> ArchiveItemView:
    return ArchiveItemView(
        archive_id=item.archive_id,
        extractor=item.extractor,
        item_id=item.item_id,
        title=item.title,
        url=item.url,
        job_id=item.job_id,
        archived_at=_ms(item.archived_at),
    )


def _archive_id(request: Request[Any, Any, Any]) -> str:
    """The URL-encoded archive id after `/archive/`, decoded: read from the raw path, since an
    id may hold `/` (a generic item's URL), which the decoded path no longer tells from the
    path's own."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    encoded = raw.decode("latin-1").split("?", 1)[0].split("/archive/", 1)[-1]
    try:
        archive_id = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        archive_id = ""
    if not archive_id or len(archive_id) > MAX_ARCHIVE_ID_LENGTH:
        raise JobApiError(status_code=404, detail="Archive item not found")
    return archive_id


class ArchiveController(Controller):
    path = "/archive"
    tags = ["archive"]

    @get("/")
    async def list_archive(
        self,
        services: Services,
        principal: Principal,
        q: Annotated[str | None, Parameter(max_length=MAX_QUERY_LENGTH)] = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
        cursor: str | None = None,
    ) -> ArchivePage:
        """The caller's download archive, newest first: every item a job of theirs fetched
        (yt-dlp's archive id, e.g. `youtube dQw4w9WgXcQ`; a direct file's is `generic <URL>`),
        with the job that holds it. A job of an item in it is skipped unless asked with
        `force`. `q`: text the title, URL or archive id contains (case-insensitive); pass
        `next_cursor` as `cursor` for the next page (with the same `q`)."""
        after = parse_page_cursor(cursor) if cursor else None
        found = await archive_rows.page(
            services.pool, principal.account_id, q=q or None, after=after, limit=limit
        )
        last = found.items[-1] if found.items else None
        return ArchivePage(
            items=[_view(i) for i in found.items],
            next_cursor=page_cursor(last.archived_at, last.archive_id)
            if found.more and last
            else None,
        )

    @delete("/{archive_id:path}", status_code=200)
    async def remove_from_archive(
        self, request: Request[Any, Any, Any], services: Services, principal: Principal
    ) -> ArchiveRemoved:
        """Remove an item from the caller's archive (its id URL-encoded): the next job of it
        downloads again. Its file and its job stay. 404 for an item not in the caller's
        archive."""
        archive_id = _archive_id(request)
        meta = command_metadata(request, principal.key_id)
        held = await commands.remove_archived(
            services.store, services.pool, principal.account_id, archive_id, meta
        )
        return ArchiveRemoved(archive_id=held.archive_id, job_id=held.job_id, removed=True)
