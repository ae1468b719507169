"""The bodies of the three pipeline stages: adapters in, one completion event out.

Each stage raises `StageError` with a reason a user can act on, or `StageCancelled` when the job
was cancelled under it; it leaves nothing behind in either case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from spool.adapters import (
    downloader,
    hls,
    live_hls,
    loudness,
    media_verify,
    muxer,
    previews,
    thumbnails,
)
from spool.adapters.owned_objects import delete_owned
from spool.adapters.ssrf import UrlGuard
from spool.adapters.storage import (
    ObjectExists,
    ObjectStorage,
    StorageCancelled,
    StorageError,
    StoredObject,
    object_key,
)
from spool.adapters.viewer_sessions import ViewerRecorder, ViewerSession
from spool.domain import archive, file_names, job, viewer
from spool.domain import previews as preview_kinds
from spool.domain.node_health import Blame
from spool.domain.verification import VerificationFailed

ProgressSink = Callable[[job.Progress], None]
Archived = Callable[[str], Coroutine[Any, Any, str | None]]
"""The job that holds an archive id in the job's account's download archive, or None."""
T = TypeVar("T")

log = logging.getLogger("spool.stages")


class StageError(Exception):
    """A stage failed; `str()` is the reason shown to the user."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        error_type: job.ErrorType = "error",
        unfinished_uploads: Sequence[str] = (),
        blame: Blame = "node",
    ):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.error_type: job.ErrorType = error_type
        self.unfinished_uploads = list(unfinished_uploads)
        """Uploads the attempt left behind, for a later attempt to abort."""
        self.blame: Blame = blame
        """Whose fault it is (domain/node_health.py): only the node's counts toward its
        quarantine. Unless a stage says otherwise, the node's."""


FILES_GONE = "Files gone"
"""How the reason of a mux or upload whose input is no longer on its node begins."""


def files_gone(what: str, state: job.JobState, node_id: str) -> StageError:
    """A mux or upload whose input left its node (swept, or the disk was wiped): the same stage
    finds the same nothing on any retry, so only a retry from download helps. The node's fault,
    unless a retry asked for files of an earlier run (this run downloaded nothing), which the
    node may have reclaimed since (`domain.work_files.kept_for_retry`)."""
    reason = f"{FILES_GONE}: the {what} is no longer on node {node_id}; retry from download"
    blame: Blame = "node" if "download" in state.timings else "request"
    return StageError(reason, retryable=False, blame=blame)


class StageCancelled(Exception):
    """The job was cancelled while the stage ran."""


class NotReady(Exception):
    """The download found its media not out yet: no failure, the job waits and tries again
    later (domain/not_ready.py). `str()` is what the source said."""

    def __init__(self, reason: str, *, ready_at: datetime | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ready_at = ready_at


def unexpected(exc: Exception) -> StageError:
    """A retryable StageError for an error no stage expected; its reason names no file (an
    OSError's file is one of this node's, which means nothing to the user)."""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StageError(f"Internal error: {type(exc).__name__}: {detail}", retryable=True)


def output_names(state: job.JobState) -> list[str]:
    """The names the uploaded file may take, in order: the first one free wins.

    The user's `filename`, else the title plus a short job id, else the job id. A name another
    job's object holds is never written over: the next name adds the short job id
    (`name [1a2b3c4d].mp4`), the last the whole one, which no other job can have chosen.
    """
    ext = job.output_ext(state.options)
    short = state.job_id.split("-")[0]
    whole = state.job_id
    if state.options.filename:
        base = state.options.filename
        return [f"{base}.{ext}", f"{base} [{short}].{ext}", f"{base} [{whole}].{ext}"]
    title = _slug(state.title or "")
    if title:
        return [f"{title} [{short}].{ext}", f"{title} [{whole}].{ext}"]
    return [f"{whole}.{ext}"]


def output_name(state: job.JobState) -> str:
    """The name the uploaded file takes when that name is free (see `output_names`)."""
    return output_names(state)[0]


def _slug(title: str) -> str:
    cleaned = re.sub(r"[^\w\-. ()\[\]]+", "_", title, flags=re.UNICODE).strip(" ._")
    slug = re.sub(r"\s+", " ", cleaned)[:200]
    # A title "Nul.mp4" would name a Windows device ("Nul.mp4 [1a2b3c4d].mp4" is one).
    return f"_{slug}" if file_names.is_device_name(slug) else slug


async def download(
    state: job.JobState,
    node_id: str,
    workdir: Path,
    guard: UrlGuard,
    progress: ProgressSink,
    cancel: asyncio.Event,
    max_media_seconds: int | None = None,
    archived: Archived | None = None,
) -> job.DownloadCompleted | job.JobSkipped:
    """Fetch the source with yt-dlp into `workdir`.

    `max_media_seconds` is the account's quota: a longer source fails the job at once (no
    retries), before its media is fetched when the source tells its duration, else as soon
    as the fetched file shows it; a live stream is recorded for at most that long.
    `archived` says which job holds an item in the account's download archive: an item held
    by another job is not fetched, and the job is skipped (`JobSkipped`). A live recording
    is never looked up: it has no archive id.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    loop = asyncio.get_running_loop()

    def on_progress(p: downloader.DownloadProgress) -> None:
        loop.call_soon_threadsafe(
            progress,
            job.Progress(
                stage="download",
                percent=p.percent,
                bytes=p.downloaded_bytes,
                total_bytes=p.total_bytes,
                speed=p.speed,
                eta=p.eta,
            ),
        )

    relay = asyncio.create_task(_relay(cancel, stop))
    o = state.options
    try:
        live = o.live_recording or (
            _is_hls(state.url)
            and await asyncio.to_thread(live_hls.is_live_hls, state.url, guard=guard)
        )
        if live:
            # A live stream: recorded until it ends, or until max_duration seconds of it.
            result = await _in_thread(
                stop,
                live_hls.record,
                state.url,
                workdir,
                guard=guard,
                max_duration=_shorter(o.max_duration, max_media_seconds),
                live_from_start=o.live_from_start,
                wait_for_video=WAIT_FOR_VIDEO_SECONDS if o.wait_for_video else None,
                on_progress=on_progress,
                cancel=stop,
            )
        else:
            result = await _in_thread(
                stop,
                downloader.download,
                state.url,
                workdir,
                guard=guard,
                **downloader.download_options(o),
                on_progress=on_progress,
                cancel=stop,
                max_seconds=max_media_seconds,
                too_long=lambda seconds: too_long(seconds, max_media_seconds),
                already_have=None if archived is None else _asked_from(loop, archived, stop),
            )
    except downloader.AlreadyHave as held:
        return job.JobSkipped(
            run=state.run,
            attempt=state.attempt,
            node_id=node_id,
            archive_id=_archive_id(held.item),
            archived_by_job=held.holder,
            extractor=held.item.extractor_key,
            item_id=held.item.item_id,
            title=held.title,
        )
    except downloader.DownloadCancelled:
        raise StageCancelled from None
    except downloader.NotReady as exc:
        ready_at = None if exc.ready_at is None else datetime.fromtimestamp(exc.ready_at, UTC)
        raise NotReady(str(exc), ready_at=ready_at) from None
    except downloader.DownloadFailed as exc:
        raise StageError(
            str(exc), retryable=exc.retryable, error_type=exc.kind, blame="source"
        ) from None
    finally:
        relay.cancel()
    if cancel.is_set():
        raise StageCancelled
    info = result.info
    if max_media_seconds is not None and not live:  # a recording stops at the quota
        longest = info.duration or await _probed_duration(result.files)
        if longest is not None and longest > max_media_seconds + MEDIA_SECONDS_SLACK:
            remove_workdir(workdir)
            raise StageError(too_long(longest, max_media_seconds), retryable=False, blame="request")
    files = result.files
    if o.download_thumbnail:
        # A source without a thumbnail of its own gets one from its video (adapters/thumbnails.py).
        files = await thumbnails.with_thumbnail(files, workdir)
    return job.DownloadCompleted(
        run=state.run,
        attempt=state.attempt,
        node_id=node_id,
        files=[job.MediaFile(path=f.path, kind=f.kind, size=f.size) for f in files],
        bytes=result.total_bytes,
        seconds=result.seconds,
        title=info.title,
        description=info.description,
        release_date=info.release_date,
        duration=info.duration,
        native_video_codec=info.video_codec,
        native_audio_codec=info.audio_codec,
        width=info.width,
        height=info.height,
        extractor=info.extractor_key,
        item_id=info.item_id,
        archive_id=_archive_id(
            downloader.ItemName(info.extractor_key, info.item_id, info.webpage_url or state.url)
        )
        if info.extractor_key and info.item_id
        else None,
    )


def _archive_id(item: downloader.ItemName) -> str:
    return archive.archive_id(item.extractor_key, item.item_id, item.url)


ARCHIVE_LOOK = 0.2
"""Seconds the download thread waits on its archive look-up between checks of its cancel."""


def _asked_from(
    loop: asyncio.AbstractEventLoop, archived: Archived, stop: threading.Event
) -> Callable[[downloader.ItemName], str | None]:
    """`archived`, for the download's thread: the look-up runs on the stage's loop while the
    thread waits for it (the thread is yt-dlp's, between extracting and fetching)."""

    def holder(item: downloader.ItemName) -> str | None:
        future = asyncio.run_coroutine_threadsafe(archived(_archive_id(item)), loop)
        while True:
            try:
                return future.result(timeout=ARCHIVE_LOOK)
            except TimeoutError:
                if stop.is_set():
                    future.cancel()
                    cancelled = "cancelled during the archive look-up"
                    raise downloader.DownloadCancelled(cancelled) from None

    return holder


MEDIA_SECONDS_SLACK = 0.5
"""A file measured after download may run a fraction of a second past the length it declares."""


def too_long(seconds: float, limit: int | None) -> str:
    """The reason a job fails past the account's longest-media quota."""
    return (
        f"The media is {seconds:.0f} s long, longer than the account's quota "
        f"max_media_seconds ({limit} s); ask an admin to raise it"
    )


def _shorter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


async def _probed_duration(files: Sequence[downloader.DownloadedFile]) -> float | None:
    """The longest of the fetched media files, as FFmpeg reads them (None: none could be)."""
    longest: float | None = None
    for f in files:
        if f.kind not in ("video", "audio", "av"):
            continue
        try:
            info = await asyncio.to_thread(muxer.probe, Path(f.path))
        except muxer.MuxFailed:
            continue
        if info.duration is not None:
            longest = max(longest or 0.0, info.duration)
    return longest


WAIT_FOR_VIDEO_SECONDS = 300.0
"""How long `wait_for_video` waits for a stream that has not started yet."""


def _is_hls(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".m3u8")


THREAD_GRACE = 3.0
"""Seconds a cancelled download thread is given to stop and remove its partial files."""


async def _in_thread(stop: threading.Event, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)` in a thread, which observes `stop`.

    A thread cannot be cancelled: were this task cancelled (the process stopping) while the
    thread went on, the download would outlive the stage, hold the process at exit and leave
    its files. So a cancellation sets `stop` and waits up to `THREAD_GRACE` for the thread to
    clean up, then goes on.
    """
    running = asyncio.ensure_future(asyncio.to_thread(call, *args, **kwargs))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({running}, timeout=THREAD_GRACE)
        if running.done() and not running.cancelled():
            running.exception()  # retrieved: a DownloadCancelled here is expected
        raise


async def _relay(cancel: asyncio.Event, stop: threading.Event) -> None:
    """Carry an asyncio cancel over to the download thread."""
    await cancel.wait()
    stop.set()


async def _session(
    viewers: ViewerRecorder | None,
    state: job.JobState,
    *,
    harness_type: str,
    state_name: str,
    node_ip: str,
    bitrate: int,
) -> ViewerSession | None:
    """A stage's viewer session, when the node records them; a failure to record is no failure
    of the stage."""
    if viewers is None:
        return None
    try:
        return await viewers.open(
            harness_type=harness_type,
            state=state_name,
            stream_key=state.job_id,
            application_id=state.account_id,
            remote_address=node_ip,
            bitrate=bitrate,
        )
    except Exception:
        log.warning("could not record the %s session of job %s", harness_type, state.job_id)
        return None


def _end(session: ViewerSession | None) -> None:
    """Close a stage's session (its goodbye is queued; nothing here can be cancelled)."""
    if session is not None:
        session.close()


async def mux(
    state: job.JobState,
    node_id: str,
    workdir: Path,
    progress: ProgressSink,
    cancel: asyncio.Event,
    viewers: ViewerRecorder | None = None,
    node_ip: str = "",
) -> job.MuxCompleted:
    """Merge / remux / transcode the downloaded files with FFmpeg.

    With `viewers`, the mux is a TRANSCODER session: in, the input bytes read (estimated from
    the progress, as FFmpeg does not report its reads); out, the output file as it grows.
    """
    media = [Path(f.path) for f in state.files if f.kind in ("video", "audio", "av")]
    if not media:
        raise StageError("The download produced no media file", retryable=False, blame="source")
    if not all(p.exists() for p in media):
        raise files_gone("downloaded media", state, node_id)
    o = state.options
    workdir.mkdir(parents=True, exist_ok=True)  # a retry from mux downloaded nothing into it
    output = workdir / f"output.{job.output_ext(o)}"
    in_size = sum(p.stat().st_size for p in media)
    session = await _session(
        viewers,
        state,
        harness_type="TRANSCODER",
        state_name="TRANSCODING",
        node_ip=node_ip,
        bitrate=viewer.bitrate(in_size, state.duration),
    )

    def on_progress(pct: float) -> None:
        progress(job.Progress(stage="mux", percent=pct))
        if session is not None:
            _count(session, int(in_size * min(pct, 100.0) / 100), _size_of(workdir))

    # Of the stage's percent: the mux first, then the previews, then the HLS package.
    packaged = 100.0 - hls.share(o)
    muxed = previews.muxed_share(o) * packaged / 100.0
    try:
        # Through loudness normalisation's passes when the job asks (adapters/loudness.py).
        result, measured = await loudness.mux(
            media, output, o, muxer.share(on_progress, 0.0, muxed), cancel
        )
        if session is not None:
            session.set_bitrate(viewer.bitrate(result.size, result.duration))
            _count(session, in_size, result.size)
        verification = await media_verify.verify(
            o,
            result,
            state.source_quality,
            cancel=cancel,
            on_decoding=lambda: progress(job.Progress(stage="mux", percent=100.0)),
        )
        made = await previews.make(
            result, o, workdir, muxer.share(on_progress, muxed, packaged), cancel
        )
        package = await hls.package(
            result, o, workdir, muxer.share(on_progress, packaged, 100.0), cancel
        )
    except VerificationFailed as exc:
        # The same file verifies the same on any retry of the mux (docs/job-api.md, verify).
        raise StageError(str(exc), retryable=False, blame=exc.blame) from None
    except muxer.MuxCancelled:
        raise StageCancelled from None
    except muxer.Unreadable as exc:
        # Whatever came down is not media, or is cut short: fetching it again gives the same.
        reason = f"The source is not playable media: {exc.detail}"
        raise StageError(reason, retryable=False, blame="source") from None
    except muxer.MuxFailed as exc:
        # FFmpeg refused this media with these options: the same on any node.
        raise StageError(str(exc), retryable=False, blame="source") from None
    finally:
        _end(session)
    return job.MuxCompleted(
        run=state.run,
        attempt=state.attempt,
        node_id=node_id,
        output=job.MediaFile(path=result.path, kind="av", size=result.size),
        seconds=result.seconds,
        duration=result.duration,
        video_codec=result.video_codec,
        audio_codec=result.audio_codec,
        native_video_codec=result.source_video_codec,
        native_audio_codec=result.source_audio_codec,
        width=result.width,
        height=result.height,
        verification=verification,
        loudness=measured,
        previews=made,
        hls=package,
    )


async def upload(
    state: job.JobState,
    node_id: str,
    storage: ObjectStorage,
    progress: ProgressSink,
    cancel: asyncio.Event,
    viewers: ViewerRecorder | None = None,
    node_ip: str = "",
    prefix: str = "",
) -> job.JobCompleted:
    """Put the muxed file into object storage, under `prefix` (the account's folder on a
    storage it does not own), at the first of `output_names` no other job's object holds.

    With `viewers`, the upload is a FILE_WRITER session whose out bytes are the bytes sent.
    """
    if state.output is None or not Path(state.output.path).exists():
        raise files_gone("muxed file", state, node_id)
    started = time.monotonic()
    session = await _session(
        viewers,
        state,
        harness_type="FILE_WRITER",
        state_name="WRITING",
        node_ip=node_ip,
        bitrate=viewer.bitrate(state.output.size, state.duration),
    )

    def on_progress(sent: int, total: int) -> None:
        percent = 100.0 * sent / total if total else 100.0
        progress(job.Progress(stage="upload", percent=percent, bytes=sent, total_bytes=total))
        if session is not None:
            _count(session, 0, sent)

    try:
        return await _upload(state, node_id, storage, prefix, started, on_progress, cancel, session)
    finally:
        _end(session)


def _count(session: ViewerSession, in_total: int, out_total: int) -> None:
    """Move a session's counters up to these totals (a stage knows totals, not deltas)."""
    session.add_in(max(0, in_total - session.in_total))
    session.add_out(max(0, out_total - session.out_total))


def _size_of(workdir: Path) -> int:
    """Bytes FFmpeg has written so far: the output file(s) in the run's folder."""
    total = 0
    for path in workdir.glob("output.*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


async def _upload(
    state: job.JobState,
    node_id: str,
    storage: ObjectStorage,
    prefix: str,
    started: float,
    on_progress: Callable[[int, int], None],
    cancel: asyncio.Event,
    session: ViewerSession | None,
) -> job.JobCompleted:
    assert state.output is not None
    aborted = await abort_unfinished(storage, state.unfinished_uploads)
    # Subtitles and thumbnail travel beside the media, named after it: "<name>.en.vtt".
    extras: list[tuple[str, Path, str]] = []
    for kind in ("subtitle", "thumbnail"):
        found = next((f for f in state.files if f.kind == kind), None)
        if found is None or not Path(found.path).exists():
            continue
        path = Path(found.path)
        suffix = "".join(path.suffixes[-2:]) if kind == "subtitle" else path.suffix
        extras.append((kind, path, suffix))
    for name in output_names(state):
        key = object_key(prefix, state.options.folder, name)
        stem = key.rsplit(".", 1)[0]
        files = [("media", Path(state.output.path), key)]
        files += [(kind, path, f"{stem}{suffix}") for kind, path, suffix in extras]
        files += previews.uploads(state.previews, stem)
        files += hls.uploads(state.hls, stem)
        try:
            written = await _put_all(state, storage, files, on_progress, cancel, session)
        except ObjectExists:
            continue  # another job's object holds one of the names: the next name
        except StorageCancelled:
            raise StageCancelled from None
        except StorageError as exc:
            raise StageError(
                f"Upload failed: {exc}",
                retryable=exc.retryable,
                unfinished_uploads=[exc.unfinished] if exc.unfinished else [],
                blame="storage",
            ) from None
        media = written["media"]
        return job.JobCompleted(
            run=state.run,
            attempt=state.attempt,
            node_id=node_id,
            key=media.key,
            storage=storage.description,
            size=media.size,
            seconds=time.monotonic() - started,
            subtitle_key=written["subtitle"].key if "subtitle" in written else None,
            thumbnail_key=written["thumbnail"].key if "thumbnail" in written else None,
            aborted_uploads=aborted,
            objects=[_recorded(o) for o in written.values()],
            preview_keys={k: written[k].key for k in preview_kinds.KINDS if k in written},
            hls_key=written[hls.KIND].key if hls.KIND in written else None,
            archive_id=state.archive_id,
        )
    raise StageError(
        "Upload failed: every name this job may take is held by a file it did not write",
        retryable=False,
        blame="storage",
    )


def _recorded(stored: StoredObject) -> job.StoredFile:
    return job.StoredFile(
        key=stored.key,
        size=stored.size,
        etag=stored.etag,
        version_id=stored.version_id,
        sha256=stored.sha256,
        sha256_checked=stored.sha256_checked,
    )


async def _put_all(
    state: job.JobState,
    storage: ObjectStorage,
    files: list[tuple[str, Path, str]],
    on_progress: Callable[[int, int], None],
    cancel: asyncio.Event,
    session: ViewerSession | None,
) -> dict[str, StoredObject]:
    """Put each `(kind, path, key)`, the media first; all of them or none.

    A key is written when it is free (conditionally, so one that another job takes meanwhile
    is refused by the storage) or when this job's own object is there (an earlier attempt's).
    `ObjectExists` when another job's object holds a key: what this call wrote is removed.
    """
    owner = state.job_id
    found = [await storage.head(key) for _, _, key in files]
    for (_, _, key), info in zip(files, found, strict=True):
        if info is not None and info.owner != owner:
            raise ObjectExists(key)
    written: dict[str, StoredObject] = {}
    try:
        for (kind, path, key), info in zip(files, found, strict=True):
            written[kind] = await storage.put_file(
                key,
                path,
                on_progress=on_progress if kind == "media" else None,
                cancel=cancel,
                owner=owner,
                if_absent=info is None,
            )
            if kind != "media":
                if session is not None:
                    session.add_out(written[kind].size)
                # The files after the media (an HLS package's may be many and large) report
                # the media's 100 % again each: the stall watchdog sees the stage still moving.
                media = written.get("media")
                if media is not None:
                    on_progress(media.size, media.size)
    except BaseException:
        if written:
            try:
                await asyncio.shield(
                    delete_owned(storage, [_recorded(o) for o in written.values()], owner)
                )
            except StorageError as exc:
                log.warning("could not remove the partial upload of job %s: %s", owner, exc)
        raise
    return written


async def abort_unfinished(storage: ObjectStorage, unfinished: list[str]) -> list[str]:
    """Abort multipart uploads attempts left unfinished; the ones aborted (or already gone).
    Those that still fail are left for the caller to keep or report."""
    aborted = []
    for upload in unfinished:
        try:
            await storage.abort_unfinished(upload)
        except StorageError as exc:
            log.warning("unfinished upload %s still not aborted: %s", upload, exc)
            continue
        aborted.append(upload)
    return aborted


def remove_workdir(workdir: Path) -> None:
    """Delete a run's local files, and the job's folder too once no run is left in it."""
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # only succeeds when empty: a newer run's files stay
