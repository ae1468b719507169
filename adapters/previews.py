"""Previews of a muxed file, made with FFmpeg (what is made, and its WebVTT: domain/previews.py).

A storyboard takes each tile's frame with a seek of its own (`-ss` before the input: FFmpeg
decodes from the keyframe before it, not the whole video), then tiles them in one more run: at
most `previews.MAX_TILES` + 1 short runs, however long the video. A preview clip is one run over
its few seconds. Every run goes through `muxer.run_ffmpeg`: the stage's cancel stops it, and
its progress keeps the stage's stall watchdog fed. `uploads` names the files for the upload.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from spool.adapters import muxer
from spool.adapters.ffmpeg import file_url
from spool.domain import previews
from spool.domain.job import MediaFile
from spool.domain.job_options import JobOptions
from spool.domain.timecode import parse_timecode

Report = Callable[[float], None]

_TILES = "storyboard-tiles"
"""The folder in the work folder that holds one PNG per tile (lossless: the sheet is the one
JPEG encode) until they are tiled."""
_JPEG_QUALITY = "4"
"""FFmpeg's `-q:v` for JPEG (2 best, 31 worst)."""
_PREVIEW_EXT = {"mp4": "mp4", "webp": "webp"}


def wanted(options: JobOptions) -> int:
    """How many kinds of preview `options` ask for (0: none)."""
    return (options.storyboard_interval is not None) + (options.preview_clip is not None)


def muxed_share(options: JobOptions) -> float:
    """The mux stage's percent when its mux is done: each kind of preview takes a tenth."""
    return 100.0 - 10.0 * wanted(options)


async def make(
    written: muxer.MuxResult,
    options: JobOptions,
    workdir: Path,
    on_progress: Report,
    cancel: asyncio.Event,
) -> list[MediaFile]:
    """The previews `options` ask for, made from the written file into `workdir`.

    Raises:
        muxer.MuxFailed: the file has no video (or no length, for a storyboard), or FFmpeg
            failed.
        muxer.MuxCancelled: the stage was cancelled.
    """
    count = wanted(options)
    if count == 0:
        return []
    if written.width is None or written.height is None:
        raise muxer.MuxFailed("A storyboard or preview clip needs video, and the media has none")
    made: list[MediaFile] = []
    done = 0

    def share(pct: float) -> None:
        on_progress((done * 100.0 + pct) / count)

    if options.storyboard_interval is not None:
        made += await _storyboard(written, options.storyboard_interval, workdir, share, cancel)
        done += 1
    if options.preview_clip is not None:
        clip = options.preview_clip
        made.append(
            await _preview(written, clip.start, clip.duration, clip.format, workdir, share, cancel)
        )
    return made


async def _storyboard(
    written: muxer.MuxResult,
    interval: float,
    workdir: Path,
    on_progress: Report,
    cancel: asyncio.Event,
) -> list[MediaFile]:
    """The sprite sheet and its WebVTT file."""
    assert written.width is not None and written.height is not None
    if not written.duration:
        raise muxer.MuxFailed("A storyboard needs the media's length, and FFmpeg cannot tell it")
    board = previews.plan_storyboard(written.duration, interval, written.width, written.height)
    media = Path(written.path)
    tiles = workdir / _TILES
    shutil.rmtree(tiles, ignore_errors=True)  # an earlier attempt's
    tiles.mkdir(parents=True)
    scale = f"scale={board.tile_width}:{board.tile_height},setsar=1"
    last: Path | None = None
    try:
        for n in range(board.count):
            tile = tiles / f"{n:04d}.png"
            seek = f"{n * board.interval_ms / 1000:.3f}"
            args = ["-ss", seek, "-i", file_url(media), "-map", "0:v:0", "-frames:v", "1"]
            args += ["-vf", scale, "-c:v", "png", "-f", "image2", "-update", "1"]
            await muxer.run_ffmpeg(
                [*args, file_url(tile)],
                expected=None,
                cancel=cancel,
                paths=[media, tile],
                target=tile,
                what="Making the storyboard",
            )
            if not tile.is_file():
                # Past the video's last frame (its audio may run longer): the frame before.
                if last is None:
                    raise muxer.MuxFailed("Making the storyboard failed: the video has no frames")
                shutil.copyfile(last, tile)
            last = tile
            on_progress(90.0 * (n + 1) / board.count)
        sprite = workdir / previews.SPRITE_NAME
        sheet = f"tile={board.columns}x{board.rows}"
        args = ["-framerate", "1", "-i", file_url(tiles / "%04d.png"), "-vf", sheet]
        args += ["-frames:v", "1", "-q:v", _JPEG_QUALITY, "-f", "image2", "-update", "1"]
        await muxer.run_ffmpeg(
            [*args, file_url(sprite)],
            expected=None,
            cancel=cancel,
            paths=[tiles, sprite],
            target=sprite,
            what="Making the storyboard",
        )
    finally:
        shutil.rmtree(tiles, ignore_errors=True)
    vtt = workdir / "storyboard.vtt"
    vtt.write_text(previews.storyboard_vtt(board), encoding="utf-8")
    on_progress(100.0)
    return [
        MediaFile(path=str(sprite), kind=previews.STORYBOARD, size=sprite.stat().st_size),
        MediaFile(path=str(vtt), kind=previews.STORYBOARD_VTT, size=vtt.stat().st_size),
    ]


async def _preview(
    written: muxer.MuxResult,
    start: str | None,
    length: float,
    fmt: str,
    workdir: Path,
    on_progress: Report,
    cancel: asyncio.Event,
) -> MediaFile:
    """A short silent clip of the written file: MP4 (H.264) or animated WebP."""
    media = Path(written.path)
    begin, seconds = previews.preview_window(
        None if start is None else parse_timecode(start), length, written.duration
    )
    dest = workdir / f"preview.{_PREVIEW_EXT[fmt]}"
    args = ["-ss", f"{begin:.3f}", "-i", file_url(media), "-t", f"{seconds:.3f}"]
    args += ["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", previews.preview_filter(fmt)]
    if fmt == "webp":
        args += ["-c:v", "libwebp_anim", "-loop", "0", "-quality", "70", "-f", "webp"]
    else:
        args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p"]
        args += ["-movflags", "+faststart", "-f", "mp4"]
    await muxer.run_ffmpeg(
        [*args, file_url(dest)],
        expected=seconds,
        on_progress=on_progress,
        cancel=cancel,
        paths=[media, dest],
        target=dest,
        what="Making the preview clip",
    )
    if not dest.is_file() or dest.stat().st_size == 0:
        raise muxer.MuxFailed("Making the preview clip failed: no frame in its time range")
    return MediaFile(path=str(dest), kind=previews.PREVIEW, size=dest.stat().st_size)


def uploads(made: list[MediaFile], stem: str) -> list[tuple[str, Path, str]]:
    """`(kind, path, key)` of each preview a mux made, its key beside the media's (`stem`: the
    media's key without its extension): `<stem>.storyboard.jpg`, `<stem>.storyboard.vtt`,
    `<stem>.preview.mp4`. The WebVTT file is written again naming the sprite by its stored name."""
    files: list[tuple[str, Path, str]] = []
    sprite = f"{stem}.storyboard.jpg"
    for found in made:
        path = Path(found.path)
        if not path.is_file():
            continue
        if found.kind == previews.STORYBOARD:
            files.append((found.kind, path, sprite))
        elif found.kind == previews.STORYBOARD_VTT:
            named = path.with_name("storyboard.upload.vtt")
            text = previews.with_sprite(path.read_text(encoding="utf-8"), sprite.rsplit("/", 1)[-1])
            named.write_text(text, encoding="utf-8")
            files.append((found.kind, named, f"{stem}.storyboard.vtt"))
        elif found.kind == previews.PREVIEW:
            files.append((found.kind, path, f"{stem}.preview{path.suffix}"))
    return files
