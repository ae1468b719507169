"""Whether a muxed file is what the job asked for: the pure comparison behind `verify`.

The mux stage probes the file it wrote (and, with `verify: "full"`, decodes it end to end:
adapters/media_verify.py) and hands the facts here. `judge` holds them to the request: the
length of the source (or of the clip asked for), the container and codecs asked for, the streams
the source had, and the resolution asked for where the source offered it. A mismatch raises
`VerificationFailed`, whose message is the one the job shows; a lower resolution than asked
because the source offered no more is not a mismatch, and comes back as a warning the completed
job carries (`error_type: "warning"`).

Codecs are FFmpeg's names here (`hevc`, not the job API's `h265`), as the probe reads them.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from spool.domain.errors import DomainError
from spool.domain.job_options import (
    DEFAULT_AUDIO_CODECS,
    DEFAULT_VIDEO_CODECS,
    JobOptions,
    is_audio_only,
    output_ext,
)
from spool.domain.node_health import Blame
from spool.domain.timecode import parse_timecode

DURATION_TOLERANCE_SECONDS: Final = 1.0
DURATION_TOLERANCE_FRACTION: Final = 0.01
"""The output may differ from the length expected by the larger of these: containers round
durations to their own time base, and audio priming adds a few milliseconds."""

PREFIX: Final = "Verification failed"
"""How every verification failure's reason begins (a job's `error`)."""

_ASKED_CODECS: Final[dict[str, str]] = {"h264": "h264", "h265": "hevc", "vp9": "vp9"}
"""The job API's video codec words, as FFmpeg names what they ask for (audio words are FFmpeg's
own: aac, opus, mp3)."""


class VerificationFailed(DomainError):
    """The output is not what was asked for; the message is the job's `error`.

    `blame` (domain/node_health.py): the source's when the media it sent falls short (cut short,
    lower resolution than it claimed, undecodable), the node's when its FFmpeg wrote another
    container, codec or stream set than the mux planned.
    """

    def __init__(self, detail: str, *, blame: Blame) -> None:
        super().__init__(f"{PREFIX}: {detail}")
        self.detail = detail
        self.blame: Blame = blame


class SourceFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the mux read of the downloaded files, and what the source said of its format."""

    duration: float | None
    """The longest input's length as its own container declares it; None: none declares one."""
    has_video: bool
    has_audio: bool
    video_codecs: frozenset[str] = frozenset()
    audio_codecs: frozenset[str] = frozenset()
    short_side: int | None = None
    """The downloaded video's shorter side, as FFmpeg read it."""
    offered_short_side: int | None = None
    """The shorter side of the format chosen, as the source described it (yt-dlp's formats)."""


class OutputFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the probe read of the file the mux wrote."""

    duration: float | None
    container: str | None
    video_codec: str | None
    audio_codec: str | None
    width: int | None = None
    height: int | None = None
    video_streams: int = 0
    audio_streams: int = 0


class Verification(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A passed verification, as `MuxCompleted.verification` records it."""

    mode: Literal["fast", "full"]
    expected_duration: float | None = None
    """The length the output was held to (the source's, or the clip's), in seconds."""
    expected_quality: int | None = None
    """The shorter side the output was held to at least; None for audio."""
    warning: str | None = None
    """Said on the completed job: what was delivered below what was asked, and why."""


def expected_duration(options: JobOptions, source: SourceFacts) -> float | None:
    """The length the output should have: the source's, or the part of it the clip asks for."""
    if source.duration is None:
        return None
    start = parse_timecode(options.clip_start) if options.clip_start else 0.0
    end = parse_timecode(options.clip_end) if options.clip_end else source.duration
    return max(0.0, min(end, source.duration) - start)


def duration_tolerance(expected: float) -> float:
    """How far the output's length may stray from `expected` seconds."""
    return max(DURATION_TOLERANCE_SECONDS, DURATION_TOLERANCE_FRACTION * expected)


def cap_of(options: JobOptions) -> int | None:
    """The shorter side `max_resolution` asks for at most; None for `best`."""
    return None if options.max_resolution == "best" else int(options.max_resolution)


def expected_quality(options: JobOptions, source: SourceFacts) -> int | None:
    """The shorter side the output should have at least: what the source offered (the larger of
    what it claimed and what it sent), within `max_resolution`; None when unknown."""
    offered = max(source.short_side or 0, source.offered_short_side or 0)
    if not offered:
        return None
    cap = cap_of(options)
    return offered if cap is None else min(cap, offered)


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _check_duration(options: JobOptions, source: SourceFacts, output: OutputFacts) -> float | None:
    expected = expected_duration(options, source)
    if expected is None:
        return None  # nothing declares the source's length: nothing to hold the output to
    if output.duration is None:
        raise VerificationFailed("FFmpeg reads no duration in the output", blame="node")
    if abs(output.duration - expected) <= duration_tolerance(expected):
        return expected
    what = "the clip asked for" if options.clip_start or options.clip_end else "the source"
    raise VerificationFailed(
        f"the output lasts {_seconds(output.duration)}, {what} {_seconds(expected)}",
        blame="source",
    )


def _check_streams(options: JobOptions, source: SourceFacts, output: OutputFacts) -> None:
    want_video = source.has_video and not is_audio_only(options)
    if want_video and output.video_streams == 0:
        raise VerificationFailed("the output has no video stream", blame="node")
    if not want_video and output.video_streams:
        raise VerificationFailed(
            "the output has a video stream, but audio only was asked", blame="node"
        )
    if source.has_audio and output.audio_streams == 0:
        raise VerificationFailed("the output has no audio stream", blame="node")


def _check_container(options: JobOptions, output: OutputFacts) -> None:
    asked = output_ext(options)
    if output.container != asked:
        raise VerificationFailed(
            f"the output is {output.container or 'an unknown container'}, not {asked}",
            blame="node",
        )


def _check_codec(
    kind: str, asked: str, got: str | None, source: frozenset[str], default: str | None
) -> None:
    if got is None:
        return  # no such stream: `_check_streams` judged whether there should be one
    if asked != "copy":
        wanted = _ASKED_CODECS.get(asked, asked)
        if got != wanted:
            raise VerificationFailed(f"the {kind} is {got}, not {asked}", blame="node")
        return
    # `copy` keeps the source's codec, or encodes to the container's default when the
    # container cannot hold it (adapters/muxer.py `plan`).
    kept = source | ({default} if default else set())
    if got not in kept:
        raise VerificationFailed(
            f"the {kind} is {got}, not {' or '.join(sorted(kept))} (copy)", blame="node"
        )


def _quality(short_side: int) -> str:
    return f"{short_side}p"


def _check_resolution(
    options: JobOptions, source: SourceFacts, output: OutputFacts
) -> tuple[int | None, str | None]:
    """The shorter side held to, and a warning when it is below what was asked."""
    if is_audio_only(options) or not output.width or not output.height:
        return None, None
    expected = expected_quality(options, source)
    if expected is None:
        return None, None
    delivered = min(output.width, output.height)
    if delivered < expected:
        if source.short_side is not None and source.short_side < expected:
            raise VerificationFailed(
                f"the source offered {_quality(expected)} but sent {_quality(source.short_side)}",
                blame="source",
            )
        raise VerificationFailed(
            f"the output is {_quality(delivered)}, the source {_quality(expected)}", blame="node"
        )
    cap = cap_of(options)
    if cap is not None and delivered < cap:
        return expected, (
            f"{_quality(delivered)} delivered, below the {_quality(cap)} asked for: the source "
            f"offers no more than {_quality(expected)}"
        )
    return expected, None


def judge(
    options: JobOptions,
    source: SourceFacts,
    output: OutputFacts,
    mode: Literal["fast", "full"],
) -> Verification:
    """Hold the output to the request; raise `VerificationFailed` on the first mismatch.

    Checked in this order: the streams, the container, the codecs, the length, the resolution.
    """
    _check_streams(options, source, output)
    _check_container(options, output)
    fmt = output_ext(options)
    if not is_audio_only(options):
        _check_codec(
            "video",
            options.video_codec,
            output.video_codec,
            source.video_codecs,
            DEFAULT_VIDEO_CODECS.get(fmt),
        )
    _check_codec(
        "audio",
        options.audio_codec,
        output.audio_codec,
        source.audio_codecs,
        DEFAULT_AUDIO_CODECS.get(fmt),
    )
    duration = _check_duration(options, source, output)
    quality, warning = _check_resolution(options, source, output)
    return Verification(
        mode=mode, expected_duration=duration, expected_quality=quality, warning=warning
    )
