"""A thumbnail made from the video itself, for a job that asked for one from a source that has none.

A direct media file (or a page that names no poster) gives yt-dlp no thumbnail to fetch; one
frame of the fetched video, a tenth of the way in (past a black or title opening), or at 1 s
when FFmpeg cannot tell the length, stands in for it. It is stored and linked exactly as a
source's thumbnail is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from spool.adapters import muxer
from spool.adapters.downloader import DownloadedFile
from spool.adapters.ffmpeg import ffmpeg_exe

log = logging.getLogger(__name__)

THUMBNAIL_NAME = "media.thumbnail.jpg"
"""The frame's file in the job's work folder (yt-dlp's own are `media.<ext>`)."""


def frame_time(duration: float | None) -> float:
    """Where in the video the frame is taken, in seconds: 10 % in, else 1 s."""
    return duration / 10 if duration else 1.0


async def with_thumbnail(
    files: Sequence[DownloadedFile], workdir: Path, *, timeout: float = 30.0
) -> list[DownloadedFile]:
    """`files`, plus a thumbnail made from their video when they hold no thumbnail yet.

    Unchanged when there is a thumbnail already or no video to take a frame from; a frame that
    cannot be made is logged and left out, never a failure of the download.
    """
    found = list(files)
    if any(f.kind == "thumbnail" for f in found):
        return found
    video = next((f for f in found if f.kind in ("av", "video")), None)
    if video is None:
        return found
    try:
        made = await make_thumbnail(Path(video.path), workdir / THUMBNAIL_NAME, timeout=timeout)
    except (OSError, TimeoutError, muxer.MuxFailed) as exc:
        log.warning("could not make a thumbnail from %s: %s", Path(video.path).name, exc)
        return found
    if made is not None:
        found.append(DownloadedFile(str(made), "thumbnail", None, made.stat().st_size))
    return found


async def make_thumbnail(media: Path, dest: Path, *, timeout: float = 30.0) -> Path | None:
    """One frame of `media`'s video as a JPEG at `dest` (see `frame_time`); None without video.

    Raises:
        muxer.MuxFailed: FFmpeg cannot read `media`.
        TimeoutError: FFmpeg took longer than `timeout` seconds (it is stopped).
    """
    info = await asyncio.to_thread(muxer.probe, media)
    if not any(s.kind == "video" for s in info.streams):
        return None
    at = frame_time(info.duration)
    dest.unlink(missing_ok=True)
    await _take_frame(media, dest, at, timeout)
    if at > 0 and not _written(dest):
        # The length FFmpeg reported ran past the last frame (or it knew none): the first one.
        await _take_frame(media, dest, 0.0, timeout)
    return dest if _written(dest) else None


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


async def _take_frame(media: Path, dest: Path, at: float, timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-ss",
        f"{at:.3f}",
        # The file: protocol keeps a name like "-x.mp4" or "a:b.mp4" from reading as an option
        # or a protocol (as adapters/muxer.py does).
        "-i",
        f"file:{media}",
        "-frames:v",
        "1",
        "-an",
        "-sn",
        "-q:v",
        "3",
        "-f",
        "image2",
        f"file:{dest}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    finally:
        if proc.returncode is None:
            # A timeout, or the stage was cancelled: never leave FFmpeg running.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(proc.wait())
