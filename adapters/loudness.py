"""Loudness normalisation's FFmpeg passes (the plan and the parsing: domain/loudness.py).

`first_pass` measures the audio the mux will take (the same input, over the job's clip) and
gives the filter that the mux (adapters/muxer.py, `audio_filter`) applies as the second pass;
`measured_after` measures the file written. Each runs through `muxer.run_ffmpeg`, so the stage's
cancel stops it and its progress keeps the stage's stall watchdog fed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec

from spool.adapters import muxer
from spool.adapters.ffmpeg import file_url
from spool.domain import loudness
from spool.domain.job_options import JobOptions

Report = Callable[[float], None]


async def mux(
    inputs: list[Path],
    output: Path,
    options: JobOptions,
    on_progress: Report,
    cancel: asyncio.Event,
) -> tuple[muxer.MuxResult, loudness.Loudness | None]:
    """`muxer.mux` for a job's options, and, when they normalise its audio, between a first pass
    that measures the audio and a measure of the file written (the loudness the job records).

    Raises:
        muxer.MuxCancelled, muxer.MuxFailed: as `muxer.mux`.
    """
    if not options.normalize_audio:
        muxed = await muxer.mux(
            inputs, output, **muxer.mux_options(options), on_progress=on_progress, cancel=cancel
        )
        return muxed, None
    normalizing = await first_pass(inputs, options, muxer.share(on_progress, 0, 10), cancel)
    muxed = await muxer.mux(
        inputs,
        output,
        **muxer.mux_options(options),
        audio_filter=normalizing.audio_filter,
        on_progress=muxer.share(on_progress, 10, 95),
        cancel=cancel,
    )
    after = muxer.share(on_progress, 95, 100)
    measured = await measured_after(normalizing, Path(muxed.path), muxed.duration, after, cancel)
    return muxed, measured


class Normalizing(msgspec.Struct, frozen=True, kw_only=True):
    """What the first pass found: the target, the measurement (None: no audio, or silence) and
    the mux's audio filter (None: nothing to normalise)."""

    target: float
    before: loudness.Measurement | None
    audio_filter: str | None


async def first_pass(
    inputs: list[Path], options: JobOptions, on_progress: Report, cancel: asyncio.Event
) -> Normalizing:
    """Measure the audio `mux` would write from `inputs` under `options`.

    Raises:
        muxer.MuxCancelled, muxer.MuxFailed: as `muxer.run_ffmpeg`.
    """
    assert options.loudness_target is not None, "only a job that normalises is measured"
    target = options.loudness_target
    infos = list(await asyncio.gather(*(asyncio.to_thread(muxer.probe, p) for p in inputs)))
    at = muxer.audio_source(infos)
    if at is None:
        on_progress(100.0)
        return Normalizing(target=target, before=None, audio_filter=None)
    asked = muxer.mux_options(options)
    start, end = asked["clip_start"], asked["clip_end"]
    window: list[str] = ["-ss", f"{start:.3f}"] if start else []
    window += ["-i", file_url(inputs[at])]
    if end is not None:
        window += ["-t", f"{end - (start or 0.0):.3f}"]
    known = infos[at].duration
    stop = known if end is None else end if known is None else min(known, end)
    expected = None if stop is None else stop - (start or 0.0)
    measured = await _measure(window, target, expected, inputs, on_progress, cancel)
    second = None if measured is None else loudness.second_pass(target, measured)
    return Normalizing(target=target, before=measured, audio_filter=second)


async def measured_after(
    normalizing: Normalizing,
    written: Path,
    duration: float | None,
    on_progress: Report,
    cancel: asyncio.Event,
) -> loudness.Loudness:
    """The job's record of its loudness: the first pass's figure and the written file's."""
    after = None
    if normalizing.before is not None:
        window = ["-i", file_url(written)]
        found = await _measure(window, normalizing.target, duration, [written], on_progress, cancel)
        after = None if found is None else found.integrated
    else:
        on_progress(100.0)
    before = None if normalizing.before is None else normalizing.before.integrated
    return loudness.Loudness(target=normalizing.target, before=before, after=after)


async def _measure(
    window: list[str],
    target: float,
    expected: float | None,
    paths: list[Path],
    on_progress: Report,
    cancel: asyncio.Event,
) -> loudness.Measurement | None:
    """One measuring pass over the first audio stream of the input `window` opens."""
    args = [
        # loudnorm prints its report at the info level.
        "-loglevel",
        "info",
        *window,
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-af",
        loudness.measuring_filter(target),
        "-f",
        "null",
        "-",
    ]
    lines = await muxer.run_ffmpeg(
        args,
        expected=expected,
        on_progress=on_progress,
        cancel=cancel,
        paths=paths,
        what="Measuring the loudness",
    )
    return loudness.report(lines)
