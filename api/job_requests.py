"""The body of `POST /jobs` and its validation into the options a job is created with.

`CreateJobBody` carries every field the job API reference documents. Its types are only as
strict as JSON itself: a wrong JSON type (`"video_quality": "23"`) is msgspec's to refuse, while
a wrong value of the right type (`"format": "avi"`) reaches `validate_create_job`, which answers
with our own documented message. Every refusal is a `JobApiError` with status 400, which the job
API renders as `{"error": "..."}`.

Storage safety (DESIGN, "Security defaults"): `filename` and `folder` are checked by
domain/file_names.py, so that no stored path can leave the caller's prefix and every name is one
that Windows, macOS and Linux file systems accept as it is.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import msgspec

from spool.api.errors import JobApiError
from spool.domain import file_names
from spool.domain.job import JobOptions
from spool.domain.timecode import normalize_timecode, parse_timecode

__all__ = [
    "CreateJobBody",
    "ValidJob",
    "decode_create_job_body",
    "parse_timecode",
    "validate_create_job",
    "validate_filename",
    "validate_folder",
]

MAX_URL_LENGTH: Final = 8192
MAX_WEBHOOK_URL_LENGTH: Final = 2048

VIDEO_FORMATS: Final = ("mp4", "mkv", "webm", "mov")
AUDIO_FORMATS: Final = ("m4a", "mp3", "ogg", "opus")
VIDEO_CODECS: Final = ("copy", "h264", "h265", "vp9")
AUDIO_CODECS: Final = ("copy", "aac", "opus", "mp3")
AUDIO_BITRATES: Final = ("64k", "96k", "128k", "160k", "192k", "256k", "320k")
QUALITY_PRESETS: Final = ("highest", "high", "medium", "low", "lowest")
MAX_RESOLUTIONS: Final = ("best", "2160", "1440", "1080", "720", "480", "360")
CRF_RANGE: Final = (0, 51)

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


class CreateJobBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /jobs`: every documented field; only `url` is required.

    Types are deliberately loose (`format: str`, not a `Literal`) so that a wrong value gets our
    documented message from `validate_create_job` rather than a generic schema error. Wrong JSON
    types are still refused by msgspec, and so are unknown fields: `"fromat": "mkv"` ignored
    would quietly deliver an mp4.
    """

    url: str
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
    paused: bool = False
    storage: dict[str, Any] | None = None


class ValidJob(msgspec.Struct, frozen=True):
    """A create request that passed validation: the URL to fetch and the options to store."""

    url: str
    options: JobOptions


def _bad(detail: str) -> JobApiError:
    return JobApiError(status_code=400, detail=detail)


def _one_of(values: tuple[str, ...]) -> str:
    """`a, b or c`: the allowed values, in the reference's order, for a message."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


_decoder = msgspec.json.Decoder(CreateJobBody)


def decode_create_job_body(raw: bytes) -> CreateJobBody:
    """Decode a raw `POST /jobs` body strictly, refusing wrong JSON types with a 400.

    Why this exists: a Litestar `data: CreateJobBody` parameter converts in msgspec's lax mode,
    which turns `"23"` into 23 and `"true"` or `1` into `True`. Decoding the raw body here keeps
    the documented types exact.

    Raises:
        JobApiError: 400, e.g. `Expected `int | null`, got `str` (field: video_quality)`, in
            the same `message (field: key)` form the job API uses for other validation errors.
    """
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        field = path.rstrip("`")
        raise _bad(f"{message} (field: {field})" if field else message) from None
    except msgspec.DecodeError as exc:
        raise _bad(f"Invalid JSON body: {exc}") from None


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


def _check_url(raw: str) -> str:
    url = raw.strip()
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"Invalid URL: too long (max {MAX_URL_LENGTH} characters)")
    # A URL has no whitespace or control characters (RFC 3986); a raw CR/LF is also how a
    # header gets injected into the downloader's request.
    if _has_control(url) or any(c.isspace() for c in url):
        raise _bad("Invalid URL: must not contain spaces or control characters")
    parts = _split_http_url(url)
    if parts is None:
        raise _bad("Invalid URL: expected an http(s) URL")
    if _has_credentials(parts):
        # The URL is stored in the job's events, which are never rewritten or deleted.
        raise _bad("Invalid URL: must not contain credentials (user:password@)")
    return url


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
    parts = _split_http_url(url)
    if parts is None:
        raise _bad("Invalid webhook_url: expected an http(s) URL with a host")
    if _has_credentials(parts):
        raise _bad("Invalid webhook_url: must not contain credentials (user:password@)")
    return url


def validate_filename(filename: str) -> str:
    """A user's `filename` (no extension), checked by `domain.file_names.check_filename`.

    Raises:
        JobApiError: 400 naming the field and the character or name that is not allowed.
    """
    try:
        return file_names.check_filename(filename)
    except file_names.UnsafeName as exc:
        raise _bad(str(exc)) from None


def validate_folder(folder: str) -> str:
    """A user's `folder` (a storage prefix), checked by `domain.file_names.check_folder`.

    Raises:
        JobApiError: 400 naming the field and the character or name that is not allowed.
    """
    try:
        return file_names.check_folder(folder)
    except file_names.UnsafeName as exc:
        raise _bad(str(exc)) from None


def _resolve_format(fmt: str | None, audio_only: bool) -> tuple[str, bool]:
    """The output format and whether the job is audio-only."""
    if fmt is None:
        return ("m4a" if audio_only else "mp4"), audio_only
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
        return "copy"
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
        return "copy"
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


def _check_max_resolution(value: str | int | None) -> str:
    if value is None:
        return "best"
    # The reference's values are text ("720"); clients also send the number. bool is an int
    # subclass, and `true` is not a resolution.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or text not in MAX_RESOLUTIONS:
        raise _bad(f"Invalid max_resolution (expected {_one_of(MAX_RESOLUTIONS)})")
    return text


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


def _refuse_unsupported(body: CreateJobBody) -> None:
    """Refuse, plainly, what the pipeline cannot honour (yet), and contradictory live options.

    Accepting them and doing nothing would hand the caller a job that is not what they asked
    for. False / null (the defaults) are always fine, so clients that send every field work.
    """
    if body.max_duration is not None and body.max_duration <= 0:
        raise _bad("max_duration must be a positive number of seconds")
    if body.live_from_start and not body.live_recording:
        raise _bad("live_from_start requires live_recording")
    # The storage object's contents are checked (and probed) by the job API itself.
    if body.storage is not None and not body.storage:
        raise _bad("storage must name a provider and its settings")


def validate_create_job(body: CreateJobBody) -> ValidJob:
    """Check a `POST /jobs` body against the reference and build the options to store.

    Fields are checked in a fixed order and the first problem is reported. Defaults are stored
    resolved (`format` becomes `mp4`, or `m4a` for audio), so a job's events say exactly what
    was decided even if a default changes later.

    An audio `format` (`m4a`, `mp3`, `ogg`, `opus`) without `audio_only` is taken as
    `audio_only: true`: those containers cannot hold video. A video `format` together with
    `audio_only: true` is refused, since the two contradict each other.

    Raises:
        JobApiError: 400 with the reason.
    """
    url = _check_url(body.url)
    _refuse_unsupported(body)

    fmt, audio_only = _resolve_format(body.format, body.audio_only)
    video_codec = _check_video_codec(body.video_codec, fmt, audio_only)
    audio_codec = _check_audio_codec(body.audio_codec, fmt)

    audio_bitrate = "192k" if body.audio_bitrate is None else body.audio_bitrate
    if audio_bitrate not in AUDIO_BITRATES:
        raise _bad(f"Invalid audio_bitrate (expected {_one_of(AUDIO_BITRATES)})")

    low, high = CRF_RANGE
    video_quality = 23 if body.video_quality is None else body.video_quality
    # msgspec never decodes `true` as an int, but a Python caller could pass one.
    if isinstance(video_quality, bool) or not low <= video_quality <= high:
        raise _bad(f"Invalid video_quality (expected a CRF from {low} to {high})")

    if body.quality_preset is not None and body.quality_preset not in QUALITY_PRESETS:
        raise _bad(f"Invalid quality_preset (expected {_one_of(QUALITY_PRESETS)})")

    max_resolution = _check_max_resolution(body.max_resolution)
    clip_start, clip_end = _check_clip(body.clip_start, body.clip_end)
    filename = None if body.filename is None else validate_filename(body.filename)
    folder = None if body.folder is None else validate_folder(body.folder)

    webhook_url = None if body.webhook_url is None else _check_webhook_url(body.webhook_url)
    if body.enable_progress_webhook and webhook_url is None:
        raise _bad("enable_progress_webhook requires webhook_url")

    return ValidJob(
        url=url,
        options=JobOptions(
            format=fmt,
            video_codec=video_codec,
            audio_codec=audio_codec,
            audio_bitrate=audio_bitrate,
            video_quality=video_quality,
            quality_preset=body.quality_preset,
            max_resolution=max_resolution,
            audio_only=audio_only,
            download_subtitles=body.download_subtitles,
            download_thumbnail=body.download_thumbnail,
            clip_start=clip_start,
            clip_end=clip_end,
            filename=filename,
            folder=folder,
            webhook_url=webhook_url,
            enable_progress_webhook=body.enable_progress_webhook,
            live_recording=body.live_recording,
            live_from_start=body.live_from_start,
            max_duration=body.max_duration,
            wait_for_video=body.wait_for_video,
        ),
    )
