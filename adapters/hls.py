"""Adaptive HLS packages of a muxed file, made with FFmpeg (what is made, and the master
playlist's text: domain/hls.py).

One FFmpeg run per rendition, each writing its media playlist and MPEG-TS segments into its
own folder of the package (`<workdir>/hls/<height>p/`), H.264 High at a fixed level and
bitrate with a keyframe at every segment boundary, AAC stereo. Every run goes through
`muxer.run_ffmpeg`: the stage's cancel stops it, and its progress keeps the stage's stall
watchdog fed. The master playlist is written last, its BANDWIDTH measured from the segments.
`uploads` names the package's files for the upload, beside the media's key.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from spool.adapters import muxer
from spool.adapters.ffmpeg import file_url
from spool.domain import hls
from spool.domain.job import MediaFile
from spool.domain.job_options import HlsRendition, JobOptions

Report = Callable[[float], None]

FOLDER = "hls"
"""The package's folder in the work folder."""
KIND = "hls"
"""The kind the package goes by: its master playlist's object, and the mux's record of it."""
SHARE = 40.0
"""The mux stage's percent the package takes, when a job asks for one."""


def share(options: JobOptions) -> float:
    """How much of the mux stage's percent packaging takes (0: no package asked)."""
    return SHARE if options.hls is not None else 0.0


async def package(
    written: muxer.MuxResult,
    options: JobOptions,
    workdir: Path,
    on_progress: Report,
    cancel: asyncio.Event,
) -> MediaFile | None:
    """The HLS package `options` asks for, made from the written file into `workdir/hls`:
    its folder, sized as the sum of its files (None: no package asked).

    Raises:
        muxer.MuxFailed: the file has no video, every rendition is taller than it, or FFmpeg
            failed.
        muxer.MuxCancelled: the stage was cancelled.
    """
    if options.hls is None:
        return None
    if written.width is None or written.height is None:
        raise muxer.MuxFailed("An HLS package needs video, and the media has none")
    renditions = hls.fitting(options.hls.renditions, written.height)
    if not renditions:
        raise muxer.MuxFailed(
            f"Every hls rendition is taller than the video ({written.height}p); "
            "none is made larger than its source"
        )
    root = workdir / FOLDER
    shutil.rmtree(root, ignore_errors=True)  # an earlier attempt's
    media = Path(written.path)
    seconds = hls.segment_seconds(written.duration)
    has_audio = written.audio_codec is not None
    variants: list[hls.Variant] = []
    try:
        for n, rendition in enumerate(renditions):
            low, high = 100.0 * n / len(renditions), 100.0 * (n + 1) / len(renditions)
            variants.append(
                await _rendition(
                    media,
                    written,
                    rendition,
                    seconds,
                    has_audio,
                    root,
                    muxer.share(on_progress, low, high),
                    cancel,
                )
            )
        master = root / hls.MASTER_NAME
        master.write_text(hls.master_playlist(variants), encoding="utf-8")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    on_progress(100.0)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return MediaFile(path=str(root), kind=KIND, size=size)


async def _rendition(
    media: Path,
    written: muxer.MuxResult,
    rendition: HlsRendition,
    seconds: float,
    has_audio: bool,
    root: Path,
    on_progress: Report,
    cancel: asyncio.Event,
) -> hls.Variant:
    """One rendition's media playlist and segments, and how the master names it."""
    assert written.width is not None and written.height is not None
    name = hls.folder(rendition.height)
    out = root / name
    out.mkdir(parents=True)
    width, height = hls.frame(written.width, written.height, rendition.height)
    rate = hls.kbits(rendition.video_bitrate)
    assert rate is not None  # checked when the job was created (domain/job_options.py)
    args = ["-i", file_url(media), "-map", "0:v:0", "-sn", "-dn"]
    args += ["-vf", f"scale={width}:{height},setsar=1", "-c:v", "libx264", "-preset", "veryfast"]
    args += ["-profile:v", "high", "-level:v", hls.level(rendition.height), "-pix_fmt", "yuv420p"]
    # Capped near the asked rate so BANDWIDTH holds; a keyframe opens every segment.
    args += ["-b:v", f"{rate}k", "-maxrate", f"{rate * 107 // 100}k", "-bufsize", f"{rate * 2}k"]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{seconds:g})", "-sc_threshold", "0"]
    if has_audio:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", rendition.audio_bitrate, "-ac", "2"]
    else:
        args += ["-an"]
    playlist = out / hls.MEDIA_NAME
    args += ["-f", "hls", "-hls_time", f"{seconds:g}", "-hls_playlist_type", "vod"]
    args += ["-hls_segment_type", "mpegts", "-hls_flags", "independent_segments"]
    args += ["-hls_segment_filename", file_url(out / "seg_%05d.ts"), file_url(playlist)]
    await muxer.run_ffmpeg(
        args,
        expected=written.duration,
        on_progress=on_progress,
        cancel=cancel,
        paths=[media, out],
        target=playlist,
        what=f"Packaging the {name} HLS rendition",
    )
    if not playlist.is_file():
        raise muxer.MuxFailed(f"Packaging the {name} HLS rendition failed: no playlist written")
    found = hls.segments(playlist.read_text(encoding="utf-8"))
    peak, average = hls.bandwidths([(s, (out / uri).stat().st_size) for s, uri in found])
    return hls.Variant(
        uri=f"{name}/{hls.MEDIA_NAME}",
        width=width,
        height=height,
        bandwidth=peak,
        average_bandwidth=average,
        codecs=hls.codecs(rendition.height, has_audio),
    )


def uploads(made: MediaFile | None, stem: str) -> list[tuple[str, Path, str]]:
    """`(kind, path, key)` of each file of a package, under `<stem>.hls/` (`stem`: the media's
    key without its extension): the media playlists and segments first (kinds `hls/<path>`),
    the master playlist last (kind `hls`), so it names only what is stored."""
    if made is None:
        return []
    root = Path(made.path)
    if not root.is_dir():
        return []
    prefix = f"{stem}{hls.FOLDER_SUFFIX}"
    files: list[tuple[str, Path, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != hls.MASTER_NAME:
            files.append((f"{KIND}/{relative}", path, f"{prefix}/{relative}"))
    master = root / hls.MASTER_NAME
    if master.is_file():
        files.append((KIND, master, f"{prefix}/{hls.MASTER_NAME}"))
    return files
