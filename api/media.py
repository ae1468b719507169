"""Playback of finished outputs: `GET /media/{job_id}` (progressive, with Range) and HLS.

Who may play: the job's owner, by API key (`x-api-key` / `Authorization: Bearer`) or by a
`?token=<JWT>` from `POST /api/auth/token`, so a player or `curl` can be handed a plain URL.
Anyone else's job answers 404, as in the job API, whose `{"error": ...}` shape this keeps.

Every playback is a viewer. A progressive download is one GENERIC_PROGRESSIVE_VIEWER per request
that sends bytes, counted chunk by chunk as the client takes them. HLS is many small requests,
so its viewer (GENERIC_HLS_VIEWER) is one per job, client address and User-Agent: opened by the
first request, fed by every playlist and segment, and closed by a sweeper once no request came
for `viewer_timeout` seconds.

When a job's file is deleted, however and wherever (`api/deleted_files.py`), `Media.forget` drops
its HLS rendition and ends its HLS viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, head
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from spool.adapters.account_storage import AccountStorages
from spool.adapters.event_store import EventStore
from spool.adapters.file_links import KINDS, link_is_valid
from spool.adapters.job_store import load_job
from spool.adapters.media_cache import (
    PLAYLIST,
    HlsBusy,
    HlsCache,
    HlsFailed,
    HlsRemoved,
    HlsTooLarge,
)
from spool.adapters.settings import Settings
from spool.adapters.storage import ObjectInfo, ObjectStorage, StorageError
from spool.adapters.tokens import TokenError, verify_token
from spool.adapters.viewer_sessions import ViewerRecorder, ViewerSession
from spool.api.auth import key_alive, lookup, presented_key
from spool.api.deleted_files import DeletedFiles
from spool.api.errors import JobApiError
from spool.api.services import Services
from spool.api.viewer_sources import client_address, close_viewer, open_viewer
from spool.domain import job, viewer

_MEDIA_TYPES = {
    "mp4": "video/mp4",
    "m4a": "audio/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "ts": "video/mp2t",
}
_HLS_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
}
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


# -- who is asking, and for what ---------------------------------------------------------------


class Caller:
    """An authenticated player: its account, and the token it came with (to pass on in URLs)."""

    __slots__ = ("account_id", "token")

    def __init__(self, account_id: str, token: str | None) -> None:
        self.account_id = account_id
        self.token = token


async def _caller(request: Request[Any, Any, Any], services: Services) -> Caller:
    """The caller by API key, else by `?token=`; 401 in the job API's words otherwise."""
    key = presented_key(request)
    if key is not None:
        principal = await lookup(services.keys, key)
        if principal is None:
            raise JobApiError(status_code=401, detail="Invalid API Key")
        return Caller(principal.account_id, None)
    token = request.query_params.get("token")
    if not token:
        raise JobApiError(status_code=401, detail="Missing x-api-key header or token")
    try:
        claims = verify_token(services.token_key, token)
    except TokenError as exc:
        raise JobApiError(status_code=401, detail=f"Invalid token: {exc}") from None
    if not await key_alive(services.pool, claims.key_id):
        raise JobApiError(
            status_code=401, detail="Invalid token: its API key is revoked or expired"
        )
    return Caller(claims.account_id, token)


async def _finished_job(services: Services, job_id: str, caller: Caller) -> job.JobState:
    """The caller's completed job with its file still stored; 404 / 409 otherwise."""
    try:
        jid = str(uuid.UUID(job_id))
    except ValueError:
        raise JobApiError(status_code=404, detail="Job not found") from None
    state = await load_job(services.store, jid)
    if state is None or state.account_id != caller.account_id:
        raise JobApiError(status_code=404, detail="Job not found")
    if state.status != "Completed" or state.key is None:
        raise JobApiError(status_code=409, detail=f"Job is not completed (status: {state.status})")
    if state.file_deleted:
        raise JobApiError(status_code=404, detail="The job's file was deleted")
    return state


async def _stored(
    services: Services, state: job.JobState, key: str
) -> tuple[ObjectStorage, ObjectInfo]:
    """The storage holding the job's file `key`, and the file's size."""
    storages: AccountStorages = services.storages
    try:
        storage = await storages.for_job(state.account_id, state.storage_override)
        info = await storage.head(key)
    except StorageError as exc:
        raise JobApiError(status_code=502, detail=f"Storage refused the read: {exc}") from None
    if info is None:
        raise JobApiError(status_code=404, detail="The job's file is gone from storage")
    return storage, info


def media_type(key: str) -> str:
    """The Content-Type of an output, by its extension."""
    ext = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return _MEDIA_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


# -- Range -------------------------------------------------------------------------------------


class Unsatisfiable(Exception):
    """A Range no byte of the object falls in: 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive `(first, last)` bytes a `Range` header asks of `size`; None: the whole.

    One range only (`bytes=a-b`, `bytes=a-`, `bytes=-n`). A header that is malformed or asks
    for several ranges is ignored, as RFC 9110 lets a server do: the whole object is sent.
    """
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None or not (m.group(1) or m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # a suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(int(last) if last else size - 1, size - 1)


# -- progressive -------------------------------------------------------------------------------


async def _counted(
    chunks: AsyncGenerator[bytes, None], session: ViewerSession | None
) -> AsyncGenerator[bytes, None]:
    """Yield `chunks`, counting each one once the server came back for the next: it was sent."""
    try:
        async for chunk in chunks:
            yield chunk
            if session is not None:
                session.add_out(len(chunk))
    finally:
        close_viewer(session)
        with contextlib.suppress(Exception):
            await chunks.aclose()


async def _finish(body: AsyncGenerator[bytes, None], session: ViewerSession | None) -> None:
    """After the response: end the body (if a disconnect left it suspended) and the viewer."""
    with contextlib.suppress(Exception):
        await body.aclose()
    close_viewer(session)


def _file_headers(key: str, size: int, *, attachment: bool = False) -> dict[str, str]:
    name = key.rsplit("/", 1)[-1]
    disposition = "attachment" if attachment else "inline"
    return {
        "Accept-Ranges": "bytes",
        "Content-Length": str(size),
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "private, no-transform",
    }


async def _play(
    request: Request[Any, Any, Any], services: Services, job_id: str, *, send: bool
) -> Response[Any]:
    caller = await _caller(request, services)
    state = await _finished_job(services, job_id, caller)
    assert state.key is not None
    return await _serve(request, services, state, state.key, send=send)


async def _serve(
    request: Request[Any, Any, Any],
    services: Services,
    state: job.JobState,
    key: str,
    *,
    send: bool,
    attachment: bool = False,
) -> Response[Any]:
    """One of a job's stored files, whole or the `Range` asked, counted as a viewer."""
    storage, info = await _stored(services, state, key)
    kind = media_type(key)
    try:
        wanted = byte_range(request.headers.get("range"), info.size)
    except Unsatisfiable:
        return Response(
            {"error": f"Range not satisfiable: the file has {info.size} bytes"},
            status_code=416,
            headers={"Content-Range": f"bytes */{info.size}", "Accept-Ranges": "bytes"},
        )
    start, end = wanted if wanted is not None else (0, info.size - 1)
    headers = _file_headers(key, end - start + 1, attachment=attachment)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    status = 206 if wanted is not None else 200
    if not send or end < start:  # HEAD, or an empty file: nothing to stream
        return Response(b"", status_code=status, headers=headers, media_type=kind)
    session = await open_viewer(
        services.viewers,
        request,
        harness_type="GENERIC_PROGRESSIVE_VIEWER",
        state_name="PLAYING",
        stream_key=state.job_id,
        application_id=state.account_id,
        bitrate=viewer.bitrate(state.file_size, state.duration),
    )
    whole = start == 0 and end == info.size - 1
    body = _counted(storage.read(key, start, None if whole else end), session)
    return Stream(
        body,
        status_code=status,
        headers=headers,
        media_type=kind,
        background=BackgroundTask(_finish, body, session),
    )


@get("/{job_id:str}", summary="Play or download a finished output (HTTP Range supported)")
async def media_file(
    request: Request[Any, Any, Any], services: Services, job_id: str
) -> Response[Any]:
    """The job's output file: 200 whole, 206 for a `Range`, 416 when no byte is in range."""
    return await _play(request, services, job_id, send=True)


@head("/{job_id:str}", summary="Size and type of a finished output")
async def media_file_head(
    request: Request[Any, Any, Any], services: Services, job_id: str
) -> Response[None]:
    """The headers `GET` would answer with, and no body."""
    return await _play(request, services, job_id, send=False)


# -- HLS ---------------------------------------------------------------------------------------


class _HlsViewer:
    __slots__ = ("last_seen", "session")

    def __init__(self, session: ViewerSession) -> None:
        self.session = session
        self.last_seen = time.monotonic()


FORGET_WAIT = 5.0
"""Longest a delete of a file answered here waits for this process to drop its rendition: the
log makes the deletion readable as soon as no older transaction is open."""


class Media:
    """This app's HLS renditions and the HLS viewers it holds."""

    def __init__(self, settings: Settings, recorder: ViewerRecorder, store: EventStore) -> None:
        self.settings = settings
        self.recorder = recorder
        self.store = store
        self.deletions: DeletedFiles | None = None
        """Follows deleted files once this process made its cache (api/deleted_files.py)."""
        self.timeout = settings.viewer_timeout
        self.viewers: dict[tuple[str, str, str], _HlsViewer] = {}
        self._opening = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None

    @functools.cached_property
    def cache(self) -> HlsCache:
        """The renditions on disk, made on first use: making it tidies what a crash left."""
        settings = self.settings
        made = HlsCache(
            settings.data_dir / "media-cache" / "hls",
            max_bytes=settings.hls_cache_bytes,
            max_builds=settings.hls_builds,
            max_builds_per_account=settings.hls_builds_per_account,
            build_wait=settings.hls_build_wait,
        )
        # From now on this process holds renditions: it drops those whose file is deleted.
        self.deletions = DeletedFiles(self.store, self.forget)
        self.deletions.start()
        return made

    async def viewer(
        self, request: Request[Any, Any, Any], state: job.JobState
    ) -> ViewerSession | None:
        """The HLS viewer of this job, client and User-Agent: the one open, else a new one."""
        key = (state.job_id, client_address(request), request.headers.get("user-agent", ""))
        async with self._opening:  # two segments asked at once must not open two viewers
            held = self.viewers.get(key)
            if held is not None and not held.session.closed:
                held.last_seen = time.monotonic()
                return held.session
            session = await open_viewer(
                self.recorder,
                request,
                harness_type="GENERIC_HLS_VIEWER",
                state_name="PLAYING",
                stream_key=state.job_id,
                application_id=state.account_id,
                bitrate=viewer.bitrate(state.file_size, state.duration),
            )
            if session is None:
                return None
            self.viewers[key] = _HlsViewer(session)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.create_task(self._sweep(), name="hls-viewer-sweeper")
            return session

    async def _sweep(self) -> None:
        """Close viewers idle for `timeout`; stops by itself once none is left."""
        every = max(0.1, min(5.0, self.timeout / 4))
        while self.viewers:
            await asyncio.sleep(every)
            now = time.monotonic()
            for key, held in list(self.viewers.items()):
                if held.session.closed or now - held.last_seen >= self.timeout:
                    del self.viewers[key]
                    close_viewer(held.session)

    @contextlib.asynccontextmanager
    async def deleting(self, job_id: str) -> AsyncIterator[None]:
        """Around a delete of the job's file answered by this process: once it is done, wait
        (at most `FORGET_WAIT`) until this process has dropped the file, so the answer comes
        after. The dropping itself is the follower's, as for a delete made anywhere else."""
        follower = self.deletions
        if follower is None:  # no cache made here: nothing of the file to drop
            yield
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.ready.wait(), FORGET_WAIT)
        seen = follower.expect(job_id)
        try:
            yield
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(seen), FORGET_WAIT)
        finally:
            follower.unexpect(job_id, seen)

    async def forget(self, job_id: str) -> None:
        """The job's file is gone: drop its rendition and end its HLS viewers."""
        for key in [k for k in self.viewers if k[0] == job_id]:
            close_viewer(self.viewers.pop(key).session)
        await self.cache.remove(job_id)

    async def aclose(self) -> None:
        """Stop the sweeper and builds, and say goodbye for every HLS viewer still open."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        held, self.viewers = list(self.viewers.values()), {}
        for h in held:
            h.session.close()
        if self.deletions is not None:
            await self.deletions.stop()
        if "cache" in self.__dict__:  # made: a cache never used has nothing to stop
            await self.cache.aclose()


def playlist_with_token(text: str, token: str | None) -> str:
    """The playlist with `?token=` on every URI, so a player can follow it; as is without one."""
    if not token:
        return text
    suffix = f"?token={quote(token, safe='')}"
    lines = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            line += suffix
        elif line.startswith("#EXT-X-MAP:"):
            line = re.sub(r'URI="([^"?]+)"', lambda m: f'URI="{m.group(1)}{suffix}"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


async def _hls_file(services: Services, cache: HlsCache, state: job.JobState, name: str) -> Path:
    """The rendition's playlist or segment `name`, cut from the job's file first if need be."""
    if cache.ready(state.job_id) is None:
        assert state.key is not None
        key = state.key
        storage, info = await _stored(services, state, key)

        async def fetch(path: Path) -> None:
            with path.open("wb") as f:
                async for chunk in storage.read(key):
                    await asyncio.to_thread(f.write, chunk)

        try:
            await cache.ensure(
                state.job_id, fetch, account_id=state.account_id, size_hint=info.size
            )
        except HlsRemoved:
            raise JobApiError(status_code=404, detail="The job's file was deleted") from None
        except HlsBusy as exc:
            raise JobApiError(
                status_code=429,
                detail=f"Too many HLS builds at once: {exc}; try again shortly",
                headers={"retry-after": str(exc.retry_after)},
            ) from None
        except HlsTooLarge as exc:
            raise JobApiError(
                status_code=409, detail=f"Cannot make HLS: {exc}; play /media/{state.job_id}"
            ) from None
        except (HlsFailed, StorageError) as exc:
            raise JobApiError(status_code=502, detail=f"Could not make HLS: {exc}") from None
    path = cache.file(state.job_id, name)
    if path is None:
        raise JobApiError(status_code=404, detail=f"No such HLS file: {name}")
    return path


@get("/{job_id:str}/{name:str}", summary="HLS playlist (index.m3u8) and segments of an output")
async def media_hls(
    request: Request[Any, Any, Any], services: Services, job_id: str, name: str
) -> Response[bytes]:
    """`index.m3u8` and the segments it lists, cut from the output on first request."""
    caller = await _caller(request, services)
    state = await _finished_job(services, job_id, caller)
    media = services.media
    async with media.cache.lease(state.job_id):  # not evicted while this request reads it
        path = await _hls_file(services, media.cache, state, name)
        if name == PLAYLIST:
            text = await asyncio.to_thread(path.read_text)
            body = playlist_with_token(text, caller.token).encode()
        else:
            body = await asyncio.to_thread(path.read_bytes)
    session = await media.viewer(request, state)
    if session is not None:
        session.add_out(len(body))
    return Response(
        body,
        media_type=_HLS_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "private, no-cache" if name == PLAYLIST else "private"},
    )


# -- signed links ------------------------------------------------------------------------------


async def _linked(
    services: Services, job_id: str, kind: str, expires: int, signature: str
) -> tuple[job.JobState, str]:
    """The job and key a signed link names; 403 for a bad or expired signature, 404 for a
    file that is not there (any more)."""
    try:
        jid = str(uuid.UUID(job_id))
    except ValueError:
        raise JobApiError(status_code=404, detail="Job not found") from None
    if kind not in KINDS:
        raise JobApiError(status_code=404, detail=f"No such file: {kind}")
    now = time.time()
    # A link that could never be valid costs no read of the job: anyone may knock here.
    if expires <= now or not _SIGNATURE.fullmatch(signature):
        raise JobApiError(status_code=403, detail="Invalid or expired link")
    state = await load_job(services.store, jid)
    key = None
    if state is not None and state.status == "Completed" and not state.file_deleted:
        key = job.file_key(state, kind)
    # The signature is checked before anything about the job is told.
    if key is None or not link_is_valid(
        services.links_key,
        job_id=jid,
        object_key=key,
        expires=expires,
        given=signature,
        now=now,
    ):
        raise JobApiError(status_code=403, detail="Invalid or expired link")
    assert state is not None
    return state, key


@get("/{job_id:str}/{kind:str}", summary="A job's file through a signed, expiring link")
async def linked_file(
    request: Request[Any, Any, Any],
    services: Services,
    job_id: str,
    kind: str,
    expires: int,
    signature: str,
    download: bool = False,
) -> Response[Any]:
    """The file a signed link names (no API key needed): 200 whole, 206 for a `Range`;
    `download=true` asks the browser to save it rather than play it."""
    state, key = await _linked(services, job_id, kind, expires, signature)
    return await _serve(request, services, state, key, send=True, attachment=download)


@head("/{job_id:str}/{kind:str}", summary="Size and type of a file behind a signed link")
async def linked_file_head(
    request: Request[Any, Any, Any],
    services: Services,
    job_id: str,
    kind: str,
    expires: int,
    signature: str,
) -> Response[None]:
    """The headers `GET` would answer with, and no body."""
    state, key = await _linked(services, job_id, kind, expires, signature)
    return await _serve(request, services, state, key, send=False)


files_router = Router(
    path="/files",
    route_handlers=[linked_file, linked_file_head],
    tags=["media"],
)
"""A job's files through signed links (`adapters.file_links`), mounted at `/files`."""


media_router = Router(
    path="/media",
    route_handlers=[media_file, media_file_head, media_hls],
    tags=["media"],
)
"""Playback of finished outputs, mounted at `/media`."""
