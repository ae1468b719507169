"""Every job option in one place: its name, type, default, allowed values and rule.

`AskedOptions` declares each option once, as a request gives it (types as loose as JSON, None
where not given): the job API's create and bulk bodies embed it, so its fields are the body's.
`JobOptions` is what a job is created with: the same fields, with the ones a rule resolves
narrowed to their resolved type and default. `resolve` applies the rules in a fixed order and
raises `InvalidOption` with the message the job API answers (`{"error": "..."}`, 400).

A new option is one field of `AskedOptions` (plus its rule in `resolve` and a narrowed field in
`JobOptions` if it has one) and the adapter that honours it (e.g. `adapters/muxer.py`,
`mux_options`); docs/architecture.md, "Where to add things".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import msgspec

from spool.domain import file_names, hls, loudness, previews
from spool.domain.errors import DomainError
from spool.domain.fair_share import InvalidPriority, parse_priority
from spool.domain.timecode import normalize_timecode, parse_timecode

MAX_URL_LENGTH: Final = 8192
MAX_WEBHOOK_URL_LENGTH: Final = 2048

VIDEO_FORMATS: Final = ("mp4", "mkv", "webm", "mov")
AUDIO_FORMATS: Final = ("m4a", "mp3", "ogg", "opus")
VIDEO_CODECS: Final = ("copy", "h264", "h265", "vp9")
AUDIO_CODECS: Final = ("copy", "aac", "opus", "mp3")
AUDIO_BITRATES: Final = ("64k", "96k", "128k", "160k", "192k", "256k", "320k")
QUALITY_PRESETS: Final[dict[str, int]] = {
    "highest": 18,
    "high": 20,
    "medium": 23,
    "low": 28,
    "lowest": 32,
}
"""`quality_preset` -> the CRF it stands for; a preset overrides `video_quality`."""
MAX_RESOLUTIONS: Final = ("best", "2160", "1440", "1080", "720", "480", "360")
VERIFY_MODES: Final = ("fast", "full", "off")
"""`verify`: probe the output (`fast`), also decode it end to end (`full`), or neither
(domain/verification.py)."""
CRF_RANGE: Final = (0, 51)
"""The `video_quality` (CRF) values an encoder takes, lowest (best) first."""

# What each container can hold when we encode into it. `copy` is never checked here: the source
# codec is unknown until download, and the mux stage falls back to an encode it can store.
# Each "no" below was checked against FFmpeg 9 (the imageio-ffmpeg build), which refuses it:
# webm takes only VP8/VP9/AV1 and Vorbis/Opus; mov refuses vp9 and opus ("only supported in
# MP4"); the m4a (ipod) muxer has no tag for opus or mp3; mp3, ogg and opus hold one codec each.
# FFmpeg would write vp9 and opus into mp4, but many players cannot play that, so the mux stage
# refuses it too: asking for it is a 400 here rather than a job that fails later.
VIDEO_CODECS_BY_FORMAT: Final[dict[str, tuple[str, ...]]] = {
    "mp4": ("h264", "h265"),
    "mkv": ("h264", "h265", "vp9"),
    "webm": ("vp9",),
    "mov": ("h264", "h265"),
}
AUDIO_CODECS_BY_FORMAT: Final[dict[str, tuple[str, ...]]] = {
    "mp4": ("aac", "mp3"),
    "mkv": ("aac", "opus", "mp3"),
    "webm": ("opus",),
    "mov": ("aac", "mp3"),
    "m4a": ("aac",),
    "mp3": ("mp3",),
    "ogg": ("opus",),
    "opus": ("opus",),
}

DEFAULT_VIDEO_CODECS: Final[dict[str, str]] = {
    "mp4": "h264",
    "mov": "h264",
    "mkv": "h264",
    "webm": "vp9",
}
"""What the mux stage encodes video to when the source's cannot be copied and none was asked."""
DEFAULT_AUDIO_CODECS: Final[dict[str, str]] = {
    "mp4": "aac",
    "mov": "aac",
    "mkv": "aac",
    "webm": "opus",
    "m4a": "aac",
    "mp3": "mp3",
    # .ogg conventionally means Vorbis; whoever wants Opus asks for the opus format.
    "ogg": "vorbis",
    "opus": "opus",
}
"""The same for audio, in FFmpeg's codec names (`vorbis` is not one a request may ask for)."""


class InvalidOption(DomainError):
    """A job request the rules refuse; the message is the one the job API answers."""


class AskedPreviewClip(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`preview_clip` as an object: where it starts in the output (a timecode or seconds; null:
    a tenth of the way in), how long it lasts (seconds) and its format (`mp4` or `webp`)."""

    start: str | int | float | None = None
    duration: int | float | None = None
    format: str | None = None


class PreviewClip(AskedPreviewClip, frozen=True, kw_only=True):
    """A job's preview clip, resolved: `start` stored as `clip_start` is (None: a tenth in)."""

    start: str | None = None
    duration: float = previews.PREVIEW_SECONDS
    format: str = "mp4"


class AskedRendition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rendition of `hls` as asked: its height (a `max_resolution` value) and, optionally,
    its H.264 bitrate (`2500k`) and AAC bitrate (one of `AUDIO_BITRATES`)."""

    height: int | str
    video_bitrate: str | None = None
    audio_bitrate: str | None = None


class AskedHls(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`hls`: an adaptive HLS package of the output, one rendition per entry (domain/hls.py)."""

    renditions: tuple[AskedRendition, ...]


class HlsRendition(AskedRendition, frozen=True, kw_only=True):
    """A rendition resolved: its height as a number, both bitrates decided."""

    height: int
    video_bitrate: str
    audio_bitrate: str = hls.AUDIO_BITRATE


class Hls(AskedHls, frozen=True, kw_only=True):
    """A job's HLS package, resolved: its renditions, tallest first."""

    renditions: tuple[HlsRendition, ...]


class AskedOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Every job option as a request gives it; the names are the job API's.

    Types are deliberately loose (`format: str`, not a `Literal`) so that a wrong value gets
    our documented message from `resolve` rather than a generic schema error; wrong JSON types
    are still refused by msgspec. False / null (the defaults) are always fine, so clients that
    send every field work.
    """

    format: str | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_bitrate: str | None = None
    video_quality: int | None = None
    quality_preset: str | None = None
    max_resolution: str | int | None = None
    audio_only: bool = False
    download_subtitles: bool = False
    download_thumbnail: bool = False
    clip_start: str | int | float | None = None
    clip_end: str | int | float | None = None
    filename: str | None = None
    folder: str | None = None
    webhook_url: str | None = None
    enable_progress_webhook: bool = False
    live_recording: bool = False
    live_from_start: bool = False
    max_duration: int | None = None
    wait_for_video: bool = False
    priority: str | int | None = None
    """Among the account's waiting jobs, higher starts first (domain/fair_share.py)."""
    force: bool = False
    """Download even if the item is already in the account's download archive
    (domain/archive.py): the job is never skipped."""
    verify: str | None = None
    """How the output is checked against the request after the mux (`VERIFY_MODES`)."""
    normalize_audio: bool = False
    """EBU R128 loudness normalisation in two passes (domain/loudness.py); re-encodes audio."""
    loudness_target: int | float | None = None
    """The integrated loudness normalised to, LUFS; needs `normalize_audio`."""
    storyboard: bool = False
    """A sprite sheet of thumbnails and its WebVTT file (domain/previews.py)."""
    storyboard_interval: int | float | None = None
    """Seconds between a storyboard's tiles; needs `storyboard`."""
    preview_clip: bool | AskedPreviewClip | None = None
    """A short silent MP4 or animated WebP of the output: true for the defaults, or an object."""
    hls: AskedHls | None = None
    """An adaptive HLS package of the output beside it (domain/hls.py)."""


class JobOptions(AskedOptions, frozen=True, kw_only=True, omit_defaults=True):
    """The options a job was created with: every rule applied, every default resolved.

    Only the fields a rule narrows are declared again; the rest are `AskedOptions`' as given.
    `format` is stored resolved (`mp4`, or `m4a` for audio); older events may lack it.
    """

    video_codec: str = "copy"
    audio_codec: str = "copy"
    audio_bitrate: str = "192k"
    video_quality: int = 23
    max_resolution: str = "best"
    clip_start: str | None = None
    clip_end: str | None = None
    priority: int | None = None
    """None: the account's default priority, decided when the job joins the line."""
    verify: str = "fast"
    """Jobs created before the option was: `fast`, as every job since unless it asks."""
    loudness_target: float | None = None
    """Set (the asked target, or the default for the job's kind) exactly when normalising."""
    storyboard_interval: float | None = None
    """Set exactly when a storyboard is made."""
    preview_clip: PreviewClip | None = None
    hls: Hls | None = None


DEFAULTS: Final = JobOptions()
"""The options of a job that asked for nothing but its URL (before its format is resolved)."""


def output_format(fmt: str | None, audio_only: bool) -> str:
    """The container the user gets: the asked format, else m4a for audio, mp4 for video."""
    if fmt:
        return fmt
    return "m4a" if audio_only else "mp4"


def output_ext(options: JobOptions) -> str:
    """The container a job's file is written in."""
    return output_format(options.format, options.audio_only)


def is_audio_only(options: JobOptions) -> bool:
    """Whether a job keeps audio alone: asked for, or implied by an audio container."""
    return options.audio_only or output_ext(options) in AUDIO_FORMATS


def _bad(detail: str) -> InvalidOption:
    return InvalidOption(detail)


def _one_of(values: tuple[str, ...]) -> str:
    """`a, b or c`: the allowed values, in the reference's order, for a message."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _split_http_url(text: str) -> SplitResult | None:
    """The parts of an http(s) URL with a host and a valid port, else None."""
    try:
        parts = urlsplit(text)
        _ = parts.port  # reading it is the check: it raises on a bad or out-of-range port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _has_credentials(parts: SplitResult) -> bool:
    return "@" in parts.netloc


def check_url(raw: str) -> str:
    """The URL a job fetches, as stored: trimmed, http(s), without credentials.

    Raises:
        InvalidOption: naming what is wrong with it.
    """
    url = raw.strip()
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"Invalid URL: too long (max {MAX_URL_LENGTH} characters)")
    # A URL has no whitespace or control characters (RFC 3986); a raw CR/LF is also how a
    # header gets injected into the downloader's request.
    if _has_control(url) or any(c.isspace() for c in url):
        raise _bad("Invalid URL: must not contain spaces or control characters")
    return _http_url(url, "Invalid URL", "an http(s) URL")


def _check_webhook_url(raw: str) -> str:
    if len(raw) > MAX_WEBHOOK_URL_LENGTH:
        raise _bad(f"Webhook URL too long (max {MAX_WEBHOOK_URL_LENGTH} characters)")
    # Checked before any stripping: a CR/LF anywhere is a header-injection attempt, not a typo.
    if _has_control(raw):
        raise _bad("Invalid webhook_url: must not contain control characters")
    url = raw.strip()
    # A backslash is read as "/" by some URL parsers and as text by others; refusing it keeps
    # every parser agreeing on which host we call.
    if any(c.isspace() for c in url) or "\\" in url:
        raise _bad("Invalid webhook_url: expected an http(s) URL with a host")
    return _http_url(url, "Invalid webhook_url", "an http(s) URL with a host")


def _http_url(url: str, refusal: str, expected: str) -> str:
    """`url`, if it is an http(s) URL without credentials; `refusal` heads what is wrong."""
    parts = _split_http_url(url)
    if parts is None:
        raise _bad(f"{refusal}: expected {expected}")
    if _has_credentials(parts):
        # A job's URLs are stored in its events, which are never rewritten or deleted.
        raise _bad(f"{refusal}: must not contain credentials (user:password@)")
    return url


def check_filename(filename: str) -> str:
    """A user's `filename` (no extension), checked by `domain.file_names.check_filename`.

    Raises:
        InvalidOption: naming the field and the character or name that is not allowed.
    """
    return _safe_name(file_names.check_filename, filename)


def check_folder(folder: str) -> str:
    """A user's `folder` (a storage prefix), checked by `domain.file_names.check_folder`.

    Raises:
        InvalidOption: naming the field and the character or name that is not allowed.
    """
    return _safe_name(file_names.check_folder, folder)


def _safe_name(check: Callable[[str], str], name: str) -> str:
    """`check(name)`, its refusal (`file_names.UnsafeName`) raised as an InvalidOption."""
    try:
        return check(name)
    except file_names.UnsafeName as exc:
        raise _bad(str(exc)) from None


def _resolve_format(fmt: str | None, audio_only: bool) -> tuple[str, bool]:
    """The output format and whether the job is audio-only."""
    if fmt is None:
        return output_format(fmt, audio_only), audio_only
    if fmt not in VIDEO_FORMATS + AUDIO_FORMATS:
        raise _bad(f"Invalid format (expected {_one_of(VIDEO_FORMATS + AUDIO_FORMATS)})")
    if audio_only and fmt in VIDEO_FORMATS:
        raise _bad(
            f"Invalid format: {fmt} is a video format, but audio_only is set "
            f"(expected {_one_of(AUDIO_FORMATS)})"
        )
    # An audio container cannot hold video, so asking for one means asking for audio only.
    return fmt, audio_only or fmt in AUDIO_FORMATS


def _check_video_codec(codec: str | None, fmt: str, audio_only: bool) -> str:
    if codec is None:
        return DEFAULTS.video_codec
    if codec not in VIDEO_CODECS:
        raise _bad(f"Invalid video_codec (expected {_one_of(VIDEO_CODECS)})")
    if codec == "copy":
        return codec
    if audio_only:
        raise _bad(f"Invalid video_codec: {fmt} holds audio only (use copy or leave it out)")
    allowed = VIDEO_CODECS_BY_FORMAT[fmt]
    if codec not in allowed:
        raise _bad(
            f"Invalid video_codec: {fmt} cannot hold {codec} (use {_one_of(('copy', *allowed))})"
        )
    return codec


def _check_audio_codec(codec: str | None, fmt: str) -> str:
    if codec is None:
        return DEFAULTS.audio_codec
    if codec not in AUDIO_CODECS:
        raise _bad(f"Invalid audio_codec (expected {_one_of(AUDIO_CODECS)})")
    if codec == "copy":
        return codec
    allowed = AUDIO_CODECS_BY_FORMAT[fmt]
    if codec not in allowed:
        raise _bad(
            f"Invalid audio_codec: {fmt} cannot hold {codec} (use {_one_of(('copy', *allowed))})"
        )
    return codec


def _check_audio_bitrate(value: str | None) -> str:
    bitrate = DEFAULTS.audio_bitrate if value is None else value
    if bitrate not in AUDIO_BITRATES:
        raise _bad(f"Invalid audio_bitrate (expected {_one_of(AUDIO_BITRATES)})")
    return bitrate


def _check_video_quality(value: int | None) -> int:
    low, high = CRF_RANGE
    quality = DEFAULTS.video_quality if value is None else value
    # msgspec never decodes `true` as an int, but a Python caller could pass one.
    if isinstance(quality, bool) or not low <= quality <= high:
        raise _bad(f"Invalid video_quality (expected a CRF from {low} to {high})")
    return quality


def _check_max_resolution(value: str | int | None) -> str:
    if value is None:
        return DEFAULTS.max_resolution
    # The reference's values are text ("720"); clients also send the number. bool is an int
    # subclass, and `true` is not a resolution.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or text not in MAX_RESOLUTIONS:
        raise _bad(f"Invalid max_resolution (expected {_one_of(MAX_RESOLUTIONS)})")
    return text


def _check_verify(value: str | None) -> str:
    mode = DEFAULTS.verify if value is None else value
    if mode not in VERIFY_MODES:
        raise _bad(f"Invalid verify (expected {_one_of(VERIFY_MODES)})")
    return mode


def _check_clip(
    start: str | int | float | None, end: str | int | float | None
) -> tuple[str | None, str | None]:
    """Both clip bounds in their stored form; the end must come after the start."""
    clip_start = clip_end = None
    if start is not None:
        try:
            clip_start = normalize_timecode(start)
        except ValueError as exc:
            raise _bad(f"Invalid clip_start: {exc}") from None
    if end is not None:
        try:
            clip_end = normalize_timecode(end)
        except ValueError as exc:
            raise _bad(f"Invalid clip_end: {exc}") from None
        # Compare the stored (millisecond) values, so that what is stored is always ordered.
        begin = 0.0 if clip_start is None else parse_timecode(clip_start)
        if parse_timecode(clip_end) <= begin:
            raise _bad(
                "clip_end must be after clip_start"
                if clip_start is not None
                else "clip_end must be greater than 0"
            )
    return clip_start, clip_end


def _check_loudness(
    asked: AskedOptions, fmt: str, audio_only: bool, audio_codec: str
) -> tuple[float | None, str]:
    """The loudness target (None: not normalising) and the audio codec to encode in.

    Normalising re-encodes the audio, so it is refused with `audio_codec: copy`; without a codec
    asked, the format's first (`aac` for mp4) is stored, so the job says what it will write.
    """
    target = asked.loudness_target
    if not asked.normalize_audio:
        if target is not None:
            raise _bad("loudness_target requires normalize_audio")
        return None, audio_codec
    if asked.audio_codec == "copy":
        raise _bad(
            "normalize_audio re-encodes the audio, so audio_codec cannot be copy "
            "(leave it out or name a codec)"
        )
    if target is None:
        target = loudness.default_target(audio_only)
    low, high = loudness.TARGET_RANGE
    if isinstance(target, bool) or not low <= target <= high:
        raise _bad(f"Invalid loudness_target (expected LUFS from {low:g} to {high:g})")
    codec = AUDIO_CODECS_BY_FORMAT[fmt][0] if audio_codec == "copy" else audio_codec
    return float(target), codec


def _check_storyboard(asked: AskedOptions, audio_only: bool) -> float | None:
    """Seconds between a storyboard's tiles; None: no storyboard."""
    interval = asked.storyboard_interval
    if not asked.storyboard:
        if interval is not None:
            raise _bad("storyboard_interval requires storyboard")
        return None
    if audio_only:
        raise _bad("storyboard needs video, but the job is audio only")
    if interval is None:
        return previews.INTERVAL
    low, high = previews.INTERVAL_RANGE
    if isinstance(interval, bool) or not low <= interval <= high:
        raise _bad(f"Invalid storyboard_interval (expected seconds from {low:g} to {high:g})")
    return float(interval)


def _check_preview_clip(
    asked: bool | AskedPreviewClip | None, audio_only: bool
) -> PreviewClip | None:
    """The preview clip to make, if any (a `PreviewClip` too: the options a job was created
    with, given again, as a subscription's change does)."""
    if asked is None or asked is False:
        return None
    if audio_only:
        raise _bad("preview_clip needs video, but the job is audio only")
    if isinstance(asked, bool):
        return PreviewClip()
    start = None
    if asked.start is not None:
        try:
            start = normalize_timecode(asked.start)
        except ValueError as exc:
            raise _bad(f"Invalid preview_clip.start: {exc}") from None
    length = previews.PREVIEW_SECONDS if asked.duration is None else asked.duration
    if isinstance(length, bool) or not 0 < length <= previews.MAX_PREVIEW_SECONDS:
        raise _bad(
            "Invalid preview_clip.duration "
            f"(expected seconds above 0, at most {previews.MAX_PREVIEW_SECONDS:g})"
        )
    fmt = asked.format or "mp4"
    if fmt not in previews.PREVIEW_FORMATS:
        raise _bad(f"Invalid preview_clip.format (expected {_one_of(previews.PREVIEW_FORMATS)})")
    return PreviewClip(start=start, duration=float(length), format=fmt)


def _check_hls(asked: AskedHls | None, audio_only: bool, max_resolution: str) -> Hls | None:
    """The HLS package to make, if any: 1 to `hls.MAX_RENDITIONS` renditions of distinct
    heights, none above `max_resolution` (a `Hls` too: the options a job was created with)."""
    if asked is None:
        return None
    if audio_only:
        raise _bad("hls needs video, but the job is audio only")
    if not 1 <= len(asked.renditions) <= hls.MAX_RENDITIONS:
        raise _bad(f"Invalid hls.renditions (expected 1 to {hls.MAX_RENDITIONS} renditions)")
    heights = _one_of(tuple(str(h) for h in hls.HEIGHTS))
    made: list[HlsRendition] = []
    for asked_one in asked.renditions:
        height = asked_one.height
        if isinstance(height, str) and height.isdigit():
            height = int(height)
        if isinstance(height, bool) or height not in hls.HEIGHTS:
            raise _bad(f"Invalid hls rendition height (expected {heights})")
        assert isinstance(height, int)
        if max_resolution != "best" and height > int(max_resolution):
            raise _bad(f"Invalid hls rendition height: {height} is above max_resolution")
        if any(r.height == height for r in made):
            raise _bad(f"Invalid hls.renditions: {height} is asked twice")
        video = asked_one.video_bitrate or hls.VIDEO_BITRATES[height]
        low, high = hls.VIDEO_BITRATE_RANGE
        rate = hls.kbits(video)
        if rate is None or not low <= rate <= high:
            raise _bad(
                f"Invalid hls rendition video_bitrate (expected kbit/s as {low}k to {high}k)"
            )
        audio = asked_one.audio_bitrate or hls.AUDIO_BITRATE
        if audio not in AUDIO_BITRATES:
            raise _bad(f"Invalid hls rendition audio_bitrate (expected {_one_of(AUDIO_BITRATES)})")
        made.append(HlsRendition(height=height, video_bitrate=video, audio_bitrate=audio))
    return Hls(renditions=tuple(sorted(made, key=lambda r: -r.height)))


def refuse_contradictions(asked: AskedOptions) -> None:
    """Refuse, plainly, what the pipeline cannot honour, and contradictory live options.

    Accepting them and doing nothing would hand the caller a job that is not what they asked
    for. These come before any other option's problem (`resolve` checks them first).
    """
    if asked.max_duration is not None and asked.max_duration <= 0:
        raise _bad("max_duration must be a positive number of seconds")
    if asked.live_from_start and not asked.live_recording:
        raise _bad("live_from_start requires live_recording")


def resolve(asked: AskedOptions) -> JobOptions:
    """Check asked options against the job API reference and resolve them into a job's.

    Options are checked in a fixed order and the first problem is reported. Defaults are
    stored resolved (`format` becomes `mp4`, or `m4a` for audio), so a job's events say exactly
    what was decided even if a default changes later. An audio `format` without `audio_only`
    is taken as `audio_only: true`: those containers cannot hold video. A video `format`
    together with `audio_only: true` is refused, since the two contradict each other. Options
    without a rule are kept as given.

    Raises:
        InvalidOption: the first problem, in the job API's words.
    """
    refuse_contradictions(asked)
    fmt, audio_only = _resolve_format(asked.format, asked.audio_only)
    video_codec = _check_video_codec(asked.video_codec, fmt, audio_only)
    audio_codec = _check_audio_codec(asked.audio_codec, fmt)
    audio_bitrate = _check_audio_bitrate(asked.audio_bitrate)
    video_quality = _check_video_quality(asked.video_quality)
    if asked.quality_preset is not None and asked.quality_preset not in QUALITY_PRESETS:
        raise _bad(f"Invalid quality_preset (expected {_one_of(tuple(QUALITY_PRESETS))})")
    max_resolution = _check_max_resolution(asked.max_resolution)
    clip_start, clip_end = _check_clip(asked.clip_start, asked.clip_end)
    verify = _check_verify(asked.verify)
    filename = None if asked.filename is None else check_filename(asked.filename)
    folder = None if asked.folder is None else check_folder(asked.folder)
    webhook_url = None if asked.webhook_url is None else _check_webhook_url(asked.webhook_url)
    if asked.enable_progress_webhook and webhook_url is None:
        raise _bad("enable_progress_webhook requires webhook_url")
    try:
        priority = None if asked.priority is None else parse_priority(asked.priority)
    except InvalidPriority as exc:
        raise _bad(str(exc)) from None
    loudness_target, audio_codec = _check_loudness(asked, fmt, audio_only, audio_codec)
    storyboard_interval = _check_storyboard(asked, audio_only)
    preview_clip = _check_preview_clip(asked.preview_clip, audio_only)
    hls_package = _check_hls(asked.hls, audio_only, max_resolution)

    decided: dict[str, Any] = {
        "format": fmt,
        "audio_only": audio_only,
        "video_codec": video_codec,
        "audio_codec": audio_codec,
        "audio_bitrate": audio_bitrate,
        "video_quality": video_quality,
        "max_resolution": max_resolution,
        "clip_start": clip_start,
        "clip_end": clip_end,
        "filename": filename,
        "folder": folder,
        "webhook_url": webhook_url,
        "priority": priority,
        "verify": verify,
        "loudness_target": loudness_target,
        "storyboard_interval": storyboard_interval,
        "preview_clip": preview_clip,
        "hls": hls_package,
    }
    given = {name: getattr(asked, name) for name in AskedOptions.__struct_fields__}
    # convert, not the constructor: it checks each value against JobOptions' narrower types,
    # so an option whose rule forgot to resolve it fails here, not in a worker.
    return msgspec.convert(given | decided, JobOptions)
