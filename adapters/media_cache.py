"""HLS renditions of finished outputs, cut by FFmpeg on first request and kept as plain folders.

`<root>/<name>/index.m3u8` plus its segments is one job's rendition. FFmpeg copies the streams
(`-c copy`, no re-encoding) into MPEG-TS segments; a file whose codecs MPEG-TS cannot carry (VP9,
Opus) is cut into fragmented-MP4 segments instead. A rendition is built in a temporary folder and
renamed into place, so a reader never sees half of one; one build per name runs at a time in a
process, and requests that arrive meanwhile wait for that same build. Removing a rendition (its
source was deleted) stops its build and renames the folder away before deleting it.

The cache is bounded. Its renditions' bytes stay under `max_bytes`: before a build it makes room
for the source's size, after it for what was cut, by removing whole renditions, least recently
used first (the building account's own first while it holds more than half the cap), never one
a request holds (`lease`). At most `max_builds` builds run at once, and at
most `max_builds_per_account` of one account's, so one account cannot take every slot; a build
waits up to `build_wait` seconds for a slot, then fails with HlsBusy. Each rendition's folder
holds its account and bytes in `.account`, whose mtime is when it was last played: what is on
disk is the truth every API process on the folder shares. A process reads it back before each
build and for each account's bytes, and at start it also removes unfinished builds and folders
it cannot attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from spool.adapters.ffmpeg import ffmpeg_exe

log = logging.getLogger("spool.media")

PLAYLIST = "index.m3u8"
SEGMENT_SECONDS = 4
"""Target segment length; FFmpeg cuts at the keyframe at or after each multiple of it."""

BUILD_TIMEOUT = 600.0
"""Longest a cut may take: stream copy runs at disk speed, so hours of media take seconds."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEGMENT = re.compile(r"^(?:seg\d{5}\.(?:ts|m4s)|init\.mp4)$")
_TEMP_PREFIX = ".build-"
_OWNER = ".account"
"""In a rendition's folder: `{"account", "bytes"}` of its media (its mtime: last played)."""

MAX_BYTES = 1 << 30
MAX_BUILDS = 4
MAX_BUILDS_PER_ACCOUNT = 2
BUILD_WAIT = 15.0
RETRY_AFTER = 5
"""Seconds a caller refused a build slot is told to wait: about one build of a long film."""

Fetch = Callable[[Path], Awaitable[None]]
"""Writes the source media to the given path (from object storage, say)."""


class HlsFailed(Exception):
    """FFmpeg could not cut the media into HLS; the message says why."""


class HlsRemoved(Exception):
    """The rendition was removed (its source deleted) while a request waited for its build."""


class HlsBusy(Exception):
    """No build slot came free in time; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HlsTooLarge(Exception):
    """The source is larger than the whole cache: it cannot be cut into it."""


class BuildSlots:
    """At most `total` builds at once, and at most `per_account` of one account's."""

    def __init__(self, total: int, per_account: int) -> None:
        self.total = max(1, total)
        self.per_account = max(1, min(per_account, self.total))
        self.running: Counter[str] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    def _free(self, account_id: str) -> bool:
        return self.running.total() < self.total and self.running[account_id] < self.per_account

    async def take(self, account_id: str, wait: float) -> None:
        """Take a slot for `account_id`, waiting up to `wait` seconds; HlsBusy past that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._free(account_id):
            left = deadline - loop.time()
            if left <= 0:
                mine = self.running[account_id] >= self.per_account
                raise HlsBusy(
                    f"{self.per_account} HLS builds of this account are running already"
                    if mine
                    else f"{self.total} HLS builds are running already"
                )
            woken: asyncio.Future[None] = loop.create_future()
            self._waiters.append(woken)
            try:
                await asyncio.wait_for(woken, left)
            except TimeoutError:
                pass
            finally:
                self._waiters.remove(woken)
        self.running[account_id] += 1

    def give_back(self, account_id: str) -> None:
        """Free a slot `take` gave; every waiter looks again (each checks its own account)."""
        self.running[account_id] -= 1
        if self.running[account_id] <= 0:
            del self.running[account_id]
        for woken in self._waiters:
            if not woken.done():
                woken.set_result(None)


class _Held:
    """A built rendition: whose it is, its bytes on disk, and when it was last played (ns)."""

    __slots__ = ("account_id", "played", "size")

    def __init__(self, account_id: str, size: int, played: int) -> None:
        self.account_id = account_id
        self.size = size
        self.played = played


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _read_owner(folder: Path) -> _Held | None:
    """The rendition in `folder` as its `.account` tells; None for a folder that is not one."""
    owner = folder / _OWNER
    try:
        stat = owner.stat()
        data = json.loads(owner.read_bytes())
        held = _Held(str(data["account"]), int(data["bytes"]) + stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return held if (folder / PLAYLIST).is_file() else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # a pid reused after a restart: this process builds nothing yet
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class HlsCache:
    """The renditions under `root`, built on demand, within `max_bytes` and `max_builds`."""

    def __init__(
        self,
        root: Path,
        *,
        segment_seconds: int = SEGMENT_SECONDS,
        max_bytes: int = MAX_BYTES,
        max_builds: int = MAX_BUILDS,
        max_builds_per_account: int = MAX_BUILDS_PER_ACCOUNT,
        build_wait: float = BUILD_WAIT,
    ) -> None:
        self.root = root
        self.segment_seconds = segment_seconds
        self.max_bytes = max_bytes
        self.build_wait = build_wait
        self.slots = BuildSlots(max_builds, max_builds_per_account)
        self._building: dict[str, asyncio.Task[Path]] = {}
        # Least recently used first: the order renditions are evicted in.
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._reserved: dict[str, int] = {}
        self._leases: Counter[str] = Counter()
        self._recover()

    # -- what is on disk -----------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove unfinished builds and unattributable folders, then count what is left.

        A `.build-` folder whose process is gone is a build a crash or kill left half done (a
        live process's build, in another API process on the same folder, is left alone).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            try:
                if entry.name.startswith(_TEMP_PREFIX):
                    parts = entry.name.rsplit("-", 2)
                    pid = parts[-2] if len(parts) == 3 else ""
                    stale = time.time() - entry.stat().st_mtime > 2 * BUILD_TIMEOUT
                    if stale or not pid.isdigit() or not _pid_alive(int(pid)):
                        shutil.rmtree(entry, ignore_errors=True)
                elif not entry.is_dir():
                    entry.unlink(missing_ok=True)
                elif not _NAME.match(entry.name) or _read_owner(entry) is None:
                    log.info("removing %s from the HLS cache: no finished rendition", entry.name)
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:  # another API process removed it first
                continue
        self._scan()

    def _scan(self) -> None:
        """Read the renditions on disk, least recently played first (all processes add there)."""
        found: list[tuple[int, str, _Held]] = []
        for entry in self.root.iterdir():
            if entry.name.startswith(_TEMP_PREFIX) or not _NAME.match(entry.name):
                continue
            held = _read_owner(entry)
            if held is not None:
                found.append((held.played, entry.name, held))
        self._held = OrderedDict((name, held) for _, name, held in sorted(found))

    @property
    def held_bytes(self) -> int:
        """Bytes of the built renditions, plus what running builds reserved."""
        return sum(h.size for h in self._held.values()) + sum(self._reserved.values())

    def account_bytes(self, account_id: str) -> int:
        """Bytes of `account_id`'s built renditions in the cache, as on disk now."""
        self._scan()
        return self._account_held(account_id)

    def _folder(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"bad rendition name {name!r}")
        return self.root / name

    def ready(self, name: str) -> Path | None:
        """The rendition's folder if it was built already."""
        folder = self._folder(name)
        if (folder / PLAYLIST).is_file():
            if name not in self._held:  # another API process on this folder cut it
                self._adopt(name, folder)
            return folder
        self._held.pop(name, None)  # removed behind this process's back
        return None

    def _adopt(self, name: str, folder: Path) -> None:
        held = _read_owner(folder)
        if held is not None:
            self._held[name] = held
            self._held.move_to_end(name)

    # -- use -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[None]:
        """Hold `name` (built or about to be) against eviction while a request serves it.

        It counts as played now; when the last lease ends, the cache makes room again.
        """
        self._leases[name] += 1
        self._touch(name)
        try:
            yield
        finally:
            self._leases[name] -= 1
            if self._leases[name] <= 0:
                del self._leases[name]
            await self._make_room()

    def _touch(self, name: str) -> None:
        """Mark the rendition as played now, here and on disk (for the other processes)."""
        if name not in self._held:
            return
        self._held.move_to_end(name)
        with contextlib.suppress(OSError):
            os.utime(self.root / name / _OWNER)

    async def _make_room(self, account_id: str | None = None, building: int = 0) -> None:
        """Evict renditions, least recently played first, until the cache is under its cap.

        For a build of `account_id` (of `building` bytes), that account's own renditions go first
        while it holds more than half the cap: one account playing many files churns its own
        renditions, not everyone else's.
        """
        gone: list[Path] = []
        if account_id is not None:
            share = self.max_bytes // 2
            for name, held in list(self._held.items()):
                if self.held_bytes <= self.max_bytes:
                    break
                if self._account_held(account_id) + building <= share:
                    break
                if held.account_id == account_id:
                    self._evict(name, gone)
        for name in list(self._held):
            if self.held_bytes <= self.max_bytes:
                break
            self._evict(name, gone)
        for away in gone:
            await asyncio.to_thread(shutil.rmtree, away, True)

    def _account_held(self, account_id: str) -> int:
        return sum(h.size for h in self._held.values() if h.account_id == account_id)

    def _evict(self, name: str, gone: list[Path]) -> None:
        """Take `name` out of the cache unless a request holds it or it is being cut; the
        folder is renamed away at once and added to `gone`, for the caller to delete."""
        if self._leases[name] or name in self._building:
            return
        self._held.pop(name)
        away = self.root / f"{_TEMP_PREFIX}gone-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.root / name, away)
        except FileNotFoundError:  # another API process evicted it first
            return
        except OSError:
            log.warning("could not evict the HLS rendition %s", name, exc_info=True)
            return
        log.info("evicted the HLS rendition %s to keep the cache under its cap", name)
        gone.append(away)

    async def ensure(self, name: str, fetch: Fetch, *, account_id: str, size_hint: int = 0) -> Path:
        """The rendition's folder, built now from what `fetch` writes unless it exists.

        `account_id` is whose build slot it takes and whose bytes it counts as; `size_hint`
        (the source's size) is the room made before it starts. A caller that goes away does not
        stop the build: the next request finds it done. HlsBusy: no build slot came free;
        HlsTooLarge: the source alone is larger than the cache.
        """
        folder = self.ready(name)
        if folder is not None:
            self._touch(name)
            return folder
        if size_hint > self.max_bytes:
            raise HlsTooLarge(
                f"the file ({size_hint} bytes) is larger than the HLS cache "
                f"({self.max_bytes} bytes)"
            )
        build = self._building.get(name)
        if build is None:
            build = asyncio.create_task(
                self._build(name, fetch, account_id, size_hint), name=f"hls:{name}"
            )
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

    async def _build(self, name: str, fetch: Fetch, account_id: str, size_hint: int) -> Path:
        await self.slots.take(account_id, self.build_wait)
        try:
            self._scan()  # what other API processes cut counts against the cap too
            self._reserved[name] = size_hint
            await self._make_room(account_id, size_hint)
            folder = await self._cut_into_place(name, fetch, account_id)
        finally:
            self._reserved.pop(name, None)
            self.slots.give_back(account_id)
        await self._make_room(account_id)  # what was cut may be more than the source's size
        return folder

    async def _cut_into_place(self, name: str, fetch: Fetch, account_id: str) -> Path:
        final = self._folder(name)
        # The pid tells a later start whether this build's process is still alive.
        temp = self.root / f"{_TEMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
            owner = {"account": account_id, "bytes": _folder_bytes(temp)}
            (temp / _OWNER).write_text(json.dumps(owner))
            try:
                os.rename(temp, final)
            except OSError:
                if not (final / PLAYLIST).is_file():  # not another process's build that won
                    raise
            self._adopt(name, final)
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
        self._held.pop(name, None)
        gone = self.root / f"{_TEMP_PREFIX}gone-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
