"""FFmpeg's side of verifying a muxed file: the facts `domain.verification.judge` compares.

`fast` costs nothing new: the mux already read its inputs and the file it wrote (`ffmpeg -i`,
adapters/muxer.py `probe`; there is no ffprobe in imageio-ffmpeg), and `facts` turns those reads
into the domain's terms. `full` also decodes the whole file (`ffmpeg -v error -i out -f null -`):
any line FFmpeg prints at error level fails it, since FFmpeg finishes such a decode with status 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from spool.adapters.muxer import MuxFailed, MuxResult, ProbeInfo, last_error, run_ffmpeg
from spool.domain.job_options import JobOptions
from spool.domain.verification import (
    OutputFacts,
    SourceFacts,
    Verification,
    VerificationFailed,
    judge,
)


def _short_side(info: ProbeInfo) -> int | None:
    video = next((s for s in info.streams if s.kind == "video" and s.width and s.height), None)
    if video is None or video.width is None or video.height is None:
        return None
    return min(video.width, video.height)


def source_facts(inputs: list[ProbeInfo], offered_short_side: int | None) -> SourceFacts:
    """The downloaded files as the mux read them, and the shorter side the source claimed."""
    durations = [i.duration for i in inputs if i.duration is not None]
    sides = [side for i in inputs if (side := _short_side(i)) is not None]
    streams = [s for i in inputs for s in i.streams]
    return SourceFacts(
        duration=max(durations) if durations else None,
        has_video=any(s.kind == "video" for s in streams),
        has_audio=any(s.kind == "audio" for s in streams),
        video_codecs=frozenset(s.codec for s in streams if s.kind == "video"),
        audio_codecs=frozenset(s.codec for s in streams if s.kind == "audio"),
        short_side=max(sides) if sides else None,
        offered_short_side=offered_short_side,
    )


def output_facts(written: ProbeInfo) -> OutputFacts:
    """The file the mux wrote, as FFmpeg read it back."""
    video = [s for s in written.streams if s.kind == "video"]
    audio = [s for s in written.streams if s.kind == "audio"]
    return OutputFacts(
        duration=written.duration,
        container=written.container,
        video_codec=video[0].codec if video else None,
        audio_codec=audio[0].codec if audio else None,
        width=video[0].width if video else None,
        height=video[0].height if video else None,
        video_streams=len(video),
        audio_streams=len(audio),
    )


async def verify(
    options: JobOptions,
    result: MuxResult,
    offered_short_side: int | None,
    *,
    cancel: asyncio.Event | None = None,
    on_decoding: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> Verification | None:
    """Hold a finished mux to the job's options, as its `verify` mode asks; None for `off`.

    Raises:
        VerificationFailed: the first mismatch, or (`full`) the first decode error.
        MuxCancelled: `cancel` was set during the decode.
    """
    mode = options.verify
    if mode not in ("fast", "full") or result.written is None:
        return None
    verdict = judge(
        options,
        source_facts(result.inputs, offered_short_side),
        output_facts(result.written),
        "full" if mode == "full" else "fast",
    )
    if mode == "full":
        error = await decode_error(
            Path(result.path),
            expected=result.duration,
            cancel=cancel,
            on_progress=on_decoding,
            timeout=timeout,
        )
        if error is not None:
            raise VerificationFailed(f"the output does not decode: {error}", blame="source")
    return verdict


async def decode_error(
    path: Path,
    *,
    expected: float | None = None,
    cancel: asyncio.Event | None = None,
    on_progress: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> str | None:
    """Decode every stream of `path` to nothing, through the mux's FFmpeg runner (cancel,
    timeout, its own process group); an error FFmpeg reported, else None.

    `on_progress` is called as the decode moves through `expected` seconds (FFmpeg's progress
    reports, at most every second or 5 %), so a caller watching for a stalled stage sees it move.
    """
    try:
        lines = await run_ffmpeg(
            ["-i", f"file:{path}", "-f", "null", "-"],
            expected=expected,
            on_progress=None if on_progress is None else lambda _percent: on_progress(),
            cancel=cancel,
            timeout=timeout,
            paths=[path],
            what="Decoding",
        )
    except MuxFailed as exc:  # FFmpeg gave up, or the timeout stopped it
        return str(exc)
    errors = [line for line in lines if line]
    # The first error is the cause; those after it are mostly its echoes.
    return last_error(errors[:1], [path]) or last_error(errors, [path]) if errors else None
