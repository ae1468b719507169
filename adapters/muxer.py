"""FFmpeg muxing: probe inputs, plan the least work that gives the asked file, and run it.

`plan` is pure: it turns probed inputs and the job API's options into FFmpeg arguments, copying
streams whenever the target container can hold them and re-encoding only when it cannot, when
the user asks for a codec, or when a filter (scaling, an exact clip) needs decoded frames.
`mux` probes, plans and runs FFmpeg as a subprocess with progress, cancellation and a timeout.
The options' names, defaults, presets and formats are `domain.job_options`'; `mux_options`
reads a job's options into `mux`'s arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypedDict

import msgspec

from spool.adapters import process_groups
from spool.adapters.ffmpeg import ffmpeg_exe, file_url
from spool.domain.job_options import (
    AUDIO_FORMATS,
    CRF_RANGE,
    DEFAULT_AUDIO_CODECS,
    DEFAULT_VIDEO_CODECS,
    DEFAULTS,
    QUALITY_PRESETS,
    JobOptions,
    is_audio_only,
    output_ext,
    output_format,
)
from spool.domain.timecode import parse_timecode

# ---------------------------------------------------------------------------------------------
# Public types


class StreamInfo(msgspec.Struct):
    """One stream of a media file, as FFmpeg names its codec (`h264`, `hevc`, `aac`, `opus`...)."""

    kind: Literal["video", "audio", "subtitle"]
    codec: str
    width: int | None = None
    height: int | None = None
    bitrate_kbps: int | None = None


class ProbeInfo(msgspec.Struct):
    """What `probe` learnt of a file: its length in seconds, its streams and its container."""

    duration: float | None
    streams: list[StreamInfo]
    container: str | None


class MuxPlan(msgspec.Struct):
    """The FFmpeg arguments (after the binary) and what they will produce."""

    args: list[str]
    output_ext: str
    video_codec: str | None
    audio_codec: str | None
    transcodes_video: bool
    transcodes_audio: bool


class MuxResult(msgspec.Struct):
    """A finished mux: the file written, its size in bytes, length, codecs and wall time."""

    path: str
    size: int
    duration: float | None
    video_codec: str | None
    audio_codec: str | None
    seconds: float
    source_video_codec: str | None = None
    """The first video stream's codec among the inputs, as FFmpeg read it."""
    source_audio_codec: str | None = None
    width: int | None = None
    """The written video's frame size; None for audio."""
    height: int | None = None
    inputs: list[ProbeInfo] = msgspec.field(default_factory=list)
    """The inputs as FFmpeg read them before the mux, in order (adapters/media_verify.py)."""
    written: ProbeInfo | None = None
    """The file written, as FFmpeg read it back."""


class MuxFailed(Exception):
    """FFmpeg could not make the file; the message is fit to show the user (it names no file:
    the files are this node's temp files, which mean nothing to the user)."""


class Unreadable(MuxFailed):
    """FFmpeg cannot read a file as media: it holds none, or too little of it (cut short).

    `detail` is FFmpeg's own reason ("Invalid data found when processing input").
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"FFmpeg cannot read the media: {detail}")
        self.detail = detail


class MuxCancelled(Exception):
    """The mux was cancelled; FFmpeg was stopped and its partial output removed."""


# ---------------------------------------------------------------------------------------------
# Containers and codecs

# Which codecs (FFmpeg's names) each output container holds without re-encoding; None: any.
# mp4/mov/m4a: what Apple players and browsers play back. Opus and VP9 *can* go into MP4 with
# a modern FFmpeg, but older players choke on them, so they are re-encoded instead.
VIDEO_CODECS: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"h264", "hevc", "av1"}),
    "mov": frozenset({"h264", "hevc"}),
    "mkv": None,
    "webm": frozenset({"vp8", "vp9", "av1"}),
}
AUDIO_CODECS: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "alac"}),
    "mov": frozenset({"aac", "mp3", "alac"}),
    "mkv": None,
    "webm": frozenset({"opus", "vorbis"}),
    "m4a": frozenset({"aac", "alac"}),
    "mp3": frozenset({"mp3"}),
    "ogg": frozenset({"vorbis", "opus", "flac"}),
    "opus": frozenset({"opus"}),
}

# FFmpeg muxer names: set explicitly so the output's file name never decides the container.
_MUXERS = {
    "mp4": "mp4",
    "mov": "mov",
    "mkv": "matroska",
    "webm": "webm",
    "m4a": "ipod",
    "mp3": "mp3",
    "ogg": "ogg",
    "opus": "opus",
}
_FASTSTART = frozenset({"mp4", "mov", "m4a"})

# The job API's codec names, mapped to FFmpeg's codec name and encoder.
_VIDEO_NAMES = {"h264": "h264", "h265": "hevc", "hevc": "hevc", "vp9": "vp9"}
_AUDIO_NAMES = {"aac": "aac", "opus": "opus", "mp3": "mp3"}
_VIDEO_ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}
_AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame", "vorbis": "libvorbis"}

_BITRATE = re.compile(r"^[1-9]\d{0,3}k$")
_RESOLUTION = re.compile(r"^([1-9]\d{1,4})p?$")

_COMMON = [
    "-y",
    "-nostdin",
    "-hide_banner",
    "-loglevel",
    "error",
    "-progress",
    "pipe:1",
    "-nostats",
]


# ---------------------------------------------------------------------------------------------
# Probe


def probe(path: Path) -> ProbeInfo:
    """Read a file's duration, streams and container from `ffmpeg -i` (blocking)."""
    try:
        done = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _ffmpeg_path(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise Unreadable("reading it took too long") from exc
    # Without an output FFmpeg always exits non-zero; an "Input #0" header means it read the file.
    info = parse_probe(done.stderr, path)
    if info is None:
        detail = last_error(done.stderr.splitlines(), [path]) or "unreadable media"
        raise Unreadable(detail)
    return info


_INPUT = re.compile(r"^Input #0, (.+?), from '", re.M)
_DURATION = re.compile(r"^\s*Duration: (?:(\d+):(\d{2}):(\d{2}(?:\.\d+)?)|N/A)", re.M)
_STREAM = re.compile(
    r"^\s*Stream #\d+:\d+\S*: (Video|Audio|Subtitle): ([A-Za-z0-9_]+)(.*)$",
    re.M,
)
# Not preceded by a word character or `/`, so codec tags such as "0x31637661" never match.
_SIZE = re.compile(r"(?<![\w/])(\d{1,5})x(\d{1,5})(?![\w)])")
_KBPS = re.compile(r"\b(\d+) kb/s")
# Extensions whose demuxer goes by another name.
_DEMUXER_OF = {"mkv": "matroska", "mka": "matroska", "opus": "ogg", "oga": "ogg", "m4v": "mp4"}


def parse_probe(stderr: str, path: Path) -> ProbeInfo | None:
    """Parse `ffmpeg -i` output; None when FFmpeg could not open the file."""
    header = _INPUT.search(stderr)
    if header is None:
        return None
    duration: float | None = None
    found = _DURATION.search(stderr)
    if found is not None and found.group(1) is not None:
        h, m, s = found.group(1, 2, 3)
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    streams: list[StreamInfo] = []
    for kind, codec, rest in _STREAM.findall(stderr):
        width = height = bitrate = None
        if kind == "Video" and (size := _SIZE.search(rest)) is not None:
            width, height = int(size.group(1)), int(size.group(2))
        if (kbps := _KBPS.search(rest)) is not None:
            bitrate = int(kbps.group(1))
        streams.append(
            StreamInfo(
                kind="video" if kind == "Video" else "audio" if kind == "Audio" else "subtitle",
                codec=codec,
                width=width,
                height=height,
                bitrate_kbps=bitrate,
            )
        )
    # FFmpeg names demuxers, not containers ("mov,mp4,m4a,..." / "matroska,webm"): the file's
    # own extension picks among them when it fits the demuxer, else the demuxer's first name.
    names = header.group(1).split(",")
    ext = path.suffix.lower().lstrip(".")
    fits = ext in names or _DEMUXER_OF.get(ext) in names
    return ProbeInfo(duration=duration, streams=streams, container=ext if fits else names[0])


# ---------------------------------------------------------------------------------------------
# Plan


def plan(
    inputs: list[ProbeInfo],
    output: Path,
    *,
    input_paths: list[Path],
    format: str | None = None,
    video_codec: str = DEFAULTS.video_codec,
    audio_codec: str = DEFAULTS.audio_codec,
    audio_bitrate: str = DEFAULTS.audio_bitrate,
    video_quality: int = DEFAULTS.video_quality,
    quality_preset: str | None = DEFAULTS.quality_preset,
    max_resolution: str = DEFAULTS.max_resolution,
    audio_only: bool = DEFAULTS.audio_only,
    clip_start: float | None = None,
    clip_end: float | None = None,
    audio_filter: str | None = None,
) -> MuxPlan:
    """Decide the FFmpeg arguments that turn the probed inputs into the asked file (pure).

    `audio_filter` (loudness normalisation: adapters/loudness.py) re-encodes the audio through it.
    """
    if len(inputs) != len(input_paths) or not inputs:
        raise ValueError("plan needs one ProbeInfo per input path, and at least one input")

    fmt = output_format(format, audio_only).lower()
    if fmt not in _MUXERS:
        raise MuxFailed(
            f"Unsupported format '{format}'; choose one of {', '.join(sorted(_MUXERS))}"
        )
    # An audio container implies audio only; audio_only into a video container keeps it.
    audio_only = audio_only or fmt in AUDIO_FORMATS
    crf = _crf(video_quality, quality_preset)
    cap = _max_side(max_resolution)
    if not _BITRATE.match(audio_bitrate):
        raise MuxFailed(f"Invalid audio_bitrate '{audio_bitrate}'; use e.g. 128k or 192k")
    want_video = _named(video_codec, _VIDEO_NAMES, "video_codec")
    want_audio = _named(audio_codec, _AUDIO_NAMES, "audio_codec")
    clip = _clip(clip_start, clip_end)

    target = output_path(output, fmt)
    if any(p == target for p in input_paths):
        raise MuxFailed("The output would overwrite an input")

    video_at = None if audio_only else _first(inputs, "video")
    audio_at = audio_source(inputs)
    if audio_only and audio_at is None:
        raise MuxFailed("The media has no audio stream to extract")
    if video_at is None and audio_at is None:
        raise MuxFailed("The media has no audio or video stream")

    args = list(_COMMON)
    for path in input_paths:
        if clip[0]:
            # Input-side seeking: fast, and exact once the stream is decoded.
            args += ["-ss", _seconds(clip[0])]
        args += ["-i", _ffmpeg_path(path)]
    if clip[1] is not None:
        args += ["-t", _seconds(clip[1] - clip[0])]

    out_video: str | None = None
    out_audio: str | None = None
    transcodes_video = transcodes_audio = False

    if video_at is not None:
        stream = _stream(inputs[video_at], "video")
        args += ["-map", f"{video_at}:v:0"]
        filters = []
        short = _shorter_side(stream)
        if cap is not None and (short is None or short > cap):
            # Written against the frames' own size, so it holds for rotated (phone) video too;
            # -2 keeps the long side even as encoders need, setsar=1 keeps pixels square.
            filters.append(
                f"scale=w='if(lte(iw,ih),min(iw,{cap}),-2)':h='if(lte(iw,ih),-2,min(ih,{cap}))'"
                ",setsar=1"
            )
        holds = VIDEO_CODECS[fmt]
        copyable = holds is None or stream.codec in holds
        # A stream copy can only cut at keyframes; an asked clip is cut exactly, so re-encode.
        if want_video is None and copyable and not filters and not clip[0]:
            out_video = stream.codec
            args += ["-c:v", "copy"]
        else:
            # Re-encoding only for a filter or a cut keeps the source codec where we can.
            keep = copyable and stream.codec in _VIDEO_ENCODERS
            out_video = want_video or (stream.codec if keep else DEFAULT_VIDEO_CODECS[fmt])
            if holds is not None and out_video not in holds:
                raise MuxFailed(f"The {fmt} format cannot hold {video_codec} video")
            transcodes_video = True
            if filters:
                args += ["-vf", ",".join(filters)]
            args += _video_encoder_args(out_video, crf)
        if out_video == "hevc" and fmt in {"mp4", "mov"}:
            # Apple players only play HEVC in MP4 tagged hvc1 (FFmpeg's default is hev1).
            args += ["-tag:v", "hvc1"]

    if audio_at is not None:
        stream = _stream(inputs[audio_at], "audio")
        args += ["-map", f"{audio_at}:a:0"]
        holds = AUDIO_CODECS[fmt]
        if want_audio is None and audio_filter is None and (holds is None or stream.codec in holds):
            out_audio = stream.codec
            args += ["-c:a", "copy"]
        else:
            out_audio = want_audio or DEFAULT_AUDIO_CODECS[fmt]
            if holds is not None and out_audio not in holds:
                raise MuxFailed(f"The {fmt} format cannot hold {audio_codec} audio")
            transcodes_audio = True
            if audio_filter is not None:
                args += ["-af", audio_filter]
            args += ["-c:a", _AUDIO_ENCODERS[out_audio], "-b:a", audio_bitrate]

    if fmt in _FASTSTART:
        # Index at the front, so playback starts before the whole file has downloaded.
        args += ["-movflags", "+faststart"]
    args += ["-f", _MUXERS[fmt], _ffmpeg_path(target)]
    return MuxPlan(
        args=args,
        output_ext=fmt,
        video_codec=out_video,
        audio_codec=out_audio,
        transcodes_video=transcodes_video,
        transcodes_audio=transcodes_audio,
    )


def output_path(output: Path, ext: str) -> Path:
    """Where a mux to `output` writes: its media suffix set to `ext`, or `.ext` appended."""
    known = set(_MUXERS) | {"m4v", "mka", "oga", "aac", "flac", "wav", "ts"}
    if output.suffix.lower().lstrip(".") in known:
        return output.with_suffix(f".{ext}")
    # "Ep. 1 - Pilot" has a suffix too, but it is part of the name.
    return output.with_name(f"{output.name}.{ext}")


def _crf(video_quality: int, quality_preset: str | None) -> int:
    if quality_preset is not None:
        if quality_preset not in QUALITY_PRESETS:
            names = ", ".join(QUALITY_PRESETS)
            raise MuxFailed(f"Unknown quality_preset '{quality_preset}'; choose one of {names}")
        return QUALITY_PRESETS[quality_preset]
    low, high = CRF_RANGE
    if not low <= video_quality <= high:
        raise MuxFailed(f"video_quality must be a CRF between {low} and {high}")
    return video_quality


def _max_side(max_resolution: str) -> int | None:
    if max_resolution == "best":
        return None
    found = _RESOLUTION.match(max_resolution)
    if found is None:
        raise MuxFailed(f"Invalid max_resolution '{max_resolution}'; use best, 1080, 720, ...")
    return int(found.group(1))


def _named(value: str, names: dict[str, str], field: str) -> str | None:
    """The FFmpeg codec a user-facing codec option asks for; None for `copy`."""
    if value == "copy":
        return None
    if value not in names:
        allowed = ", ".join(["copy", *(n for n in names if n != "hevc")])
        raise MuxFailed(f"Unsupported {field} '{value}'; choose one of {allowed}")
    return names[value]


def _clip(start: float | None, end: float | None) -> tuple[float, float | None]:
    begin = start or 0.0
    if begin < 0 or (end is not None and end <= begin):
        raise MuxFailed("clip_end must be after clip_start, and neither may be negative")
    return begin, end


def _first(inputs: list[ProbeInfo], kind: str) -> int | None:
    return next((i for i, info in enumerate(inputs) if _has(info, kind)), None)


def audio_source(inputs: list[ProbeInfo]) -> int | None:
    """Prefer a separate audio input (the "bestaudio" of a split download) to muxed audio."""
    alone = next(
        (i for i, p in enumerate(inputs) if _has(p, "audio") and not _has(p, "video")), None
    )
    return alone if alone is not None else _first(inputs, "audio")


def _has(info: ProbeInfo, kind: str) -> bool:
    return any(s.kind == kind for s in info.streams)


def _stream(info: ProbeInfo, kind: str) -> StreamInfo:
    return next(s for s in info.streams if s.kind == kind)


def _shorter_side(stream: StreamInfo) -> int | None:
    if stream.width is None or stream.height is None:
        return None
    return min(stream.width, stream.height)


def _video_encoder_args(codec: str, crf: int) -> list[str]:
    args = ["-c:v", _VIDEO_ENCODERS[codec], "-crf", str(crf)]
    if codec == "vp9":
        # -b:v 0 makes libvpx honour the CRF alone; its default deadline is far too slow to use.
        args += ["-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1"]
    # 4:2:0 8-bit, the only pixel format every player decodes.
    return [*args, "-pix_fmt", "yuv420p"]


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _ffmpeg_path(path: Path) -> str:
    return file_url(path)


# ---------------------------------------------------------------------------------------------
# Run


class MuxOptions(TypedDict):
    """What `mux` takes from a job's options."""

    format: str
    video_codec: str
    audio_codec: str
    audio_bitrate: str
    video_quality: int
    quality_preset: str | None
    max_resolution: str
    audio_only: bool
    clip_start: float | None
    clip_end: float | None


def mux_options(options: JobOptions) -> MuxOptions:
    """A job's options as `mux`'s arguments (clip bounds in seconds)."""
    return MuxOptions(
        format=output_ext(options),
        video_codec=options.video_codec,
        audio_codec=options.audio_codec,
        audio_bitrate=options.audio_bitrate,
        video_quality=options.video_quality,
        quality_preset=options.quality_preset,
        max_resolution=options.max_resolution,
        audio_only=is_audio_only(options),
        clip_start=parse_timecode(options.clip_start) if options.clip_start else None,
        clip_end=parse_timecode(options.clip_end) if options.clip_end else None,
    )


async def mux(
    input_paths: list[Path],
    output: Path,
    *,
    format: str | None = None,
    video_codec: str = DEFAULTS.video_codec,
    audio_codec: str = DEFAULTS.audio_codec,
    audio_bitrate: str = DEFAULTS.audio_bitrate,
    video_quality: int = DEFAULTS.video_quality,
    quality_preset: str | None = DEFAULTS.quality_preset,
    max_resolution: str = DEFAULTS.max_resolution,
    audio_only: bool = DEFAULTS.audio_only,
    clip_start: float | None = None,
    clip_end: float | None = None,
    audio_filter: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: asyncio.Event | None = None,
    # A plain seconds figure, as the job pipeline's stage deadline is one.
    timeout: float | None = None,
) -> MuxResult:
    """Probe the inputs, plan, and run FFmpeg; the file lands at `output_path(output, ext)`."""
    started = time.monotonic()
    if cancel is not None and cancel.is_set():
        raise MuxCancelled("Cancelled before muxing started")
    infos = list(await asyncio.gather(*(asyncio.to_thread(probe, p) for p in input_paths)))
    the_plan = plan(
        infos,
        output,
        input_paths=input_paths,
        format=format,
        video_codec=video_codec,
        audio_codec=audio_codec,
        audio_bitrate=audio_bitrate,
        video_quality=video_quality,
        quality_preset=quality_preset,
        max_resolution=max_resolution,
        audio_only=audio_only,
        clip_start=clip_start,
        clip_end=clip_end,
        audio_filter=audio_filter,
    )
    target = output_path(output, the_plan.output_ext)
    progress = _Progress(_expected_duration(infos, clip_start, clip_end), on_progress)
    await _run(the_plan.args, progress, cancel, timeout, [*input_paths, target], target)
    progress.finish()

    try:
        written = await asyncio.to_thread(probe, target)
    except Unreadable as exc:
        # Unreadable is about the inputs; an output FFmpeg cannot read back is its own failure.
        raise MuxFailed(f"Muxing failed: the file written is unreadable ({exc})") from None
    video = next((s for s in written.streams if s.kind == "video"), None)
    return MuxResult(
        path=str(target),
        size=target.stat().st_size,
        duration=written.duration,
        video_codec=_codec_of(written, "video", the_plan.video_codec),
        audio_codec=_codec_of(written, "audio", the_plan.audio_codec),
        seconds=time.monotonic() - started,
        source_video_codec=_first_codec(infos, "video"),
        source_audio_codec=_first_codec(infos, "audio"),
        width=video.width if video else None,
        height=video.height if video else None,
        inputs=infos,
        written=written,
    )


def _first_codec(infos: list[ProbeInfo], kind: str) -> str | None:
    return next((s.codec for i in infos for s in i.streams if s.kind == kind), None)


async def run_ffmpeg(
    args: list[str],
    *,
    expected: float | None,
    on_progress: Callable[[float], None] | None = None,
    cancel: asyncio.Event | None = None,
    timeout: float | None = None,
    paths: Sequence[Path] = (),
    target: Path | None = None,
    what: str = "Muxing",
) -> list[str]:
    """Run FFmpeg as `mux` does, on `args` after the common ones (a later `-loglevel` wins over
    theirs): progress against `expected` seconds, stopped by `cancel` (MuxCancelled) or past
    `timeout`, `target` removed unless it succeeds, errors named without `paths` and headed by
    `what`. Returns the last lines FFmpeg wrote to stderr."""
    progress = _Progress(expected, on_progress)
    lines = await _run([*_COMMON, *args], progress, cancel, timeout, list(paths), target, what)
    progress.finish()
    return lines


async def _run(
    args: list[str],
    progress: _Progress,
    cancel: asyncio.Event | None,
    limit: float | None,
    paths: list[Path],
    target: Path | None,
    what: str = "Muxing",
) -> list[str]:
    """Run FFmpeg to completion, returning its last stderr lines; on any way out but success,
    stop it and remove its output."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group: a terminal's Ctrl-C reaches Spool alone, which then stops
        # FFmpeg itself and records the mux as interrupted, not as FFmpeg failing.
        start_new_session=True,
    )
    process_groups.adopt(proc.pid)
    errors: deque[str] = deque(maxlen=30)
    run = asyncio.ensure_future(_drain(proc, progress, errors))
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    succeeded = False
    try:
        waiting = {run} if cancelled is None else {run, cancelled}
        done, _ = await asyncio.wait(waiting, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if run not in done:
            if cancelled is not None and cancelled in done:
                raise MuxCancelled(f"{what} was cancelled")
            raise MuxFailed(f"{what} took longer than {limit:g} s and was stopped")
        code = run.result()
        if code != 0:
            detail = last_error(errors, paths) or f"FFmpeg exited with status {code}"
            raise MuxFailed(f"{what} failed: {detail}")
        succeeded = True
    finally:
        if cancelled is not None:
            cancelled.cancel()
        if not succeeded and proc.returncode is None:
            # Also reached when our own task is cancelled: never leave FFmpeg running.
            process_groups.kill(proc.pid)
        process_groups.release(proc.pid)
        if not succeeded:
            # Shielded so a second cancellation cannot leave the pipes unread and a zombie.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(run)
                await proc.wait()
            # Synchronous on purpose: an await here could itself be cancelled, leaving the file.
            if target is not None:
                target.unlink(missing_ok=True)
    return list(errors)


async def _drain(proc: asyncio.subprocess.Process, progress: _Progress, errors: deque[str]) -> int:
    """Read FFmpeg's progress and error output until it exits; return its exit status."""
    assert proc.stdout is not None and proc.stderr is not None

    async def read_progress() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and value.lstrip("-").isdigit():
                progress.at(int(value) / 1_000_000)

    async def read_errors() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            errors.append(raw.decode(errors="replace").rstrip())

    await asyncio.gather(read_progress(), read_errors())
    return await proc.wait()


def share(report: Callable[[float], None], low: float, high: float) -> Callable[[float], None]:
    """One FFmpeg run's 0-100 % reported as its share, `low` to `high`, of a stage's percent."""
    return lambda pct: report(low + (high - low) * min(pct, 100.0) / 100.0)


class _Progress:
    """Turns FFmpeg's output time into percentages, reported at most every 1 s or 5 %."""

    def __init__(
        self,
        expected: float | None,
        on_progress: Callable[[float], None] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.expected = expected
        self.on_progress = on_progress
        self.clock = clock
        self.last_percent = 0.0
        self.last_time = clock()

    def at(self, seconds: float) -> None:
        """Note that FFmpeg has written `seconds` of output."""
        if self.on_progress is None or not self.expected:
            return
        percent = 100.0 * seconds / self.expected
        # 100 is said once, by finish(), only after FFmpeg has exited cleanly.
        if percent <= self.last_percent or percent >= 100.0:
            return
        now = self.clock()
        if now - self.last_time >= 1.0 or percent - self.last_percent >= 5.0:
            self.last_percent, self.last_time = percent, now
            self.on_progress(percent)

    def finish(self) -> None:
        """Report 100 %."""
        if self.on_progress is not None:
            self.on_progress(100.0)


def _expected_duration(
    inputs: list[ProbeInfo], clip_start: float | None, clip_end: float | None
) -> float | None:
    known = [i.duration for i in inputs if i.duration is not None]
    end = max(known) if known else None
    if clip_end is not None:
        end = clip_end if end is None else min(end, clip_end)
    if end is None:
        return None
    length = end - (clip_start or 0.0)
    return length if length > 0 else None


def _codec_of(info: ProbeInfo, kind: str, planned: str | None) -> str | None:
    return next((s.codec for s in info.streams if s.kind == kind), planned)


# Lines FFmpeg prints around the real error that tell the user nothing.
_NOISE = re.compile(
    r"^(Conversion failed!|Error opening (input|output) file .*\.|Exiting normally.*)$"
)
_CONTEXT = re.compile(r"^\[[^\]]+ @ (0x)?[0-9a-fA-F]+\]\s*")
_OPENING = re.compile(r"^Error opening (input|output) files?: ")


def last_error(lines: Iterable[str], paths: list[Path]) -> str | None:
    """The last meaningful FFmpeg error line, without addresses or any of `paths`' names."""
    meaningful = None
    for line in lines:
        text = _CONTEXT.sub("", line.strip())
        if text and not _NOISE.match(text):
            meaningful = text
    if meaningful is None:
        return None
    meaningful = _OPENING.sub("", meaningful)
    # Longest first, so a path is never half replaced by its own name.
    for name in sorted(
        {n for p in paths for n in (_ffmpeg_path(p), str(p), p.name)}, key=len, reverse=True
    ):
        # "<file>: Invalid data found..." says the same without the file's name.
        meaningful = meaningful.removeprefix(f"{name}: ").replace(name, "the file")
    return meaningful[:300]
