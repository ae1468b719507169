"""HLS renditions of finished outputs, cut by FFmpeg on first request and kept as plain folders.

`<root>/<name>/index.m3u8` plus its segments is one job's rendition. FFmpeg copies the streams
(`-c copy`, no re-encoding) into MPEG-TS segments; a file whose codecs MPEG-TS cannot carry (VP9,
Opus) is cut into fragmented-MP4 segments instead. A rendition is built in a temporary folder and
renamed into place, so a reader never sees half of one; one build per name runs at a time in a
process, and requests that arrive meanwhile wait for that same build. Removing a rendition (its
source was deleted) stops its build and renames the folder away before deleting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from adapters.ffmpeg import ffmpeg_exe

log = logging.getLogger("spool.media")

PLAYLIST = "index.m3u8"
SEGMENT_SECONDS = 4
"""Target segment length; FFmpeg cuts at the keyframe at or after each multiple of it."""

BUILD_TIMEOUT = 600.0
"""Longest a cut may take: stream copy runs at disk speed, so hours of media take seconds."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEGMENT = re.compile(r"^(?:seg\d{5}\.(?:ts|m4s)|init\.mp4)$")
_TEMP_PREFIX = ".build-"

Fetch = Callable[[Path], Awaitable[None]]
"""Writes the source media to the given path (from object storage, say)."""


class HlsFailed(Exception):
    """FFmpeg could not cut the media into HLS; the message says why."""


class HlsRemoved(Exception):
    """The rendition was removed (its source deleted) while a request waited for its build."""


class HlsCache:
    """The renditions under `root`, built on demand."""

    def __init__(self, root: Path, *, segment_seconds: int = SEGMENT_SECONDS) -> None:
        self.root = root
        self.segment_seconds = segment_seconds
        self._building: dict[str, asyncio.Task[Path]] = {}

    def _folder(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad rendition name {name!r}")
        return self.root / name

    def ready(self, name: str) -> Path | None:
        """The rendition's folder if it was built already."""
        folder = self._folder(name)
        return folder if (folder / PLAYLIST).is_file() else None

    async def ensure(self, name: str, fetch: Fetch) -> Path:
        """The rendition's folder, built now from what `fetch` writes unless it exists.

        A caller that goes away does not stop the build: the next request finds it done.
        """
        folder = self.ready(name)
        if folder is not None:
            return folder
        build = self._building.get(name)
        if build is None:
            build = asyncio.create_task(self._build(name, fetch), name=f"hls:{name}")
            self._building[name] = build
            build.add_done_callback(lambda t: self._built(name, t))
        try:
            return await asyncio.shield(build)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if build.cancelled() and (task is None or not task.cancelling()):
                raise HlsRemoved(f"rendition {name} was removed while it was being cut") from None
            raise

    def _built(self, name: str, build: asyncio.Task[Path]) -> None:
        if self._building.get(name) is build:
            del self._building[name]
        if not build.cancelled():
            build.exception()  # seen here, so an unawaited failure is not reported as lost

    def file(self, name: str, file_name: str) -> Path | None:
        """A built rendition's playlist or segment, or None for a name it does not have."""
        folder = self.ready(name)
        if folder is None or (file_name != PLAYLIST and not _SEGMENT.match(file_name)):
            return None
        path = folder / file_name
        return path if path.is_file() else None

    async def _build(self, name: str, fetch: Fetch) -> Path:
        final = self._folder(name)
        temp = self.root / f"{_TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        temp.mkdir(parents=True)
        try:
            source = temp / "source"
            await fetch(source)
            try:
                await self._cut(source, temp, fragmented=False)
            except HlsFailed:
                for leftover in temp.glob("seg*"):
                    leftover.unlink()
                await self._cut(source, temp, fragmented=True)
            source.unlink()
            try:
                os.rename(temp, final)
            except OSError:
                if self.ready(name) is None:  # not another process's build that won: a fault
                    raise
            return final
        finally:
            await asyncio.to_thread(shutil.rmtree, temp, True)

    async def _cut(self, source: Path, folder: Path, *, fragmented: bool) -> None:
        kind = (
            ["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"]
            if fragmented
            else ["-hls_segment_type", "mpegts"]
        )
        ext = "m4s" if fragmented else "ts"
        proc = await asyncio.create_subprocess_exec(
            ffmpeg_exe(),
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(source),
            "-map",
            "0:v?",
            "-map",
            "0:a?",
            "-c",
            "copy",
            "-f",
            "hls",
            "-hls_time",
            str(self.segment_seconds),
            "-hls_playlist_type",
            "vod",
            "-hls_list_size",
            "0",
            *kind,
            "-hls_segment_filename",
            str(folder / f"seg%05d.{ext}"),
            str(folder / PLAYLIST),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT)
        except TimeoutError:
            raise HlsFailed(f"cutting took longer than {BUILD_TIMEOUT:g} s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave FFmpeg running
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise HlsFailed(lines[-1] if lines else f"FFmpeg exited with status {proc.returncode}")

    async def remove(self, name: str) -> None:
        """Drop the rendition: stop its build if one runs and delete its folder, if any."""
        folder = self._folder(name)
        build = self._building.pop(name, None)
        if build is not None:
            build.cancel()
            await asyncio.gather(build, return_exceptions=True)
        gone = self.root / f"{_TEMP_PREFIX}gone-{name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, gone)  # from here on no reader finds it, whole or half
        except FileNotFoundError:
            return
        except OSError:
            log.warning("could not remove the HLS rendition %s", folder, exc_info=True)
            return
        await asyncio.to_thread(shutil.rmtree, gone, True)

    async def aclose(self) -> None:
        """Stop builds still running (their temporary folders are removed)."""
        builds = list(self._building.values())
        for build in builds:
            build.cancel()
        await asyncio.gather(*builds, return_exceptions=True)
